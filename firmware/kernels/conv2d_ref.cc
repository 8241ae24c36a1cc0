// Reference CONV_2D: the plain loop nest that optimized versions must equal bit for bit.
#include "kernels/conv2d.h"

#include "kernels/fixed_point.h"

namespace mt::ref {

void conv2d_s8(const Conv2dParams& p, const int8_t* input, const int8_t* filter,
               const int32_t* bias, int8_t* output) {
  const int32_t groups = p.input_c / p.filter_c;
  const int32_t filters_per_group = p.output_c / groups;
  for (int32_t b = 0; b < p.batches; ++b) {
    for (int32_t oy = 0; oy < p.output_h; ++oy) {
      const int32_t in_y0 = oy * p.stride_h - p.pad_h;
      for (int32_t ox = 0; ox < p.output_w; ++ox) {
        const int32_t in_x0 = ox * p.stride_w - p.pad_w;
        for (int32_t oc = 0; oc < p.output_c; ++oc) {
          const int32_t in_c0 = (oc / filters_per_group) * p.filter_c;
          int32_t acc = 0;
          for (int32_t fy = 0; fy < p.filter_h; ++fy) {
            const int32_t iy = in_y0 + fy * p.dilation_h;
            for (int32_t fx = 0; fx < p.filter_w; ++fx) {
              const int32_t ix = in_x0 + fx * p.dilation_w;
              // Padding is implicit: a tap outside the image contributes nothing, which is
              // what a pad value equal to the input zero point would give.
              if (iy < 0 || iy >= p.input_h || ix < 0 || ix >= p.input_w) continue;
              const int8_t* in =
                  input + ((b * p.input_h + iy) * p.input_w + ix) * p.input_c + in_c0;
              const int8_t* w = filter + ((oc * p.filter_h + fy) * p.filter_w + fx) * p.filter_c;
              for (int32_t ic = 0; ic < p.filter_c; ++ic) {
                acc += static_cast<int32_t>(w[ic]) * (in[ic] + p.input_offset);
              }
            }
          }
          if (bias != nullptr) acc += bias[oc];
          acc = MultiplyByQuantizedMultiplier(acc, p.multiplier[oc], p.shift[oc]) + p.output_offset;
          output[((b * p.output_h + oy) * p.output_w + ox) * p.output_c + oc] =
              static_cast<int8_t>(Clamp(acc, p.act_min, p.act_max));
        }
      }
    }
  }
}

}  // namespace mt::ref
