// Per-element update arithmetic shared by the CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED
// backward kernels (docs/training.md, "Rules per operator"). python/mcutrain/ops/param_train.py
// mirrors each function; every float expression is written in the order the reference
// evaluates it, so the two round identically under -ffp-contract=off.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/train_math.h"

namespace mt {

// The gather-form input-gradient kernels (conv2d, fully_connected) sum this many consecutive
// input channels of one pixel together in int32 locals (64 B of stack): each folded dy term is
// then computed once per block instead of once per input channel, and read weights are
// contiguous, as in the scatter form, while no tensor-sized int32 buffer is needed.
constexpr int32_t kGatherBlock = 16;

// D' = round_half_away(D * ratio[c]): the per-channel weight-scale fold of an output gradient.
// ratio == nullptr means per-tensor weights (every ratio is 1), where the fold is the identity.
inline int32_t FoldGrad(int16_t d, const float* ratio, int32_t c) {
  if (ratio == nullptr) return d;
  const float v = static_cast<float>(d) * ratio[c];
  const int32_t r = RoundedMagnitude(v);  // RoundHalfAway(v), branch-free
  // v has d's sign (a ratio of two scales is positive; where v is 0, so is r), so the sign
  // comes back from d in integers, not by a float compare and a flag transfer.
  const int32_t sign = static_cast<int32_t>(d) >> 31;
  return (r ^ sign) - sign;
}

// w = clamp(w - step, -127, 127): the end of every weight update.
inline void StepWeight(int8_t* w, float step) {
  // A non-finite step (only possible from an overflowing gradient scale) never reaches a weight.
  if (!std::isfinite(step)) step = 0.0f;
  *w = SaturateWeight(static_cast<float>(*w) - step);
}

// w = clamp(w - R((float)gw * coef_o), -127, 127). Stochastic rounding draws once per call, so
// callers visit weights in the SRAM copy's memory order.
inline void UpdateWeight(int8_t* w, int64_t gw, float coef_o, Rounding rounding,
                         uint32_t* prng) {
  StepWeight(w, RoundUpdate(Int64ToFloat(gw) * coef_o, rounding, prng));
}

// UpdateWeight for a sum known to fit int32 (Int64ToFloat's test and its int64 adds skipped)
// with the rounding fixed at compile time and the PRNG state in a caller's local (through
// the pointer, every int8 store would make the compiler reload it). Same result.
template <Rounding kRounding>
inline void UpdateWeightFast(int8_t* w, int32_t gw, float coef_o, uint32_t& state) {
  StepWeight(w, RoundUpdate(static_cast<float>(gw) * coef_o, kRounding, &state));
}

// Calls run(rounding) with the rounding as a compile-time constant (std::integral_constant),
// for the kernels that instantiate UpdateWeightFast.
template <typename Run>
inline void WithRounding(Rounding rounding, Run&& run) {
  if (rounding == Rounding::kStochastic) {
    run(std::integral_constant<Rounding, Rounding::kStochastic>{});
  } else {
    run(std::integral_constant<Rounding, Rounding::kNearest>{});
  }
}

// One bias given its gradient sum gb: b = sat_int32(b - round((lr_dy * gb) * coef)).
inline void UpdateBiasValue(int32_t* b, int64_t gb, float lr_dy, float coef) {
  const float delta = (lr_dy * Int64ToFloat(gb)) * coef;
  const float rounded = RoundHalfAway(delta);
  // |rounded| < 2^31, nearly always: the int64 difference of two exact integers is what the
  // double arithmetic below computes, without its soft-float calls (hundreds of instructions
  // on a single-precision FPU).
  if (rounded > -2147483648.0f && rounded < 2147483648.0f) {
    const int64_t v = static_cast<int64_t>(*b) - static_cast<int32_t>(rounded);
    *b = v < INT32_MIN ? INT32_MIN : (v > INT32_MAX ? INT32_MAX : static_cast<int32_t>(v));
    return;
  }
  const double step = std::isfinite(rounded) ? static_cast<double>(rounded) : 0.0;
  *b = SaturateBias(static_cast<double>(*b) - step);
}

// Bias update from an output gradient of `rows` pixels: GB[o] = sum over pixels of
// dy.At(pixel, o) (int64), b[o] = sat_int32(b[o] - round(((lr_dy * GB[o]) * coef[o]))).
// lr_dy = lr * dy_scale, computed once by the caller.
inline void UpdateBias(int32_t rows, const GradView& dy, float lr_dy, const float* bias_coef,
                       int32_t* bias) {
  for (int32_t o = 0; o < dy.channels; ++o) {
    int64_t gb = 0;
    for (int32_t r = 0; r < rows; ++r) gb += dy.At(r, o);
    UpdateBiasValue(&bias[o], gb, lr_dy, bias_coef[o]);
  }
}

// The same for a stored gradient laid out [rows, channels] (channels innermost).
inline void UpdateBias(int32_t rows, int32_t channels, const int16_t* dy, float lr_dy,
                       const float* bias_coef, int32_t* bias) {
  UpdateBias(rows, GradView{dy, channels, nullptr, channels}, lr_dy, bias_coef, bias);
}

}  // namespace mt
