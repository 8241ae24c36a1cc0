// Reference activation masks: one bit per element, LSB first.
#include "kernels/activation_mask.h"

namespace mt {
namespace ref {

void mask_pack(const int8_t* y, int32_t n, int32_t lo, int32_t hi, uint8_t* bits) {
  for (int32_t b = 0; b < (n + 7) / 8; ++b) bits[b] = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (y[i] > lo && y[i] < hi) bits[i >> 3] = static_cast<uint8_t>(bits[i >> 3] | (1u << (i & 7)));
  }
}

void mask_apply(int16_t* d, int32_t n, const uint8_t* bits) {
  // Whole bytes of ones or zeros (8 elements all inside or all outside the activation's
  // linear range, the common cases) take one test.
  for (int32_t i0 = 0; i0 < n; i0 += 8) {
    const uint32_t byte = bits[i0 >> 3];
    const int32_t end = n - i0 < 8 ? n : i0 + 8;
    if (byte == 0xFFu) continue;
    if (byte == 0u) {
      for (int32_t i = i0; i < end; ++i) d[i] = 0;
      continue;
    }
    for (int32_t i = i0; i < end; ++i) {
      if (((byte >> (i & 7)) & 1u) == 0) d[i] = 0;
    }
  }
}

}  // namespace ref
}  // namespace mt
