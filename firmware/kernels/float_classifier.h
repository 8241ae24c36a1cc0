// The fp32 classifier of a training scheme with "classifier": "fp32" (docs/training.md,
// "fp32 classifier"): the model's final FULLY_CONNECTED (+ SOFTMAX) run in float32 with weights
// held in the trainable state block. python/mcutrain/train/float_classifier.py mirrors every function
// operation for operation; the trained float weights agree bit for bit as long as this file is
// built with -ffp-contract=off (no fused multiply-add) and no libm function enters the state
// (exp is implemented here; only the reported loss uses logf).
#pragma once

#include <cstdint>

namespace mt {

struct FloatClassifierParams {
  int32_t depth;         // inputs of the FULLY_CONNECTED
  int32_t units;         // classes
  int32_t input_offset;  // -zx of the int8 input
  float input_scale;     // sx
  // The int8 output: 0 = the SOFTMAX's probabilities (scale 1/256, zero point -128), 1 = the
  // logits of a model without SOFTMAX, quantized with output_inv_scale (1 / so) and zero point.
  int32_t output_logits;
  float output_inv_scale;
  int32_t output_zero_point;
};

// The float work buffer a forward pass fills and the loss and backward read:
// x_real[depth], logits[units], prob[units].
constexpr int32_t FloatClassifierWorkFloats(int32_t depth, int32_t units) {
  return depth + 2 * units;
}

namespace ref {

/// Deterministic exp for x <= 0: 0 below -80 (and for NaN), else 2^n * poly(r) with
/// n = round_half_away(x * log2e), r = (x - n * ln2_hi) - n * ln2_lo and a degree-7 Taylor
/// polynomial in Horner form. Never produces a subnormal.
float exp_f32(float x);

/// W[o, i] = w_scale[o] * (float)wq[o, i], b[o] = b_scale[o] * (float)bq[o] (0 when bq is null).
void float_classifier_init(const FloatClassifierParams& p, const int8_t* wq, const int32_t* bq,
                           const float* w_scale, const float* b_scale, float* w, float* b);

/// Forward: x_real, logits = b + sum_i W x_real (sequential in i), softmax probabilities into
/// `work`; q[o] = clamp(round_half_away(prob[o] * 256) - 128) is the int8 SOFTMAX output, or
/// with output_logits q[o] = clamp(round_half_away(logits[o] * output_inv_scale) + zo).
/// `q` may overlap nothing in `work`; it may alias memory that held `x` only after x is read
/// (x is converted to x_real first).
void float_classifier_forward(const FloatClassifierParams& p, const float* w, const float* b,
                              const int8_t* x, float* work, int8_t* q);

/// *loss = -logf(max(prob[label], 1e-30f)); returns the first index of the largest logit.
int32_t float_classifier_loss(const FloatClassifierParams& p, const float* work, int32_t label,
                              float* loss);

/// Backward and update. With g[o] = prob[o] - (o == label): if dx is not null,
/// scratch[i] = sum_o g[o] * W[o, i] (sequential over o, old weights) is quantized by
/// GradRequantizeF32 into dx (int16[depth]) and its scale returned (else 0). Then
/// b[o] -= lr * g[o] and W[o, i] -= (lr * g[o]) * x_real[i].
/// @param scratch float[depth], not overlapping dx (may be null when dx is null)
float float_classifier_backward(const FloatClassifierParams& p, float* w, float* b,
                                const float* work, int32_t label, float lr, float* scratch,
                                int16_t* dx);

}  // namespace ref
}  // namespace mt
