// Requantization for the Cortex-M7 kernels: MultiplyByQuantizedMultiplier (fixed_point.h) in
// about a dozen instructions instead of ~25, with the same result, under two preconditions the
// host checks per layer (python/mcutrain/ops/m7.py, bounded_requant): the channel's shift is
// negative (a multiplier below 1, as in ordinary models), and |acc| < 2^29.
//
// Why it is exact then. With m the Q31 significand (0 <= m < 2^31) and e = -shift >= 1:
//  - SaturatingRoundingDoublingHighMul(acc, m) rounds acc*m/2^31 half away from zero,
//    truncating toward zero after the nudge; for either sign that is floor((acc*m + 2^30) /
//    2^31), which is what SMMULR computes for (2 acc) * m: floor((2 acc*m + 2^31) / 2^32).
//  - RoundingDivideByPOT(r, e) is floor((r + 2^(e-1) - [r < 0]) / 2^e); r >> 31 is -[r < 0].
//    With |r| <= 2^29 the adds stay inside int32.
// Channels or layers that miss a precondition use RequantizeChecked, the reference arithmetic.
#pragma once

#include <cstdint>

#include "kernels/dsp.h"
#include "kernels/fixed_point.h"

namespace mt::m7 {

inline int8_t RequantizeChecked(int32_t acc, int32_t multiplier, int32_t shift, int32_t offset,
                                int32_t lo, int32_t hi) {
  return static_cast<int8_t>(
      AddOffsetClamp(MultiplyByQuantizedMultiplier(acc, multiplier, shift), offset, lo, hi));
}

inline int8_t RequantizeBounded(int32_t acc, int32_t multiplier, int32_t shift, int32_t offset,
                                int32_t lo, int32_t hi) {
  const int32_t right = -shift;
  const int32_t r = dsp::RoundingHighMul(acc * 2, multiplier);
  const int32_t v = ((r + static_cast<int32_t>((uint32_t{1} << right) >> 1) + (r >> 31)) >> right) + offset;
  return static_cast<int8_t>(v < lo ? lo : (v > hi ? hi : v));
}

// The requantization of one layer's channels, chosen once per call.
template <bool kBounded>
inline int8_t Requantize(int32_t acc, int32_t multiplier, int32_t shift, int32_t offset,
                         int32_t lo, int32_t hi) {
  return kBounded ? RequantizeBounded(acc, multiplier, shift, offset, lo, hi)
                  : RequantizeChecked(acc, multiplier, shift, offset, lo, hi);
}

}  // namespace mt::m7
