// Losses for training (docs/training.md, "Loss, classification" and "Loss, regression"): each
// turns the forward output into the first gradient (int16 + scale) and reports the loss value.
// python/mcutrain/train/grad_rules.py mirrors all three; the gradients agree bit for bit, the loss values
// within float rounding of the log.
#pragma once

#include <cstdint>

namespace mt {
namespace ref {

/// Softmax + cross-entropy, gradient with respect to the softmax's input (the logits):
/// d[o] = (q[o] + 128) - 256 * (o == label), *scale = 1/256 (q is the int8 SOFTMAX output,
/// scale 1/256, zero point -128). *loss = -ln(max(q[label] + 128, 0.5) / 256).
/// @param[in]  q      int8, n probabilities
/// @param[in]  n      number of classes
/// @param[in]  label  0 <= label < n (checked by the caller)
/// @param[out] d      int16, n values; may be a 4-byte-per-element gradient buffer
/// @param[out] scale  the gradient's scale
/// @param[out] loss   the loss value
/// @return the prediction: the first index of the largest q
int32_t softmax_cross_entropy_grad(const int8_t* q, int32_t n, int32_t label, int16_t* d,
                                   float* scale, float* loss);

/// Softmax + cross-entropy on int8 logits y of scale so (TensorFlow's from_logits=True), the
/// softmax computed here: with b the first index of the largest y, t_o = so * (float)(y[o] - y[b]),
/// e_o = exp_f32(t_o), s = sum of e_o in index order, g_o = e_o / s - (o == label), d / *scale
/// = GradRequantizeF32(g). *loss = ln(s) - t_label. The zero point cancels in the differences.
/// @param[in]  y      int8, n logits
/// @param[in]  label  0 <= label < n (checked by the caller)
/// @param[out] d      int16, n values; may be a 4-byte-per-element gradient buffer, must not
///                    overlap `y`
/// @return the prediction b
int32_t logits_cross_entropy_grad(const int8_t* y, int32_t n, float so, int32_t label, int16_t* d,
                                  float* scale, float* loss);

/// Mean squared error against float targets t: with e_i = so * (float)(y_i - zo) - t_i,
/// g_i = (2.0f / n) * e_i, quantized like GradRequantizeF32 into d / *scale;
/// returns mean(e_i^2) (float sum in index order, then / n).
/// @param[in]  y      int8, n outputs, scale so, zero point zo
/// @param[in]  t      float, n targets
/// @param[out] d      int16, n values; must not overlap `y` or `t`
/// @param[out] scale  the gradient's scale (0 when every g_i is 0)
float mse_grad(const int8_t* y, int32_t n, float so, int32_t zo, const float* t, int16_t* d,
               float* scale);

}  // namespace ref
}  // namespace mt
