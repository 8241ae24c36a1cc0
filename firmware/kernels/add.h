// ADD, int8: out = clamp(requant(a) + requant(b)), TFLite's quantized ADD bit for bit.
//
// Every constant below is computed on the host by python/mcutrain/ops/add.py (the compile-time
// "prepare"), so the kernel only runs the integer recipe of TFLite's reference ADD: both operands
// are shifted left by `left_shift` (20) to gain headroom, rescaled onto a common scale of twice the
// larger input scale, summed, then rescaled onto the output scale.
#pragma once

#include <cstdint>

namespace mt {

// Operands are viewed as 4-D NHWC (lower ranks are padded with leading 1s). Broadcasting is
// expressed through strides: a dimension an operand broadcasts along has stride 0.
struct AddParams {
  int32_t out_shape[4];  // output dims, outermost first; all >= 1
  int32_t a_strides[4];  // element strides of operand a per output dim (0 = broadcast)
  int32_t b_strides[4];  // element strides of operand b per output dim (0 = broadcast)
  int32_t a_offset;      // -zero_point of a, in [-127, 128]
  int32_t b_offset;      // -zero_point of b, in [-127, 128]
  int32_t out_offset;    // zero_point of the output, in [-128, 127]
  int32_t left_shift;    // 20 for int8
  int32_t a_multiplier;  // Q31 significand of scale_a / (2 * max(scale_a, scale_b))
  int32_t a_shift;       // its exponent, <= 0
  int32_t b_multiplier;  // Q31 significand of scale_b / (2 * max(scale_a, scale_b))
  int32_t b_shift;       // <= 0
  int32_t out_multiplier;  // Q31 significand of 2 * max(scale_a, scale_b) / (2^20 * scale_out)
  int32_t out_shift;       // <= 0
  int32_t act_min;  // fused activation clamp, int8 range, act_min <= act_max
  int32_t act_max;
};

namespace ref {

/// Element-wise int8 addition with broadcasting.
/// @param[in]  p    shapes, strides and requantization constants (see AddParams)
/// @param[in]  a    operand a, int8, addressed through p.a_strides
/// @param[in]  b    operand b, int8, addressed through p.b_strides
/// @param[out] out  int8, dense NHWC of p.out_shape; may alias a or b when that operand is not
///                  broadcast (each element is read before it is written)
void add_s8(const AddParams& p, const int8_t* a, const int8_t* b, int8_t* out);

}  // namespace ref
}  // namespace mt
