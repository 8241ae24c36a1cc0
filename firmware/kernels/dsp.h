// The Cortex-M7's dual 16-bit DSP instructions, as the optimized (m7) kernels use them.
//
// On an ARMv7E-M target each function is one instruction (ACLE intrinsics, SXTB16 with ROR as
// inline assembly because GCC's arm_acle.h has no rotate operand). Elsewhere (the host test
// builds) each is the same arithmetic in plain C++, so the m7 kernels compile and can be checked
// against the reference kernels under the sanitizers as well as on the emulated board.
// Values are packed two int16 lanes per uint32 (lane 0 in bits 0-15), as the instructions see
// them.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define MT_HAVE_DSP 1
#else
#define MT_HAVE_DSP 0
#endif

namespace mt::dsp {

// Four bytes from any address: the Cortex-M7 allows unaligned LDR (not LDRD/LDM), so int8
// tensors need no alignment.
inline uint32_t Load4(const void* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void Store4(void* p, uint32_t v) { std::memcpy(p, &v, sizeof v); }

// Two int16 lanes in one word (lane 0 from the low half of lane0, lane 1 from lane1's).
inline uint32_t Pack(int32_t lane0, int32_t lane1) {
  return (static_cast<uint32_t>(lane0) & 0xFFFFu) | (static_cast<uint32_t>(lane1) << 16);
}

#if MT_HAVE_DSP

// Bytes 0 and 2 of x, sign-extended into lanes 0 and 1.
inline uint32_t ExtendEven(uint32_t x) { return static_cast<uint32_t>(__sxtb16(x)); }

// words[0] and words[1] (4-byte aligned), then words += 2: one LDRD with write-back, which
// GCC does not form by itself across the two loads.
inline void LoadPair(const uint32_t*& words, uint32_t& first, uint32_t& second) {
  __asm__("ldrd %0, %1, [%2], #8"
          : "=r"(first), "=r"(second), "+r"(words)
          : "m"(*reinterpret_cast<const uint32_t(*)[2]>(words)));
}

// Bytes 1 and 3 of x, sign-extended into lanes 0 and 1.
inline uint32_t ExtendOdd(uint32_t x) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}

// ExtendEven(x) and ExtendOdd(x) plus a, lane-wise, in one instruction each (SXTAB16).
inline uint32_t ExtendEvenAdd(uint32_t x, uint32_t a) {
  return static_cast<uint32_t>(__sxtab16(static_cast<int16x2_t>(a), static_cast<int8x4_t>(x)));
}
inline uint32_t ExtendOddAdd(uint32_t x, uint32_t a) {
  uint32_t r;
  __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
  return r;
}

// The low halves of a and b in one word (PKHBT): bytes a0 a1 b0 b1.
inline uint32_t LowHalves(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// The high halves of a and b in one word (PKHTB): bytes a2 a3 b2 b3.
inline uint32_t HighHalves(uint32_t a, uint32_t b) {
  uint32_t r;
  __asm__("pkhtb %0, %2, %1, asr #16" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// Lane-wise a + b, each lane wrapping at 16 bits.
inline uint32_t Add16(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>(__sadd16(static_cast<int16x2_t>(a), static_cast<int16x2_t>(b)));
}

// acc + a.lane0 * b.lane0 + a.lane1 * b.lane1 (wraps at 32 bits; the callers' sums never do).
inline int32_t Dot2(uint32_t a, uint32_t b, int32_t acc) {
  return __smlad(static_cast<int16x2_t>(a), static_cast<int16x2_t>(b), acc);
}

// acc + a.lane0 * b.lane0 and acc + a.lane1 * b.lane1 (SMLABB, SMLATT).
inline int32_t MulAddLow(uint32_t a, uint32_t b, int32_t acc) {
  return __smlabb(static_cast<int32_t>(a), static_cast<int32_t>(b), acc);
}
inline int32_t MulAddHigh(uint32_t a, uint32_t b, int32_t acc) {
  return __smlatt(static_cast<int32_t>(a), static_cast<int32_t>(b), acc);
}

// x clamped to [-128, 127] (SSAT #8).
inline int32_t Saturate8(int32_t x) { return __ssat(x, 8); }

// Byte-lane signed maximum and minimum of four int8 lanes: SSUB8 sets each lane's GE flag
// where a >= b, SEL then takes that lane from its first operand.
inline uint32_t Max8(uint32_t a, uint32_t b) {
  __ssub8(static_cast<int8x4_t>(a), static_cast<int8x4_t>(b));
  return static_cast<uint32_t>(__sel(static_cast<uint8x4_t>(a), static_cast<uint8x4_t>(b)));
}
inline uint32_t Min8(uint32_t a, uint32_t b) {
  __ssub8(static_cast<int8x4_t>(a), static_cast<int8x4_t>(b));
  return static_cast<uint32_t>(__sel(static_cast<uint8x4_t>(b), static_cast<uint8x4_t>(a)));
}
// 0xFF in each byte lane where a >= b (signed), else 0x00.
inline uint32_t AtLeast8(uint32_t a, uint32_t b) {
  __ssub8(static_cast<int8x4_t>(a), static_cast<int8x4_t>(b));
  return static_cast<uint32_t>(
      __sel(static_cast<uint8x4_t>(0xFFFFFFFFu), static_cast<uint8x4_t>(0u)));
}

// (a * b + 2^31) >> 32, the high word of the product rounded (SMMULR).
inline int32_t RoundingHighMul(int32_t a, int32_t b) {
  int32_t r;
  __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
  return r;
}

// c + RoundingHighMul(a, b) in one instruction (SMMLAR: c is added above the product's low
// word, so the sum is exact).
inline int32_t RoundingHighMulAdd(int32_t a, int32_t b, int32_t c) {
  int32_t r;
  __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(c));
  return r;
}

#else

inline int32_t Lane(uint32_t x, int lane) {
  return static_cast<int16_t>(static_cast<uint16_t>(x >> (16 * lane)));
}

inline uint32_t ExtendEven(uint32_t x) {
  return Pack(static_cast<int8_t>(x & 0xFFu), static_cast<int8_t>((x >> 16) & 0xFFu));
}

inline uint32_t ExtendOdd(uint32_t x) { return ExtendEven(x >> 8); }

inline void LoadPair(const uint32_t*& words, uint32_t& first, uint32_t& second) {
  first = words[0];
  second = words[1];
  words += 2;
}

inline uint32_t LowHalves(uint32_t a, uint32_t b) { return (a & 0xFFFFu) | (b << 16); }

inline uint32_t HighHalves(uint32_t a, uint32_t b) { return (a >> 16) | (b & 0xFFFF0000u); }

inline uint32_t Add16(uint32_t a, uint32_t b) {
  return Pack(Lane(a, 0) + Lane(b, 0), Lane(a, 1) + Lane(b, 1));
}

inline uint32_t ExtendEvenAdd(uint32_t x, uint32_t a) { return Add16(ExtendEven(x), a); }
inline uint32_t ExtendOddAdd(uint32_t x, uint32_t a) { return Add16(ExtendOdd(x), a); }

inline int32_t Dot2(uint32_t a, uint32_t b, int32_t acc) {
  const int32_t sum = Lane(a, 0) * Lane(b, 0) + Lane(a, 1) * Lane(b, 1);
  return static_cast<int32_t>(static_cast<uint32_t>(acc) + static_cast<uint32_t>(sum));
}

inline int32_t MulAddLow(uint32_t a, uint32_t b, int32_t acc) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) +
                              static_cast<uint32_t>(Lane(a, 0) * Lane(b, 0)));
}
inline int32_t MulAddHigh(uint32_t a, uint32_t b, int32_t acc) {
  return static_cast<int32_t>(static_cast<uint32_t>(acc) +
                              static_cast<uint32_t>(Lane(a, 1) * Lane(b, 1)));
}

