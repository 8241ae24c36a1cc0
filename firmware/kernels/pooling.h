// AVERAGE_POOL_2D and MAX_POOL_2D, int8 NHWC, TFLite's reference pooling bit for bit.
//
// The host (python/mcutrain/ops/pooling.py) resolves SAME/VALID padding into explicit top/left
// padding and output sizes, exactly as TFLite's ComputePaddingHeightWidth. Pooling never
// requantizes: TFLite requires the input and output quantization to be equal.
#pragma once

#include <cstdint>

namespace mt {

struct PoolParams {
  int32_t batches;
  int32_t in_h, in_w;
  int32_t channels;
  int32_t out_h, out_w;
  int32_t filter_h, filter_w;  // >= 1
  int32_t stride_h, stride_w;  // >= 1
  int32_t pad_h, pad_w;        // top and left padding; the window is clipped at every border
  int32_t act_min, act_max;    // fused activation clamp, int8 range
};

namespace ref {

/// Average over the part of each window that lies inside the input; the quotient is rounded half
/// away from zero. Padding contributes nothing and is not counted.
/// @param[in]  p    geometry and clamp (see PoolParams)
/// @param[in]  in   int8 NHWC [batches, in_h, in_w, channels]
/// @param[out] out  int8 NHWC [batches, out_h, out_w, channels]; must not alias `in`
void avg_pool_s8(const PoolParams& p, const int8_t* in, int8_t* out);

/// Maximum over the part of each window inside the input (-128 for an empty window), clamped.
/// Same layout and aliasing rules as avg_pool_s8.
void max_pool_s8(const PoolParams& p, const int8_t* in, int8_t* out);

}  // namespace ref
}  // namespace mt
