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

// The window of output (oy, ox) clipped to the input: rows [y0, y1), columns [x0, x1). Every
// pooling kernel, reference and optimized, walks these windows.
struct PoolWindow {
  int32_t y0, y1, x0, x1;
};

inline PoolWindow ClippedWindow(const PoolParams& p, int32_t oy, int32_t ox) {
  const int32_t iy = oy * p.stride_h - p.pad_h;
  const int32_t ix = ox * p.stride_w - p.pad_w;
  return {iy > 0 ? iy : 0, iy + p.filter_h < p.in_h ? iy + p.filter_h : p.in_h,
          ix > 0 ? ix : 0, ix + p.filter_w < p.in_w ? ix + p.filter_w : p.in_w};
}

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


// ---- backward (docs/training.md, "AVERAGE_POOL_2D", "MAX_POOL_2D") ----
// Both take the int16 output gradient and a buffer of 4 bytes per input element: it is used as
// int32 accumulators, then compacted in place by mt::GradRequantize, so on return it holds the
// input gradient as int16 (first 2 * n bytes). The return value is that gradient's scale.

/// acc[p] = sum over windows w holding p of dy[w] * round(4096 / count[w]) (count = valid
/// taps); the scale returned is GradRequantize's with acc_scale = dy_scale / 4096.
/// @param[in]  p         the forward geometry (act_min/act_max unused: the mask handles them)
/// @param[in]  dy        int16 NHWC [batches, out_h, out_w, channels]
/// @param[in]  dy_scale  scale of dy
/// @param[out] dx        4 * batches * in_h * in_w * channels bytes, 4-byte aligned; must not
///                       overlap `dy`
float avg_pool_backward(const PoolParams& p, const int16_t* dy, float dy_scale, void* dx);

/// Each dy[w] goes to the first maximal input of its window (scan order: rows, then columns)
/// found in the saved forward input `in`; scale = GradRequantize(acc, dy_scale).
/// Same buffers as avg_pool_backward, plus `in`: int8 NHWC, the forward input.
float max_pool_backward(const PoolParams& p, const int8_t* in, const int16_t* dy, float dy_scale,
                        void* dx);

}  // namespace ref
}  // namespace mt
