// MEAN for the Cortex-M7: the same results as mt::ref::mean_s8 (mean.h), bit for bit.
//
// Four channels per word: each reduced position adds its word of four int8 values into two
// words of int16 lane sums (SXTAB16: channels c, c + 2 and c + 1, c + 3), one load and two
// instructions for four values where the reference spends about ten a value. A lane holds at
// most kMeanLaneChunk values (|sum| <= 2^15), so longer reductions go in chunks whose sums
// are added in int32. The rescale is the reference's, once per output. No scratch.
#pragma once

#include <cstdint>

#include "kernels/mean.h"

namespace mt::m7 {

// Positions summed in int16 lanes before they are added in int32: 256 * -128 = -2^15.
constexpr int32_t kMeanLaneChunk = 256;

// As mt::ref::mean_s8; channels past the last group of four take the reference's loop.
void mean_s8(const MeanParams& p, const int8_t* in, int8_t* out);

}  // namespace mt::m7
