// Arithmetic shared by every backward and update kernel (docs/training.md, "Shared arithmetic").
// python/mcutrain/ops/train_math.py mirrors each function; the float expressions are written out
// step by step because the reference and the firmware must round identically. Build with
// -ffp-contract=off so the compiler does not fuse a multiply and an add.
#pragma once

#include <cmath>
#include <cstdint>

namespace mt {

// Gradient tensors are int16 with one float scale; |D| <= kGradMax keeps int32 sums safe.
constexpr int32_t kGradMax = 8191;

inline float RoundHalfAway(float v) {
  return v >= 0.0f ? std::floor(v + 0.5f) : -std::floor(-v + 0.5f);
}

inline uint32_t XorShift32(uint32_t* state) {
  uint32_t s = *state;
  s ^= s << 13;
  s ^= s >> 17;
  s ^= s << 5;
  *state = s;
  return s;
}

// Uniform in [0, 1) with 24 random bits: exact in float32.
inline float Uniform01(uint32_t* state) {
  return static_cast<float>(XorShift32(state) >> 8) * (1.0f / 16777216.0f);
}

inline float StochasticRound(float v, uint32_t* state) { return std::floor(v + Uniform01(state)); }

enum class Rounding : uint8_t { kNearest = 0, kStochastic = 1 };

inline float RoundUpdate(float v, Rounding mode, uint32_t* state) {
  return mode == Rounding::kStochastic ? StochasticRound(v, state) : RoundHalfAway(v);
}

inline int8_t SaturateWeight(float w) {
  return static_cast<int8_t>(w < -127.0f ? -127.0f : (w > 127.0f ? 127.0f : w));
}

inline int32_t SaturateBias(double b) {
  return static_cast<int32_t>(b < -2147483648.0 ? -2147483648.0
                                                : (b > 2147483647.0 ? 2147483647.0 : b));
}

// In-place: `buffer` holds n int32 accumulators on entry and n int16 gradients on return (the
// int16 view overwrites bytes already read). Returns the new scale (0 for an all-zero tensor).
inline float GradRequantize(void* buffer, int32_t n, float acc_scale) {
  const int32_t* acc = static_cast<const int32_t*>(buffer);
  int16_t* out = static_cast<int16_t*>(buffer);
  int64_t m = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t a = acc[i] < 0 ? -static_cast<int64_t>(acc[i]) : acc[i];
    if (a > m) m = a;
  }
  if (m == 0) {
    for (int32_t i = 0; i < n; ++i) out[i] = 0;
    return 0.0f;
  }
  const float k = static_cast<float>(kGradMax) / static_cast<float>(m);
  for (int32_t i = 0; i < n; ++i) {
    float v = RoundHalfAway(static_cast<float>(acc[i]) * k);
    v = v > kGradMax ? kGradMax : (v < -kGradMax ? -kGradMax : v);
    out[i] = static_cast<int16_t>(v);
  }
  return acc_scale * (static_cast<float>(m) / static_cast<float>(kGradMax));
}

// Same for a float gradient (regression loss, fp32 classifier); `out` may not alias `g`.
inline float GradRequantizeF32(const float* g, int32_t n, int16_t* out) {
  float m = 0.0f;
  for (int32_t i = 0; i < n; ++i) {
    const float a = std::fabs(g[i]);
    if (a > m) m = a;
  }
  if (!(m > 0.0f)) {
    for (int32_t i = 0; i < n; ++i) out[i] = 0;
    return 0.0f;
  }
  const float k = static_cast<float>(kGradMax) / m;
  for (int32_t i = 0; i < n; ++i) {
    float v = RoundHalfAway(g[i] * k);
    v = v > kGradMax ? kGradMax : (v < -kGradMax ? -kGradMax : v);
    out[i] = static_cast<int16_t>(v);
  }
  return m / static_cast<float>(kGradMax);
}

}  // namespace mt
