// Reference PAD: one pass over the output, each element either copied or filled.
#include "kernels/pad.h"

namespace mt {
namespace ref {

namespace {

// Index into the input along one dim, or -1 when the output position lies in the padding.
inline int32_t InputIndex(const PadParams& p, int d, int32_t o) {
  const int32_t i = o - p.before[d];
  return (i >= 0 && i < p.in_shape[d]) ? i : -1;
}

}  // namespace

void pad_s8(const PadParams& p, const int8_t* in, int8_t* out) {
  const int8_t fill = static_cast<int8_t>(p.pad_value);
  for (int32_t o0 = 0; o0 < p.out_shape[0]; ++o0) {
    const int32_t i0 = InputIndex(p, 0, o0);
    for (int32_t o1 = 0; o1 < p.out_shape[1]; ++o1) {
      const int32_t i1 = InputIndex(p, 1, o1);
      for (int32_t o2 = 0; o2 < p.out_shape[2]; ++o2) {
        const int32_t i2 = InputIndex(p, 2, o2);
        for (int32_t o3 = 0; o3 < p.out_shape[3]; ++o3) {
          const int32_t i3 = InputIndex(p, 3, o3);
          const bool inside = i0 >= 0 && i1 >= 0 && i2 >= 0 && i3 >= 0;
          *out++ = inside ? in[((i0 * p.in_shape[1] + i1) * p.in_shape[2] + i2) * p.in_shape[3] + i3]
                          : fill;
        }
      }
    }
  }
}


void pad_backward(const PadParams& p, const int16_t* dy, int16_t* dx) {
  // Walk the input positions and read the matching output position: padding is never touched.
  for (int32_t i0 = 0; i0 < p.in_shape[0]; ++i0) {
    const int32_t o0 = i0 + p.before[0];
    for (int32_t i1 = 0; i1 < p.in_shape[1]; ++i1) {
      const int32_t o1 = o0 * p.out_shape[1] + i1 + p.before[1];
      for (int32_t i2 = 0; i2 < p.in_shape[2]; ++i2) {
        const int32_t o2 = o1 * p.out_shape[2] + i2 + p.before[2];
        const int16_t* src = dy + o2 * p.out_shape[3] + p.before[3];
        for (int32_t i3 = 0; i3 < p.in_shape[3]; ++i3) {
          *dx++ = src[i3];
        }
      }
    }
  }
}

}  // namespace ref
}  // namespace mt
