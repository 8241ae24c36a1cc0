// Reference losses. Float expressions are written in the order the numpy mirror evaluates them
// (build with -ffp-contract=off).
#include "kernels/loss.h"

#include <cmath>

#include "kernels/float_classifier.h"
#include "kernels/train_math.h"

namespace mt {
namespace ref {

int32_t softmax_cross_entropy_grad(const int8_t* q, int32_t n, int32_t label, int16_t* d,
                                   float* scale, float* loss) {
  int32_t best = 0;
  for (int32_t o = 0; o < n; ++o) {
    if (q[o] > q[best]) best = o;
    d[o] = static_cast<int16_t>(q[o] + 128 - (o == label ? 256 : 0));
  }
  *scale = 1.0f / 256.0f;
  // A zero probability would give an infinite loss; 0.5 is half of the smallest step.
  const float p = static_cast<float>(q[label] + 128);
  *loss = -std::log((p > 0.5f ? p : 0.5f) / 256.0f);
  return best;
}

namespace {

// One softmax term, recomputed in each pass (the same expression gives the same float) so no
// float buffer is needed: the classes can be many, the stack is small.
inline float LogitsExp(const int8_t* y, int32_t o, int32_t top, float so) {
  return exp_f32(so * static_cast<float>(y[o] - top));
}

// g_label = p_label - 1 = -(rest / sum): a confident right answer keeps its few significant bits.
inline float LogitsGrad(const int8_t* y, int32_t o, int32_t top, float so, float sum,
                        float rest, int32_t label) {
  return o == label ? -(rest / sum) : LogitsExp(y, o, top, so) / sum;
}

}  // namespace

int32_t logits_cross_entropy_grad(const int8_t* y, int32_t n, float so, int32_t label, int16_t* d,
                                  float* scale, float* loss) {
  int32_t best = 0;
  for (int32_t o = 1; o < n; ++o) {
    if (y[o] > y[best]) best = o;
  }
  const int32_t top = y[best];
  float sum = 0.0f;
  float rest = 0.0f;  // the sum without the label's term
  for (int32_t o = 0; o < n; ++o) {
    const float e = LogitsExp(y, o, top, so);
    sum = sum + e;
    if (o != label) rest = rest + e;
  }
  // Same steps as GradRequantizeF32.
  float m = 0.0f;
  for (int32_t o = 0; o < n; ++o) {
    const float a = std::fabs(LogitsGrad(y, o, top, so, sum, rest, label));
    if (a > m) m = a;
  }
  if (!(m > 0.0f)) {
    for (int32_t o = 0; o < n; ++o) d[o] = 0;
    *scale = 0.0f;
  } else {
    const float k = static_cast<float>(kGradMax) / m;
    for (int32_t o = 0; o < n; ++o) {
      float v = RoundHalfAway(LogitsGrad(y, o, top, so, sum, rest, label) * k);
      v = v > kGradMax ? kGradMax : (v < -kGradMax ? -kGradMax : v);
      d[o] = static_cast<int16_t>(v);
    }
    *scale = m / static_cast<float>(kGradMax);
  }
  // ln(sum) - t_label rather than -ln(p_label): exact for a label whose probability underflows.
  *loss = std::log(sum) - so * static_cast<float>(y[label] - top);
  return best;
}

namespace {

// The regression gradient of one element, recomputed in the second pass (the same expression
// gives the same float) so no float buffer is needed.
inline float MseGrad(const int8_t* y, const float* t, int32_t i, float so, int32_t zo,
                     float two_over_n) {
  const float e = so * static_cast<float>(y[i] - zo) - t[i];
  return two_over_n * e;
}

}  // namespace

float mse_grad(const int8_t* y, int32_t n, float so, int32_t zo, const float* t, int16_t* d,
               float* scale) {
  const float two_over_n = 2.0f / static_cast<float>(n);
  float m = 0.0f;
  float sum = 0.0f;
  for (int32_t i = 0; i < n; ++i) {
    const float e = so * static_cast<float>(y[i] - zo) - t[i];
    sum = sum + e * e;
    const float a = std::fabs(two_over_n * e);
    if (a > m) m = a;
  }
  if (!(m > 0.0f)) {
    for (int32_t i = 0; i < n; ++i) d[i] = 0;
    *scale = 0.0f;
  } else {
    // Same steps as GradRequantizeF32.
    const float k = static_cast<float>(kGradMax) / m;
    for (int32_t i = 0; i < n; ++i) {
      float v = RoundHalfAway(MseGrad(y, t, i, so, zo, two_over_n) * k);
      v = v > kGradMax ? kGradMax : (v < -kGradMax ? -kGradMax : v);
      d[i] = static_cast<int16_t>(v);
    }
    *scale = m / static_cast<float>(kGradMax);
  }
  return sum / static_cast<float>(n);
}

}  // namespace ref
}  // namespace mt
