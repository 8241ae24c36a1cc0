// Reference DEPTHWISE_CONV_2D: the plain loop nest that optimized versions must equal.
#include "kernels/depthwise_conv2d.h"

#include "kernels/fixed_point.h"

namespace mt::ref {

void depthwise_conv2d_s8(const DepthwiseConv2dParams& p, const int8_t* input,
                         const int8_t* filter, const int32_t* bias, int8_t* output) {
  for (int32_t b = 0; b < p.batches; ++b) {
    for (int32_t oy = 0; oy < p.output_h; ++oy) {
      const int32_t in_y0 = oy * p.stride_h - p.pad_h;
      for (int32_t ox = 0; ox < p.output_w; ++ox) {
        const int32_t in_x0 = ox * p.stride_w - p.pad_w;
        for (int32_t ic = 0; ic < p.input_c; ++ic) {
          for (int32_t m = 0; m < p.depth_multiplier; ++m) {
            const int32_t oc = ic * p.depth_multiplier + m;
            int32_t acc = 0;
            for (int32_t fy = 0; fy < p.filter_h; ++fy) {
              const int32_t iy = in_y0 + fy * p.dilation_h;
              for (int32_t fx = 0; fx < p.filter_w; ++fx) {
                const int32_t ix = in_x0 + fx * p.dilation_w;
                // Taps outside the image are skipped: implicit padding with the zero point.
                if (iy < 0 || iy >= p.input_h || ix < 0 || ix >= p.input_w) continue;
                const int32_t x = input[((b * p.input_h + iy) * p.input_w + ix) * p.input_c + ic];
                const int32_t w = filter[(fy * p.filter_w + fx) * p.output_c + oc];
                acc += w * (x + p.input_offset);
              }
            }
            if (bias != nullptr) acc += bias[oc];
            acc = MultiplyByQuantizedMultiplier(acc, p.multiplier[oc], p.shift[oc]) +
                  p.output_offset;
            output[((b * p.output_h + oy) * p.output_w + ox) * p.output_c + oc] =
                static_cast<int8_t>(Clamp(acc, p.act_min, p.act_max));
          }
        }
      }
    }
  }
}

}  // namespace mt::ref
