// Reference SOFTMAX: plain loops over gemmlowp-style fixed-point arithmetic, the yardstick every
// optimized softmax kernel must equal.
//
// Fixed-point notation: a "Qi.f" value is an int32 whose real value is raw / 2^f, with i integer
// bits and f = 31 - i fractional bits. Q0.31 covers [-1, 1), so "one" is INT32_MAX.
#include "kernels/softmax.h"

#include <limits>

#include "kernels/fixed_point.h"

namespace mt {
namespace ref {

namespace {

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int32_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr int kAccumulationIntegerBits = 12;  // the sum of exps is Q12.19 (room for 4096 ones)

// Additions wrap like gemmlowp's FixedPoint operators (through uint32, so never undefined).
inline int32_t Add(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}
inline int32_t Sub(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) - static_cast<uint32_t>(b));
}

// Product of two fixed-point numbers: the integer bits of the result are the sum of the inputs'.
inline int32_t Mul(int32_t a, int32_t b) { return SaturatingRoundingDoublingHighMul(a, b); }

// x * 2^exponent, saturating (gemmlowp's SaturatingRoundingMultiplyByPOT, exponent > 0). Used to
// move a value to a format with fewer integer bits.
inline int32_t ShiftLeftSaturating(int32_t x, int exponent) {
  const int32_t threshold = static_cast<int32_t>((int64_t{1} << (31 - exponent)) - 1);
  if (x > threshold) return kInt32Max;
  if (x < -threshold) return kInt32Min;
  return static_cast<int32_t>(static_cast<uint32_t>(x) << exponent);
}

// Leading zero bits of a non-zero x (one CLZ instruction on Cortex-M7).
inline int CountLeadingZeros(uint32_t x) { return __builtin_clz(x); }

// exp(a) for Q0.31 a in [-1/4, 0), Q0.31 result: Taylor expansion to 4th order around -1/8.
int32_t ExpOnQuarterInterval(int32_t a) {
  constexpr int32_t kExpMinusOneEighth = 1895147668;
  constexpr int32_t kOneThird = 715827883;
  const int32_t x = Add(a, int32_t{1} << 28);  // a + 1/8
  const int32_t x2 = Mul(x, x);
  const int32_t x3 = Mul(x2, x);
  const int32_t x4 = Mul(x2, x2);
  const int32_t x4_over_4 = RoundingDivideByPOT(x4, 2);
  // x^4/24 + x^3/6 + x^2/2
  const int32_t poly = RoundingDivideByPOT(Add(Mul(Add(x4_over_4, x3), kOneThird), x2), 1);
  return Add(kExpMinusOneEighth, Mul(kExpMinusOneEighth, Add(x, poly)));
}

// exp(a) for Q5.26 a <= 0, Q0.31 result (gemmlowp's exp_on_negative_values). a is split into a
// part in [-1/4, 0) handled by the polynomial and a multiple of 1/4 whose bits select factors
// exp(-1/4), exp(-1/2), exp(-1), ..., exp(-16).
int32_t ExpOnNegativeValues(int32_t a) {
  constexpr int kFractionalBits = 26;
  constexpr int32_t kQuarter = int32_t{1} << (kFractionalBits - 2);
  constexpr int32_t kFactors[7] = {1672461947, 1302514674, 790015084, 290630308,
                                   39332535,   720401,     242};
  const int32_t mod_quarter_minus_quarter = Sub(a & (kQuarter - 1), kQuarter);
  // Q5.26 -> Q0.31 is a shift by the 5 integer bits.
  int32_t result = ExpOnQuarterInterval(ShiftLeftSaturating(mod_quarter_minus_quarter, 5));
  const int32_t remainder = Sub(mod_quarter_minus_quarter, a);
  for (int k = 0; k < 7; ++k) {
    // Factor k is exp(-2^(k - 2)); its bit in a Q5.26 value is 2^(26 + k - 2).
    if (remainder & (int32_t{1} << (kFractionalBits - 2 + k))) {
      result = Mul(result, kFactors[k]);
    }
  }
  return a == 0 ? kInt32Max : result;
}

// 1 / (1 + a) for Q0.31 a in [0, 1), Q0.31 result: three Newton-Raphson steps in Q2.29 from
// the initial guess 48/17 - 32/17 * d, with d = (1 + a) / 2.
int32_t OneOverOnePlusX(int32_t a) {
  constexpr int32_t k48Over17 = 1515870810;
  constexpr int32_t kMinus32Over17 = -1010580540;
  constexpr int32_t kOneQ2 = int32_t{1} << 29;
  // RoundingHalfSum(a, one): (a + one) / 2 rounded away from zero, computed in 64 bits.
  const int64_t sum = int64_t{a} + kInt32Max;
  const int32_t half_denominator = static_cast<int32_t>((sum + (sum >= 0 ? 1 : -1)) / 2);
  int32_t x = Add(k48Over17, Mul(half_denominator, kMinus32Over17));
  for (int i = 0; i < 3; ++i) {
    const int32_t one_minus_dx = Sub(kOneQ2, Mul(half_denominator, x));
    x = Add(x, ShiftLeftSaturating(Mul(x, one_minus_dx), 2));  // Q4.27 -> Q2.29
  }
  return ShiftLeftSaturating(x, 1);  // x / 2 in Q1.30, read as Q0.31
}

// 1 / sum for a positive Q12.19 sum: returns the Q0.31 reciprocal of sum normalised into [1, 2)
// and sets *bits_over_unit to the power of two taken out (TFLite's GetReciprocal).
int32_t Reciprocal(int32_t sum, int* bits_over_unit) {
  const int headroom_plus_one = CountLeadingZeros(static_cast<uint32_t>(sum));
  *bits_over_unit = kAccumulationIntegerBits - headroom_plus_one;
  const int32_t shifted_minus_one = static_cast<int32_t>(
      (static_cast<uint32_t>(sum) << headroom_plus_one) - (uint32_t{1} << 31));
  return OneOverOnePlusX(shifted_minus_one);
}

// exp(beta * input_scale * diff) in Q0.31 for diff >= diff_min. The host bound diff_min keeps
// diff * 2^left_shift inside int32 (TFLite's input radius).
inline int32_t ScaledExp(const SoftmaxParams& p, int32_t diff) {
  const int32_t scaled = Mul(diff * (int32_t{1} << p.input_left_shift), p.input_multiplier);
  return ExpOnNegativeValues(scaled);
}

}  // namespace

