// Reference CONV_2D: the plain loop nest that optimized versions must equal bit for bit.
#include "kernels/conv2d.h"

#include "kernels/fixed_point.h"
#include "kernels/param_update.h"

namespace mt::ref {

namespace {

// Output channels [oc_begin, oc_end) of one output pixel, weights from `rows` (row oc at the
// same OHWI offset in flash and in the SRAM copy). The trained prefix and the frozen rest are
// two calls, so no loop asks which memory a channel lives in.
void ConvPixel(const Conv2dParams& p, const int8_t* input, const int8_t* rows,
               const int32_t* bias, int8_t* output, int32_t b, int32_t oy, int32_t ox,
               int32_t oc_begin, int32_t oc_end) {
  const int32_t filters_per_group = p.output_c / (p.input_c / p.filter_c);
  const int32_t in_y0 = oy * p.stride_h - p.pad_h;
  const int32_t in_x0 = ox * p.stride_w - p.pad_w;
  for (int32_t oc = oc_begin; oc < oc_end; ++oc) {
    const int32_t in_c0 = (oc / filters_per_group) * p.filter_c;
    // Plain signed adds (faster than wrapping ones): no partial sum can leave int32, since the
    // compiler refuses any channel whose sum of |w| * max|x + input_offset| over its taps could
    // (ops/common.py check_accumulator, trained channels at |w| 128).
    int32_t acc = 0;
    for (int32_t fy = 0; fy < p.filter_h; ++fy) {
      const int32_t iy = in_y0 + fy * p.dilation_h;
      for (int32_t fx = 0; fx < p.filter_w; ++fx) {
        const int32_t ix = in_x0 + fx * p.dilation_w;
        // Padding is implicit: a tap outside the image contributes nothing, which is
        // what a pad value equal to the input zero point would give.
        if (iy < 0 || iy >= p.input_h || ix < 0 || ix >= p.input_w) continue;
        const int8_t* in = input + ((b * p.input_h + iy) * p.input_w + ix) * p.input_c + in_c0;
        const int8_t* w = rows + ((oc * p.filter_h + fy) * p.filter_w + fx) * p.filter_c;
        for (int32_t ic = 0; ic < p.filter_c; ++ic) {
          acc += static_cast<int32_t>(w[ic]) * (in[ic] + p.input_offset);
        }
      }
    }
    if (bias != nullptr) acc = WrappingAdd(acc, bias[oc]);
    acc = MultiplyByQuantizedMultiplier(acc, p.multiplier[oc], p.shift[oc]);
    output[((b * p.output_h + oy) * p.output_w + ox) * p.output_c + oc] =
        static_cast<int8_t>(AddOffsetClamp(acc, p.output_offset, p.act_min, p.act_max));
  }
}

// Input channels [icf0, icf0 + n) of one group at input pixel (b, iy, ix): adds to acc[j] the
// terms fold(dy.At(pixel (b, oy, ox), oc)) * w[oc, fy, fx, icf0 + j] of output channels [oc_begin, oc_end)
// over the taps (fy, fx) whose output (oy, ox) reads the pixel, weights from `rows` (row oc at
// the same OHWI offset in flash and in the SRAM copy). The same contract as ConvPixel: one
// weight source per call.
void ConvGatherBlock(const Conv2dParams& p, const int8_t* rows, const GradView& dy,
                     const float* ratio, int32_t b, int32_t iy, int32_t ix, int32_t icf0,
                     int32_t n, int32_t oc_begin, int32_t oc_end, int32_t* acc) {
  for (int32_t fy = 0; fy < p.filter_h; ++fy) {
    int32_t oy = 0;
    if (!TapOrigin(iy, fy, p.pad_h, p.dilation_h, p.stride_h, p.output_h, &oy)) continue;
    for (int32_t fx = 0; fx < p.filter_w; ++fx) {
      int32_t ox = 0;
      if (!TapOrigin(ix, fx, p.pad_w, p.dilation_w, p.stride_w, p.output_w, &ox)) continue;
      const int32_t pixel = (b * p.output_h + oy) * p.output_w + ox;
      for (int32_t oc = oc_begin; oc < oc_end; ++oc) {
        const int32_t d = FoldGrad(dy.At(pixel, oc), ratio, oc);
        if (d == 0) continue;
        const int8_t* w = rows + ((oc * p.filter_h + fy) * p.filter_w + fx) * p.filter_c + icf0;
        for (int32_t j = 0; j < n; ++j) acc[j] += d * w[j];
      }
    }
  }
}

// A stored output gradient [batches, output_h, output_w, output_c], no mask.
GradView Stored(const Conv2dParams& p, const int16_t* dy) {
  return GradView{dy, p.output_c, nullptr, p.output_c};
}

}  // namespace

void conv2d_s8(const Conv2dParams& p, const int8_t* input, const int8_t* filter,
               const int32_t* bias, int8_t* output) {
  for (int32_t b = 0; b < p.batches; ++b) {
    for (int32_t oy = 0; oy < p.output_h; ++oy) {
      for (int32_t ox = 0; ox < p.output_w; ++ox) {
        ConvPixel(p, input, p.train_filter, bias, output, b, oy, ox, 0, p.n_train);
        ConvPixel(p, input, filter, bias, output, b, oy, ox, p.n_train, p.output_c);
      }
    }
  }
}

float conv2d_input_grad(const Conv2dParams& p, const int8_t* filter, const GradView& dy,
                        const float* ratio, float acc_scale, int16_t* dx) {
  const int32_t groups = p.input_c / p.filter_c;
  const int32_t filters_per_group = p.output_c / groups;
  // Gather form: each input element sums the terms of every output that read it (the scatter
  // form's terms, regrouped; integer adds, so the sum is the same), kGatherBlock channels of a
  // pixel at a time. The group's channels split at n_train into the SRAM copy's rows and
  // flash's, one weight source per call.
  const auto gather = [&](const auto& sink) {
    for (int32_t b = 0; b < p.batches; ++b) {
      for (int32_t iy = 0; iy < p.input_h; ++iy) {
        for (int32_t ix = 0; ix < p.input_w; ++ix) {
          const int32_t pixel = ((b * p.input_h + iy) * p.input_w + ix) * p.input_c;
          for (int32_t group = 0; group < groups; ++group) {
            const int32_t oc0 = group * filters_per_group;
            const int32_t oc1 = oc0 + filters_per_group;
            const int32_t split = p.n_train < oc0 ? oc0 : (p.n_train > oc1 ? oc1 : p.n_train);
            for (int32_t icf0 = 0; icf0 < p.filter_c; icf0 += kGatherBlock) {
              const int32_t left = p.filter_c - icf0;
              const int32_t n = left < kGatherBlock ? left : kGatherBlock;
              int32_t acc[kGatherBlock] = {};
              ConvGatherBlock(p, p.train_filter, dy, ratio, b, iy, ix, icf0, n, oc0, split, acc);
              ConvGatherBlock(p, filter, dy, ratio, b, iy, ix, icf0, n, split, oc1, acc);
              const int32_t first = pixel + group * p.filter_c + icf0;
              for (int32_t j = 0; j < n; ++j) sink(first + j, acc[j]);
            }
          }
        }
      }
    }
  };
  return GatherRequantize(p.batches * p.input_h * p.input_w * p.input_c, gather, acc_scale, dx);
}

float conv2d_input_grad(const Conv2dParams& p, const int8_t* filter, const int16_t* dy,
                        const float* ratio, float acc_scale, int16_t* dx) {
  return conv2d_input_grad(p, filter, Stored(p, dy), ratio, acc_scale, dx);
}

void conv2d_bias_update(const Conv2dParams& p, const GradView& dy, float lr_dy,
                        const float* bias_coef, int32_t* bias) {
  UpdateBias(p.batches * p.output_h * p.output_w, dy, lr_dy, bias_coef, bias);
}

void conv2d_bias_update(const Conv2dParams& p, const int16_t* dy, float lr_dy,
                        const float* bias_coef, int32_t* bias) {
  conv2d_bias_update(p, Stored(p, dy), lr_dy, bias_coef, bias);
}

void conv2d_weight_update(const Conv2dParams& p, const int8_t* input, const GradView& dy,
                          float coef, const float* w_coef, Rounding rounding, uint32_t* prng,
                          int8_t* weights) {
  const int32_t groups = p.input_c / p.filter_c;
  const int32_t filters_per_group = p.output_c / groups;
  for (int32_t oc = 0; oc < p.n_train; ++oc) {
    const float coef_o = coef * w_coef[oc];
    const int32_t in_c0 = (oc / filters_per_group) * p.filter_c;
    for (int32_t fy = 0; fy < p.filter_h; ++fy) {
      for (int32_t fx = 0; fx < p.filter_w; ++fx) {
        for (int32_t ic = 0; ic < p.filter_c; ++ic) {
          int64_t gw = 0;
          for (int32_t b = 0; b < p.batches; ++b) {
            for (int32_t oy = 0; oy < p.output_h; ++oy) {
              const int32_t iy = oy * p.stride_h - p.pad_h + fy * p.dilation_h;
              if (iy < 0 || iy >= p.input_h) continue;
              for (int32_t ox = 0; ox < p.output_w; ++ox) {
                const int32_t ix = ox * p.stride_w - p.pad_w + fx * p.dilation_w;
                if (ix < 0 || ix >= p.input_w) continue;
                const int32_t x =
                    input[((b * p.input_h + iy) * p.input_w + ix) * p.input_c + in_c0 + ic] +
                    p.input_offset;
                gw += dy.At((b * p.output_h + oy) * p.output_w + ox, oc) * x;
              }
            }
          }
          UpdateWeight(&weights[((oc * p.filter_h + fy) * p.filter_w + fx) * p.filter_c + ic],
                       gw, coef_o, rounding, prng);
        }
      }
    }
  }
}

void conv2d_weight_update(const Conv2dParams& p, const int8_t* input, const int16_t* dy,
                          float coef, const float* w_coef, Rounding rounding, uint32_t* prng,
                          int8_t* weights) {
  conv2d_weight_update(p, input, Stored(p, dy), coef, w_coef, rounding, prng, weights);
}

}  // namespace mt::ref
