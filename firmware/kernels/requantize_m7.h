// Requantization for the Cortex-M7 kernels: MultiplyByQuantizedMultiplier (fixed_point.h) plus
// the output offset and clamp, in about ten instructions instead of ~30, with the same result,
// under two preconditions the host checks per layer (python/mcutrain/ops/m7.py,
// bounded_requant): the channel's shift is negative (a multiplier below 1, as in ordinary
// models), and |acc| < 2^29.
//
// Why it is exact then. With m the Q31 significand (0 <= m < 2^31) and e = -shift >= 1:
//  - SaturatingRoundingDoublingHighMul(acc, m) rounds acc*m/2^31 half away from zero,
//    truncating toward zero after the nudge; for either sign that is floor((acc*m + 2^30) /
//    2^31), which is what SMMULR computes for (2 acc) * m: floor((2 acc*m + 2^31) / 2^32).
//  - RoundingDivideByPOT(r, e) is floor((r + 2^(e-1) - [r < 0]) / 2^e); r >> 31 is -[r < 0].
//    With |r| <= 2^29 the adds stay inside int32.
// Layers that miss a precondition use the reference arithmetic (Requant::kChecked).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/dsp.h"
#include "kernels/fixed_point.h"

namespace mt::m7 {

enum class Requant : uint8_t {
  kChecked,   // the reference functions: any shift, any accumulator
  kBounded,   // the short form, then the clamp to [lo, hi]
  kSaturate,  // the short form with [lo, hi] = [-128, 127]: one SSAT
};

// A layer's output stage, copied into locals so that int8 stores (which may alias anything)
// do not force the compiler to reload it from the params struct after every output.
struct OutputStage {
  const int32_t* multiplier;
  const int32_t* shift;
  int32_t offset, lo, hi;
};

// The mode for a layer: bounded is the host's verdict (the kernel's `bounded` argument).
inline Requant ChooseRequant(bool bounded, int32_t lo, int32_t hi) {
  if (!bounded) return Requant::kChecked;
  return lo == -128 && hi == 127 ? Requant::kSaturate : Requant::kBounded;
}

// Output channel c's int8 value of accumulator acc.
template <Requant kMode>
inline int8_t Requantize(const OutputStage& s, int32_t acc, int32_t c) {
  const int32_t multiplier = s.multiplier[c];
  const int32_t shift = s.shift[c];
  if (kMode == Requant::kChecked) {
    return static_cast<int8_t>(AddOffsetClamp(MultiplyByQuantizedMultiplier(acc, multiplier, shift),
                                              s.offset, s.lo, s.hi));
  }
  const int32_t right = -shift;
  const int32_t r = dsp::RoundingHighMul(acc * 2, multiplier);
  const int32_t half = static_cast<int32_t>((uint32_t{1} << right) >> 1);
  const int32_t v = ((r + half + (r >> 31)) >> right) + s.offset;
  if (kMode == Requant::kSaturate) return static_cast<int8_t>(dsp::Saturate8(v));
  return static_cast<int8_t>(Clamp(v, s.lo, s.hi));
}

// Calls run(mode) with the mode as a compile-time constant (std::integral_constant), so a
// kernel instantiates its loops once per requantization form and branches once per call.
template <typename Run>
inline void WithRequant(Requant mode, Run&& run) {
  switch (mode) {
    case Requant::kSaturate:
      run(std::integral_constant<Requant, Requant::kSaturate>{});
      break;
    case Requant::kBounded:
      run(std::integral_constant<Requant, Requant::kBounded>{});
      break;
    case Requant::kChecked:
      run(std::integral_constant<Requant, Requant::kChecked>{});
      break;
  }
}

}  // namespace mt::m7
