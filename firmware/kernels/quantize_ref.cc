// Reference requantization: one multiply per element.
#include "kernels/quantize.h"

#include "kernels/fixed_point.h"

namespace mt {
namespace ref {

void requantize_s8(const RequantizeParams& p, const int8_t* in, int8_t* out) {
  for (int32_t i = 0; i < p.size; ++i) {
    const int32_t v = MultiplyByQuantizedMultiplier(in[i] - p.in_zp, p.multiplier, p.shift);
    out[i] = static_cast<int8_t>(AddOffsetClamp(v, p.out_zp, -128, 127));
  }
}

}  // namespace ref
}  // namespace mt
