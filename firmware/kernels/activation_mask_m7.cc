// Cortex-M7 mask_pack: four elements' bounds tests in two byte-lane compares (activation_mask.h).
#include <cstdint>

#include "kernels/activation_mask.h"
#include "kernels/dsp.h"

namespace mt::m7 {

namespace {

// Bit k of the result = byte k of `lanes` is 0xFF (each byte is 0x00 or 0xFF): the four low
// bits moved to bits 24-27 by one multiply (their shifted copies land on distinct bits).
inline uint32_t LaneBits(uint32_t lanes) { return ((lanes & 0x01010101u) * 0x01020408u) >> 24; }

}  // namespace

void mask_pack(const int8_t* y, int32_t n, int32_t lo, int32_t hi, uint8_t* bits) {
  // lo < v < hi is v >= lo + 1 and hi - 1 >= v; both bounds must be int8 for the lanes (else no
  // value is inside and the reference writes zeros).
  if (lo + 1 > 127 || hi - 1 < -128 || lo + 1 > hi - 1) {
    ref::mask_pack(y, n, lo, hi, bits);
    return;
  }
  const uint32_t above = dsp::Splat8(lo + 1), below = dsp::Splat8(hi - 1);
  const auto inside = [&](const int8_t* p) {
    const uint32_t x = dsp::Load4(p);
    return LaneBits(dsp::AtLeast8(x, above) & dsp::AtLeast8(below, x));
  };
  int32_t i = 0;
  for (; i + 8 <= n; i += 8) {
    bits[i >> 3] = static_cast<uint8_t>(inside(y + i) | inside(y + i + 4) << 4);
  }
  if (i < n) ref::mask_pack(y + i, n - i, lo, hi, bits + (i >> 3));
}

}  // namespace mt::m7
