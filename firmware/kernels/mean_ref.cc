// Reference MEAN: plain loops, the yardstick every optimized mean kernel must equal.
#include "kernels/mean.h"

#include "kernels/fixed_point.h"

namespace mt {
namespace ref {

void mean_s8(const MeanParams& p, const int8_t* in, int8_t* out) {
  // n * zero_point fits easily: n < 2^23 is checked on the host.
  const int32_t zero_point_sum = p.reduce * p.input_zero_point;
  for (int32_t o = 0; o < p.outer; ++o) {
    const int8_t* block = in + o * p.reduce * p.inner;
    for (int32_t i = 0; i < p.inner; ++i) {
      int32_t sum = 0;
      for (int32_t r = 0; r < p.reduce; ++r) {
        sum += block[r * p.inner + i];
      }
      const int32_t scaled = MultiplyByQuantizedMultiplier(sum - zero_point_sum, p.multiplier,
                                                           p.shift);
      out[o * p.inner + i] =
          static_cast<int8_t>(AddOffsetClamp(scaled, p.output_zero_point, -128, 127));
    }
  }
}


void mean_backward(const MeanParams& p, const int16_t* dy, int16_t* dx) {
  for (int32_t o = 0; o < p.outer; ++o) {
    const int16_t* row = dy + o * p.inner;
    int16_t* block = dx + o * p.reduce * p.inner;
    for (int32_t r = 0; r < p.reduce; ++r) {
      for (int32_t i = 0; i < p.inner; ++i) {
        block[r * p.inner + i] = row[i];
      }
    }
  }
}

}  // namespace ref
}  // namespace mt