inline int32_t RoundingHighMul(int32_t a, int32_t b) {
  return static_cast<int32_t>((static_cast<int64_t>(a) * b + (int64_t{1} << 31)) >> 32);
}

inline int32_t RoundingHighMulAdd(int32_t a, int32_t b, int32_t c) {
  return c + RoundingHighMul(a, b);
}

inline int32_t Saturate8(int32_t x) { return x < -128 ? -128 : (x > 127 ? 127 : x); }

template <bool kMax>
inline uint32_t Extreme8(uint32_t a, uint32_t b) {
  uint32_t r = 0;
  for (int lane = 0; lane < 4; ++lane) {
    const int32_t x = static_cast<int8_t>(a >> (8 * lane));
    const int32_t y = static_cast<int8_t>(b >> (8 * lane));
    const int32_t v = (kMax ? x >= y : x < y) ? x : y;
    r |= (static_cast<uint32_t>(v) & 0xFFu) << (8 * lane);
  }
  return r;
}
inline uint32_t Max8(uint32_t a, uint32_t b) { return Extreme8<true>(a, b); }
inline uint32_t Min8(uint32_t a, uint32_t b) { return Extreme8<false>(a, b); }

inline uint32_t AtLeast8(uint32_t a, uint32_t b) {
  uint32_t r = 0;
  for (int lane = 0; lane < 4; ++lane) {
    if (static_cast<int8_t>(a >> (8 * lane)) >= static_cast<int8_t>(b >> (8 * lane))) {
      r |= 0xFFu << (8 * lane);
    }
  }
  return r;
}

#endif

// One int8 in all four byte lanes.
inline uint32_t Splat8(int32_t v) { return (static_cast<uint32_t>(v) & 0xFFu) * 0x01010101u; }

// One int16 in both lanes.
inline uint32_t Splat16(int32_t v) {
  const uint32_t lane = static_cast<uint32_t>(v) & 0xFFFFu;
  return lane | (lane << 16);
}

}  // namespace mt::dsp
