// Reference fp32 classifier. Every float expression is one IEEE operation written in the order
// python/mcutrain/train/float_classifier.py evaluates it (build with -ffp-contract=off).
#include "kernels/float_classifier.h"

#include <cmath>
#include <cstring>

#include "kernels/train_math.h"

namespace mt {
namespace ref {

namespace {

// Hex literals: the float32 values the numpy mirror uses, exactly.
constexpr float kExpMin = -80.0f;  // e^-80 < 2e-35: negligible next to the largest term, 1
constexpr float kLog2e = 0x1.715476p+0f;
constexpr float kLn2Hi = 0x1.62e4p-1f;  // 15 significant bits: n * kLn2Hi is exact
constexpr float kLn2Lo = 0x1.7f7d1cp-20f;
constexpr float kC7 = 0x1.a01a02p-13f;  // 1/7!
constexpr float kC6 = 0x1.6c16c2p-10f;
constexpr float kC5 = 0x1.111112p-7f;
constexpr float kC4 = 0x1.555556p-5f;
constexpr float kC3 = 0x1.555556p-3f;
constexpr float kC2 = 0x1.0p-1f;
constexpr float kMinProb = 1e-30f;

}  // namespace

float exp_f32(float x) {
  if (!(x >= kExpMin)) return 0.0f;
  const float n = RoundHalfAway(x * kLog2e);
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float poly = kC7;
  poly = poly * r + kC6;
  poly = poly * r + kC5;
  poly = poly * r + kC4;
  poly = poly * r + kC3;
  poly = poly * r + kC2;
  poly = poly * r + 1.0f;
  poly = poly * r + 1.0f;
  // 2^n built from its bits: n >= -116 here, so the power and the product stay normal.
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return poly * scale;
}

void float_classifier_init(const FloatClassifierParams& p, const int8_t* wq, const int32_t* bq,
                           const float* w_scale, const float* b_scale, float* w, float* b) {
  for (int32_t o = 0; o < p.units; ++o) {
    for (int32_t i = 0; i < p.depth; ++i) {
      w[o * p.depth + i] = w_scale[o] * static_cast<float>(wq[o * p.depth + i]);
    }
    b[o] = bq == nullptr ? 0.0f : b_scale[o] * static_cast<float>(bq[o]);
  }
}

void float_classifier_forward(const FloatClassifierParams& p, const float* w, const float* b,
                              const int8_t* x, float* work, int8_t* q) {
  float* x_real = work;
  float* logits = work + p.depth;
  float* prob = logits + p.units;
  for (int32_t i = 0; i < p.depth; ++i) {
    x_real[i] = static_cast<float>(x[i] + p.input_offset) * p.input_scale;
  }
  for (int32_t o = 0; o < p.units; ++o) {
    float acc = 0.0f;
    for (int32_t i = 0; i < p.depth; ++i) acc = acc + w[o * p.depth + i] * x_real[i];
    logits[o] = b[o] + acc;
  }
  float m = logits[0];
  for (int32_t o = 1; o < p.units; ++o) {
    if (logits[o] > m) m = logits[o];
  }
  float sum = 0.0f;
  for (int32_t o = 0; o < p.units; ++o) {
    prob[o] = exp_f32(logits[o] - m);
    sum = sum + prob[o];
  }
  for (int32_t o = 0; o < p.units; ++o) {
    prob[o] = prob[o] / sum;
    float v = p.output_logits != 0
                  ? RoundHalfAway(logits[o] * p.output_inv_scale) +
                        static_cast<float>(p.output_zero_point)
                  : RoundHalfAway(prob[o] * 256.0f) - 128.0f;
    v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
    q[o] = static_cast<int8_t>(v);
  }
}

int32_t float_classifier_loss(const FloatClassifierParams& p, const float* work, int32_t label,
                              float* loss) {
  const float* logits = work + p.depth;
  const float* prob = logits + p.units;
  int32_t best = 0;
  for (int32_t o = 1; o < p.units; ++o) {
    if (logits[o] > logits[best]) best = o;
  }
  const float pl = prob[label];
  *loss = -std::log(pl > kMinProb ? pl : kMinProb);
  return best;
}

float float_classifier_backward(const FloatClassifierParams& p, float* w, float* b,
                                const float* work, int32_t label, float lr, float* scratch,
                                int16_t* dx) {
  const float* x_real = work;
  const float* prob = work + p.depth + p.units;
  float scale = 0.0f;
  if (dx != nullptr) {
    for (int32_t i = 0; i < p.depth; ++i) scratch[i] = 0.0f;
    for (int32_t o = 0; o < p.units; ++o) {
      const float g = prob[o] - (o == label ? 1.0f : 0.0f);
      for (int32_t i = 0; i < p.depth; ++i) scratch[i] = scratch[i] + g * w[o * p.depth + i];
    }
    scale = GradRequantizeF32(scratch, p.depth, dx);
  }
  for (int32_t o = 0; o < p.units; ++o) {
    const float c = lr * (prob[o] - (o == label ? 1.0f : 0.0f));
    b[o] = b[o] - c;
    for (int32_t i = 0; i < p.depth; ++i) w[o * p.depth + i] = w[o * p.depth + i] - c * x_real[i];
  }
  return scale;
}

}  // namespace ref
}  // namespace mt
