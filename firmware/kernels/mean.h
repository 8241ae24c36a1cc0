// MEAN, int8: the average over one contiguous block of axes, TFLite's quantized MEAN bit for bit.
//
// Every constant below is computed on the host by python/mcutrain/ops/mean.py (the compile-time
// "prepare"). The kernel runs TFLite's integer recipe (reference_ops::QuantizedMeanOrSum): sum the
// n reduced values, remove n * input_zero_point, and rescale once with a multiplier that already
// contains both input_scale / output_scale and 1/n. There is no division at run time.
#pragma once

#include <cstdint>

namespace mt {

// The input is viewed as [outer, reduce, inner] (C order) and the output as [outer, inner]:
// NHWC global average pooling is outer = N, reduce = H * W, inner = C; a [N, T, C] sequence
// averaged over T is outer = N, reduce = T, inner = C.
struct MeanParams {
  int32_t outer;              // >= 1
  int32_t reduce;             // n, the number of values averaged, 1 <= n < 2^23
  int32_t inner;              // >= 1
  int32_t input_zero_point;   // in [-128, 127]
  int32_t output_zero_point;  // in [-128, 127]
  int32_t multiplier;         // Q31 significand of input_scale / output_scale / n
  int32_t shift;              // its exponent (negative = right shift), >= -31
};

namespace ref {

/// Mean of int8 values over the middle axis of [outer, reduce, inner].
/// @param[in]  p    shape and requantization constants (see MeanParams)
/// @param[in]  in   int8, outer * reduce * inner values, C order
/// @param[out] out  int8, outer * inner values; must not overlap `in`
void mean_s8(const MeanParams& p, const int8_t* in, int8_t* out);


// ---- backward (docs/training.md, "MEAN") ----

/// Input gradient of MEAN: every reduced position receives its output's gradient unchanged
/// (the 1/n goes into the scale, dx.scale = dy.scale / n, set by the caller), so no rounding.
/// @param[in]  p   the forward params (only outer, reduce, inner are read)
/// @param[in]  dy  int16, outer * inner values
/// @param[out] dx  int16, outer * reduce * inner values; must not overlap `dy`
void mean_backward(const MeanParams& p, const int16_t* dy, int16_t* dx);

}  // namespace ref
}  // namespace mt
