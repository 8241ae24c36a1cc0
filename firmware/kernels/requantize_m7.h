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
//  - RoundingDivideByPOT(r, e) is floor((r + 2^(e-1) - [r < 0]) / 2^e).
//  - [r < 0] may be read as [acc < 0]: they differ only where acc < 0 rounds to r = 0, and
//    then both give floor((2^(e-1) - {0 or 1}) / 2^e) = 0, as e >= 1. acc >> 31 is -[acc < 0].
//  - Adding the output offset z after the shift equals adding z * 2^e before it.
// So the host precomputes per channel (ops/m7.py requant_table) {m, e, 2^(e-1) + z * 2^e}, and
// an output is one SMMLAR (the product's rounded high word plus the constant), one add, one
// shift and the clamp; the host also checks that the adds stay inside int32 (|r| < 2^29 and
// the constant below 2^31 - 2^29).
// Layers that miss a precondition use the reference arithmetic (Requant::kChecked). A training
// layer's table says under which |bias| the bound holds whatever the trained int8 weights are
// (PlanRequant), so its trained channels and moving bias need not take the checked form.
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
// do not force the compiler to reload it from the params struct after every output. `table`:
// the host's [channels][3] {multiplier, right shift, rounding constant + offset} of the short
// form (kBounded, kSaturate), or nullptr where only kChecked is allowed; `stride` words from
// one channel's row to the next (4 where a kernel's table rows lead with the bias: CONV_2D).
struct OutputStage {
  const int32_t* multiplier;
  const int32_t* shift;
  int32_t offset, lo, hi;
  const int32_t* table;
  int32_t stride = 3;
};

// One channel's short-form constants.
struct ShortForm {
  int32_t multiplier, right, constant;
};

inline ShortForm ShortFormOf(const OutputStage& s, int32_t c) {
  const int32_t* t = s.table + s.stride * c;
  return ShortForm{t[0], t[1], t[2]};
}

// The short form of one output: kBounded clamps to [lo, hi], kSaturate is one SSAT.
// kTwice: acc is already twice the sum (a kernel that doubled one operand of every product and
// the bias saves the doubling here); the sign, and so the result, are the same.
template <Requant kMode, bool kTwice = false>
inline int8_t RequantizeShort(const OutputStage& s, const ShortForm& f, int32_t acc) {
  const int32_t twice = kTwice ? acc : acc * 2;
  const int32_t v =
      (dsp::RoundingHighMulAdd(twice, f.multiplier, f.constant) + (acc >> 31)) >> f.right;
  if (kMode == Requant::kSaturate) return static_cast<int8_t>(dsp::Saturate8(v));
  return static_cast<int8_t>(Clamp(v, s.lo, s.hi));
}

// The mode for a layer: the short form where the host gave its table (the kernel's `requant`
// argument), with one SSAT for the full int8 range.
inline Requant ChooseRequant(const int32_t* table, int32_t lo, int32_t hi) {
  if (table == nullptr) return Requant::kChecked;
  return lo == -128 && hi == 127 ? Requant::kSaturate : Requant::kBounded;
}

// A weighted layer's table (ops/m7.py requant_table) ends in one word after its channels' rows:
// kFrozenOnly, or the bound on |bias| under which the short form is exact for every channel,
// trained ones included, whatever their int8 weights have become.
constexpr int32_t kFrozenOnly = -1;

struct RequantPlan {
  Requant mode;       // the frozen channels'
  bool trained_short;  // the trained channels also take `mode`, else kChecked
};

// The plan of a weighted layer of `channels` outputs whose bias is now `bias` (nullptr: none):
// with a bias limit, the short form for every channel if every |bias| is below it (the bias
// may have trained since the last call), else the checked form for all. stride: words per
// channel row of the table (OutputStage).
inline RequantPlan PlanRequant(const int32_t* table, int32_t channels, const int32_t* bias,
                               int32_t lo, int32_t hi, int32_t stride = 3) {
  const Requant mode = ChooseRequant(table, lo, hi);
  if (mode == Requant::kChecked) return {mode, false};
  const int32_t limit = table[stride * channels];
  if (limit == kFrozenOnly) return {mode, false};
  if (bias != nullptr) {
    for (int32_t c = 0; c < channels; ++c) {
      if (bias[c] <= -limit || bias[c] >= limit) return {Requant::kChecked, false};
    }
  }
  return {mode, true};
}

// Output channel c's int8 value of accumulator acc (kTwice: as in RequantizeShort).
template <Requant kMode, bool kTwice = false>
inline int8_t Requantize(const OutputStage& s, int32_t acc, int32_t c) {
  if constexpr (kMode == Requant::kChecked) {
    static_assert(!kTwice, "a doubled accumulator takes the short form only");
    return static_cast<int8_t>(AddOffsetClamp(
        MultiplyByQuantizedMultiplier(acc, s.multiplier[c], s.shift[c]), s.offset, s.lo, s.hi));
  } else {
    return RequantizeShort<kMode, kTwice>(s, ShortFormOf(s, c), acc);
  }
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
