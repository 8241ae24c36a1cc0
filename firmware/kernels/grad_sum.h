// Fan-out for training (docs/training.md, "Fan-out"): a tensor read by two operators receives
// two gradients, each with its own scale; they are brought to the larger scale, added in int32
// and requantized.
#pragma once

#include <cstdint>

namespace mt {
namespace ref {

/// s = max(sa, sb); acc_i = round_half_away(a_i * (sa / s)) + round_half_away(b_i * (sb / s));
/// result = GradRequantize(acc, s). A term with scale 0 is skipped: the other is copied
/// unchanged (data and scale).
/// @param[in]  a, b     int16, n values each, with scales sa, sb (>= 0)
/// @param[out] acc_out  4 * n bytes, 4-byte aligned: the destination gradient buffer, used as
///                      int32 accumulators and holding n int16 on return; must not overlap a, b
/// @return the destination's scale
float grad_sum(const int16_t* a, float sa, const int16_t* b, float sb, int32_t n,
               int32_t* acc_out);

}  // namespace ref
}  // namespace mt
