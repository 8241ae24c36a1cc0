// Fixed-point requantization shared by every int8 kernel, reference and optimized alike.
//
// These reproduce TensorFlow Lite's integer arithmetic exactly (the "double rounding" variant that
// TFLite and TFLite Micro build by default): a real multiplier M is stored as a Q31 significand and
// a power-of-two exponent, M = significand * 2^(shift - 31). python/mcutrain/ops/quant.py computes
// the same significands on the host and mirrors these functions in numpy; both must stay in step.
#pragma once

#include <cstdint>
#include <limits>

namespace mt {

// (a * b * 2) >> 32 with round-half-away-from-zero, saturating the single overflow case
// a == b == INT32_MIN.
inline int32_t SaturatingRoundingDoublingHighMul(int32_t a, int32_t b) {
  if (a == b && a == std::numeric_limits<int32_t>::min()) {
    return std::numeric_limits<int32_t>::max();
  }
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int64_t nudge = ab >= 0 ? (int64_t{1} << 30) : (1 - (int64_t{1} << 30));
  // Division, not a shift: TFLite truncates toward zero here and so must we.
  return static_cast<int32_t>((ab + nudge) / (int64_t{1} << 31));
}

// x / 2^exponent rounded half away from zero (exponent in [0, 31]: quant.quantize_multiplier
// refuses scales that need more, and maps multipliers below 2^-32 to zero as TFLite does).
inline int32_t RoundingDivideByPOT(int32_t x, int exponent) {
  const int32_t mask = static_cast<int32_t>((int64_t{1} << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// x * significand * 2^(shift - 31): the requantization step of CONV_2D, FULLY_CONNECTED, ...
// shift is in [-31, 31]; the left shift is done on uint32 so that it wraps instead of being
// undefined, as the host mirror assumes.
inline int32_t MultiplyByQuantizedMultiplier(int32_t x, int32_t significand, int shift) {
  const int left_shift = shift > 0 ? shift : 0;
  const int right_shift = shift > 0 ? 0 : -shift;
  return RoundingDivideByPOT(
      SaturatingRoundingDoublingHighMul(static_cast<int32_t>(static_cast<uint32_t>(x) << left_shift),
                                        significand),
      right_shift);
}

// Variant used by ADD and friends where the multiplier is known to be below one (shift <= 0).
inline int32_t MultiplyByQuantizedMultiplierSmallerThanOneExp(int32_t x, int32_t significand,
                                                               int shift) {
  return RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x, significand), -shift);
}

// a + b in two's complement. TFLite's accumulators add in plain int32, which wraps on its
// interpreter when a corrupt bias sits near the int32 limits; the host reference wraps too.
// The unsigned sum gives that result without signed overflow (undefined behaviour), and
// compiles to the same single add.
inline int32_t WrappingAdd(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}

// TFLite's order, min(max(x, lo), hi): should lo ever exceed hi, the result is hi, as in TFLite.
inline int32_t Clamp(int32_t x, int32_t lo, int32_t hi) {
  const int32_t low_clamped = x < lo ? lo : x;
  return low_clamped > hi ? hi : low_clamped;
}

// A requantized accumulator plus the output zero point, clamped. TFLite adds in int32, which
// wraps on its interpreter when a saturated accumulator meets a zero point; the unsigned sum
// gives that same two's-complement result without signed overflow (undefined behaviour).
inline int32_t AddOffsetClamp(int32_t acc, int32_t offset, int32_t lo, int32_t hi) {
  return Clamp(WrappingAdd(acc, offset), lo, hi);
}

}  // namespace mt
