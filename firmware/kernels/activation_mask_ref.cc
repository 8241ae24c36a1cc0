// Reference activation masks: one bit per element, LSB first.
#include "kernels/activation_mask.h"

#include <cstring>

namespace mt {
namespace ref {

void mask_pack(const int8_t* y, int32_t n, int32_t lo, int32_t hi, uint8_t* bits) {
  for (int32_t b = 0; b < (n + 7) / 8; ++b) bits[b] = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (y[i] > lo && y[i] < hi) bits[i >> 3] = static_cast<uint8_t>(bits[i >> 3] | (1u << (i & 7)));
  }
}

namespace {

// Two mask bits as a mask of the two int16 values they cover (little-endian words).
constexpr uint32_t kPairKeep[4] = {0x00000000u, 0x0000FFFFu, 0xFFFF0000u, 0xFFFFFFFFu};

}  // namespace

void mask_apply(int16_t* d, int32_t n, const uint8_t* bits) {
  // A byte of ones (8 elements inside the activation's linear range, the common case) takes
  // one test; any other whole byte is four word ANDs with the masks of its bit pairs.
  int32_t i0 = 0;
  for (; i0 + 8 <= n; i0 += 8) {
    const uint32_t byte = bits[i0 >> 3];
    if (byte == 0xFFu) continue;
    for (int32_t k = 0; k < 4; ++k) {
      uint32_t pair;
      std::memcpy(&pair, d + i0 + 2 * k, sizeof pair);
      pair &= kPairKeep[(byte >> (2 * k)) & 3u];
      std::memcpy(d + i0 + 2 * k, &pair, sizeof pair);
    }
  }
  for (int32_t i = i0; i < n; ++i) {
    if (((bits[i >> 3] >> (i & 7)) & 1u) == 0) d[i] = 0;
  }
}

}  // namespace ref
}  // namespace mt
