// 1-bit activation masks for training (docs/training.md, "Activation masks").
//
// An operator with a fused RELU/RELU6/RELU_N1_TO_1 keeps, instead of its whole int8 output, one
// bit per element saying whether the output was strictly inside the clamp (lo < y < hi); the
// backward pass zeroes the output gradient where the bit is 0. The host
// (python/mcutrain/train/grad_rules.py) chooses lo and hi: for RELU hi = 128, so only the lower
// clamp masks.
#pragma once

#include <cstdint>

namespace mt {
namespace ref {

/// Packs bit i = (lo < y[i] < hi) into bits[i / 8], least significant bit first.
/// @param[in]  y     int8, n values (the forward output)
/// @param[in]  n     element count
/// @param[in]  lo    lower bound, exclusive
/// @param[in]  hi    upper bound, exclusive (128 for "no upper clamp")
/// @param[out] bits  (n + 7) / 8 bytes; unused high bits of the last byte are written as 0
void mask_pack(const int8_t* y, int32_t n, int32_t lo, int32_t hi, uint8_t* bits);

/// Zeroes d[i] wherever bit i of `bits` is 0, in place; the gradient's scale is unchanged.
/// @param[in,out] d     int16, n values
/// @param[in]     n     element count
/// @param[in]     bits  (n + 7) / 8 bytes from mask_pack
void mask_apply(int16_t* d, int32_t n, const uint8_t* bits);

}  // namespace ref

namespace m7 {

/// As ref::mask_pack, four elements per SSUB8/SEL compare pair (activation_mask_m7.cc).
void mask_pack(const int8_t* y, int32_t n, int32_t lo, int32_t hi, uint8_t* bits);

}  // namespace m7
}  // namespace mt
