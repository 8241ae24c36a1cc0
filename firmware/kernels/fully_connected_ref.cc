// Reference FULLY_CONNECTED: the plain loop nest that optimized versions must equal.
#include "kernels/fully_connected.h"

#include "kernels/fixed_point.h"

namespace mt::ref {

void fully_connected_s8(const FullyConnectedParams& p, const int8_t* input, const int8_t* filter,
                        const int32_t* bias, int8_t* output) {
  for (int32_t b = 0; b < p.batches; ++b) {
    const int8_t* x = input + b * p.accum_depth;
    for (int32_t o = 0; o < p.output_depth; ++o) {
      const int8_t* w = filter + o * p.accum_depth;
      int32_t acc = 0;
      for (int32_t d = 0; d < p.accum_depth; ++d) {
        acc += (static_cast<int32_t>(w[d]) + p.filter_offset) *
               (static_cast<int32_t>(x[d]) + p.input_offset);
      }
      if (bias != nullptr) acc += bias[o];
      acc = MultiplyByQuantizedMultiplier(acc, p.multiplier[o], p.shift[o]) + p.output_offset;
      output[b * p.output_depth + o] = static_cast<int8_t>(Clamp(acc, p.act_min, p.act_max));
    }
  }
}

}  // namespace mt::ref
