// Reference ADD: plain loops, the yardstick every optimized ADD must equal.
#include "kernels/add.h"

#include "kernels/fixed_point.h"

namespace mt {
namespace ref {

namespace {

// One operand moved onto the common intermediate scale (TFLite's "scaled_input").
inline int32_t ScaleOperand(int8_t q, int32_t offset, int32_t left_shift, int32_t multiplier,
                            int32_t shift) {
  const int32_t shifted = (q + offset) * (int32_t{1} << left_shift);
  return MultiplyByQuantizedMultiplierSmallerThanOneExp(shifted, multiplier, shift);
}

}  // namespace

void add_s8(const AddParams& p, const int8_t* a, const int8_t* b, int8_t* out) {
  int32_t o = 0;
  for (int32_t i0 = 0; i0 < p.out_shape[0]; ++i0) {
    for (int32_t i1 = 0; i1 < p.out_shape[1]; ++i1) {
      for (int32_t i2 = 0; i2 < p.out_shape[2]; ++i2) {
        for (int32_t i3 = 0; i3 < p.out_shape[3]; ++i3) {
          const int32_t ia = i0 * p.a_strides[0] + i1 * p.a_strides[1] + i2 * p.a_strides[2] +
                             i3 * p.a_strides[3];
          const int32_t ib = i0 * p.b_strides[0] + i1 * p.b_strides[1] + i2 * p.b_strides[2] +
                             i3 * p.b_strides[3];
          const int32_t sum =
              ScaleOperand(a[ia], p.a_offset, p.left_shift, p.a_multiplier, p.a_shift) +
              ScaleOperand(b[ib], p.b_offset, p.left_shift, p.b_multiplier, p.b_shift);
          const int32_t raw =
              MultiplyByQuantizedMultiplierSmallerThanOneExp(sum, p.out_multiplier, p.out_shift) +
              p.out_offset;
          out[o++] = static_cast<int8_t>(Clamp(raw, p.act_min, p.act_max));
        }
      }
    }
  }
}

}  // namespace ref
}  // namespace mt
