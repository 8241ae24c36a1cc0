// PAD and PADV2, int8: copy the input into the middle of a larger tensor filled with a constant.
//
// Bytes are copied unchanged (TFLite does not requantize in PAD); the fill value is the output
// zero point for PAD (a real 0.0) and the quantized constant operand for PADV2. The host
// (python/mcutrain/ops/pad.py) reads the constant paddings and views every rank as 4-D.
#pragma once

#include <cstdint>

namespace mt {

struct PadParams {
  int32_t in_shape[4];   // input dims, outermost first, leading 1s for lower ranks
  int32_t out_shape[4];  // out_shape[d] = before[d] + in_shape[d] + after[d]
  int32_t before[4];     // padding inserted before the input along each dim, >= 0
  int32_t pad_value;     // int8 fill value, in [-128, 127]
};

namespace ref {

/// @param[in]  p    shapes and fill value (see PadParams)
/// @param[in]  in   int8, dense, in_shape
/// @param[out] out  int8, dense, out_shape; must not alias `in`
void pad_s8(const PadParams& p, const int8_t* in, int8_t* out);


// ---- backward (docs/training.md, "PAD") ----

/// Input gradient of PAD/PADV2: the interior of dy (padding positions are dropped), copied
/// without rescaling; dx.scale = dy.scale (set by the caller).
/// @param[in]  p   the forward params (pad_value unused)
/// @param[in]  dy  int16, dense, out_shape
/// @param[out] dx  int16, dense, in_shape; must not overlap `dy`
void pad_backward(const PadParams& p, const int16_t* dy, int16_t* dx);

}  // namespace ref
}  // namespace mt
