// SOFTMAX, int8 -> int8: TFLite's fixed-point reference softmax (reference_ops::Softmax) bit for
// bit, computed along the last axis.
//
// The constants are computed on the host by python/mcutrain/ops/softmax.py from beta and the input
// scale (TFLite's PreprocessSoftmaxScaling and CalculateInputRadius). The output is always
// quantized with scale 1/256 and zero point -128: TFLite requires it and the arithmetic assumes it.
// No float is used: exp() and the reciprocal of the sum are gemmlowp-style fixed-point
// approximations, which is exactly what makes the result reproducible on any core.
#pragma once

#include <cstdint>

namespace mt {

struct SoftmaxParams {
  int32_t rows;              // number of independent rows, >= 1
  int32_t depth;             // row length (last dimension), 1..511
  int32_t input_multiplier;  // Q31 significand of beta * input_scale * 2^26
  int32_t input_left_shift;  // its exponent, 0..30
  int32_t diff_min;          // x - max(row) below this gives exp() = 0; <= 0
};

namespace ref {

/// Softmax of every row of int8 logits.
/// @param[in]  p    shape and fixed-point constants (see SoftmaxParams)
/// @param[in]  in   int8 logits, rows * depth values, row-major, any scale/zero point
/// @param[out] out  int8 probabilities (real = (q + 128) / 256), rows * depth values; may be
///                  exactly `in` (in place: each value is read before it is overwritten), must not
///                  overlap it otherwise
void softmax_s8(const SoftmaxParams& p, const int8_t* in, int8_t* out);

}  // namespace ref
}  // namespace mt