void softmax_s8(const SoftmaxParams& p, const int8_t* in, int8_t* out) {
  for (int32_t row = 0; row < p.rows; ++row) {
    const int8_t* x = in + row * p.depth;
    int8_t* y = out + row * p.depth;
    int32_t max_in_row = -128;
    for (int32_t c = 0; c < p.depth; ++c) {
      if (x[c] > max_in_row) max_in_row = x[c];
    }

    // The row maximum contributes exp(0) = 1, so sum >= 2^19 and Reciprocal() is well defined.
    int32_t sum_of_exps = 0;
    for (int32_t c = 0; c < p.depth; ++c) {
      const int32_t diff = x[c] - max_in_row;
      if (diff >= p.diff_min) {
        // Q0.31 -> Q12.19: 12 more integer bits, so divide by 2^12.
        sum_of_exps = Add(sum_of_exps,
                          RoundingDivideByPOT(ScaledExp(p, diff), kAccumulationIntegerBits));
      }
    }
    int bits_over_unit = 0;
    const int32_t inverse_sum = Reciprocal(sum_of_exps, &bits_over_unit);
    // exp / sum is in [0, 1]; scaling it to 0..256 for the int8 output is a further 2^-23.
    const int exponent = bits_over_unit + 31 - 8;

    // Second pass recomputes each exp rather than storing 32-bit values (no scratch buffer).
    for (int32_t c = 0; c < p.depth; ++c) {
      const int32_t diff = x[c] - max_in_row;
      int32_t q = -128;
      if (diff >= p.diff_min) {
        const int32_t probability = RoundingDivideByPOT(Mul(inverse_sum, ScaledExp(p, diff)),
                                                        exponent);
        q = Clamp(probability - 128, -128, 127);
      }
      y[c] = static_cast<int8_t>(q);
    }
  }
}

}  // namespace ref
}  // namespace mt
