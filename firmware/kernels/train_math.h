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

// (float)v, correctly rounded like any int64 -> float conversion. An int64 conversion is a
// library call on the Cortex-M7 (__aeabi_l2f, tens of instructions), an int32 one is one VCVT,
// and both round the same integer to the same float; gradient sums nearly always fit int32.
inline float Int64ToFloat(int64_t v) {
  if (v >= INT32_MIN && v <= INT32_MAX) return static_cast<float>(static_cast<int32_t>(v));
  return static_cast<float>(v);
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

// floor(|v| + 0.5) in float, as an int32 (|v| < 2^31): RoundHalfAway's magnitude, computed
// the same way, without its branch on the sign (truncation is floor for what is not negative).
inline int32_t RoundedMagnitude(float v) { return static_cast<int32_t>(std::fabs(v) + 0.5f); }

// One element of grad_requantize: round_half_away(acc * k) clamped to +-kGradMax, k = 8191 / m,
// for |acc| <= m (every caller's m is the maximum of the |acc| it requantizes), so the product
// is at most kGradMax within a rounding. acc * k has the sign of acc, as k > 0. The magnitude
// in int32 and the sign put back cost ~8 instructions a value instead of ~16 in float.
inline int16_t RequantizeGrad(int32_t acc, float k) {
  int32_t r = RoundedMagnitude(static_cast<float>(acc) * k);
  r = r > kGradMax ? kGradMax : r;
  const int32_t sign = acc >> 31;  // 0 or -1: the sign put back without a branch or an IT
  return static_cast<int16_t>((r ^ sign) - sign);
}

// An output gradient as the CONV_2D backward kernels read it: element (pixel, c) is
// data[pixel * pixel_stride + c], or 0 where bit pixel * channels + c of `mask` is 0 (mask_pack's
// layout). pixel_stride == channels reads a stored tensor; 0 reads one vector of `channels`
// values at every pixel, so the broadcast a spatial MEAN's backward would write is never stored
// (docs/training.md, "MEAN"). mask == nullptr: no mask (or one already applied in place).
struct GradView {
  const int16_t* data;
  int32_t pixel_stride;
  const uint8_t* mask;
  int32_t channels;

  int16_t At(int32_t pixel, int32_t c) const {
    if (mask != nullptr) {
      const int32_t i = pixel * channels + c;
      if (((mask[i >> 3] >> (i & 7)) & 1) == 0) return 0;
    }
    return data[pixel * pixel_stride + c];
  }
};

inline int64_t AbsGrad(int32_t acc) { return acc < 0 ? -static_cast<int64_t>(acc) : acc; }

// The scale grad_requantize returns for m = max |acc| > 0.
inline float RequantizedScale(float acc_scale, int64_t m) {
  return acc_scale * (static_cast<float>(m) / static_cast<float>(kGradMax));
}

// Gather form of a convolution's input gradient: the output position o (one axis) whose tap k
// reads input position i, for a window of leading padding `pad`, dilation and stride over `out`
// outputs. False when no output reads i through tap k.
inline bool TapOrigin(int32_t i, int32_t k, int32_t pad, int32_t dilation, int32_t stride,
                      int32_t out, int32_t* o) {
  const int32_t t = i + pad - k * dilation;  // = o * stride for a reading o
  if (t < 0 || t % stride != 0) return false;
  *o = t / stride;
  return *o < out;
}

// The second half of grad_requantize over n stored sums, m = max |acc(i)| known: out[i] from
// acc(i) in ascending i (so out may overwrite what acc(j), j < i, read), and the new scale.
template <typename Acc>
inline float RequantizeStored(int32_t n, int64_t m, const Acc& acc, float acc_scale,
                              int16_t* out) {
  if (m == 0) {
    for (int32_t i = 0; i < n; ++i) out[i] = 0;
    return 0.0f;
  }
  const float k = static_cast<float>(kGradMax) / static_cast<float>(m);
  for (int32_t i = 0; i < n; ++i) out[i] = RequantizeGrad(acc(i), k);
  return RequantizedScale(acc_scale, m);
}

// In-place: `buffer` holds n int32 accumulators on entry and n int16 gradients on return (the
// int16 view overwrites bytes already read). Returns the new scale (0 for an all-zero tensor).
inline float GradRequantize(void* buffer, int32_t n, float acc_scale) {
  const int32_t* acc = static_cast<const int32_t*>(buffer);
  int64_t m = 0;
  for (int32_t i = 0; i < n; ++i) {
    const int64_t a = AbsGrad(acc[i]);
    if (a > m) m = a;
  }
  return RequantizeStored(n, m, [acc](int32_t i) { return acc[i]; }, acc_scale,
                          static_cast<int16_t*>(buffer));
}

// The sinks the gather functions below hand their `gather`: small values whose state is in
// `mutable` members. A kernel may run its hot loop on a local copy of one (the compiler then
// holds the state in registers, where through the reference it loads and stores it for every
// value) and hand the copy's state back with Absorb.
struct MaxSink {  // max |acc|
  mutable int64_t m = 0;
  void operator()(int32_t, int32_t acc) const {
    const int64_t a = AbsGrad(acc);
    if (a > m) m = a;
  }
  void Absorb(const MaxSink& local) const { m = local.m; }
};

struct RequantSink {  // out[i] = RequantizeGrad(acc, k)
  int16_t* out;
  float k;
  void operator()(int32_t i, int32_t acc) const { out[i] = RequantizeGrad(acc, k); }
  void Absorb(const RequantSink&) const {}
};

struct StagedSink {  // the halves of acc in out[i] and high[i]; the range of acc
  int16_t* out;
  int16_t* high;
  mutable int32_t lo = 0, hi = 0;
  void operator()(int32_t i, int32_t acc) const {
    lo = acc < lo ? acc : lo;
    hi = acc > hi ? acc : hi;
    const uint32_t bits = static_cast<uint32_t>(acc);
    out[i] = static_cast<int16_t>(bits & 0xFFFFu);
    high[i] = static_cast<int16_t>(bits >> 16);
  }
  void Absorb(const StagedSink& local) const {
    lo = local.lo;
    hi = local.hi;
  }
};

// grad_requantize of n integer sums that are never stored: two passes over `gather`, which calls
// sink(i, acc_i) once for every i in [0, n) and must produce the same acc_i both times. Pass 1
// keeps max |acc_i|, pass 2 writes out[i]; same expressions as GradRequantize, so the result is
// bit-identical to storing the sums in int32 and requantizing them. Needs no buffer beyond the
// n int16 of `out`, at the price of computing every sum twice.
template <typename Gather>
inline float GatherRequantize(int32_t n, const Gather& gather, float acc_scale, int16_t* out) {
  const MaxSink max_sink;
  gather(max_sink);
  const int64_t m = max_sink.m;
  if (m == 0) {
    for (int32_t i = 0; i < n; ++i) out[i] = 0;
    return 0.0f;
  }
  const float k = static_cast<float>(kGradMax) / static_cast<float>(m);
  gather(RequantSink{out, k});
  return RequantizedScale(acc_scale, m);
}

// GatherRequantize with one pass over `gather` instead of two, given n int16 of `high`: each sum
// waits split in halves, the low one in out[i], the high one in high[i], until the maximum is
// known. Same expressions on the same sums, so bit-identical to GatherRequantize.
template <typename Gather>
inline float GatherRequantizeStaged(int32_t n, const Gather& gather, float acc_scale,
                                    int16_t* out, int16_t* high) {
  const StagedSink sink{out, high};
  gather(sink);
  const int64_t m = AbsGrad(sink.lo) > sink.hi ? AbsGrad(sink.lo) : sink.hi;
  return RequantizeStored(n, m, [out, high](int32_t i) {
    return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(high[i])) << 16 |
                                static_cast<uint16_t>(out[i]));
  }, acc_scale, out);
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
