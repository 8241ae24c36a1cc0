// Reference DEPTHWISE_CONV_2D: the plain loop nest that optimized versions must equal.
#include "kernels/depthwise_conv2d.h"

#include "kernels/fixed_point.h"
#include "kernels/param_update.h"

namespace mt::ref {

namespace {

// Output channels [oc_begin, oc_end) of one output pixel, tap (fy, fx) of channel oc at
// weights[(fy * filter_w + fx) * channel_stride + oc]: the flash filter (stride output_c) for
// the frozen channels, the SRAM copy [filter_h][filter_w][n_train] (stride n_train) for the
// trained prefix. Two calls, so no loop asks which memory a channel lives in.
void DepthwisePixel(const DepthwiseConv2dParams& p, const int8_t* input, const int8_t* weights,
                    int32_t channel_stride, const int32_t* bias, int8_t* output, int32_t b,
                    int32_t oy, int32_t ox, int32_t oc_begin, int32_t oc_end) {
  const int32_t in_y0 = oy * p.stride_h - p.pad_h;
  const int32_t in_x0 = ox * p.stride_w - p.pad_w;
  for (int32_t oc = oc_begin; oc < oc_end; ++oc) {
    const int32_t ic = oc / p.depth_multiplier;
    // Plain signed adds: the compiler refuses any channel whose sum of |w| * max|x + input_offset|
    // over its taps could leave int32 (ops/common.py check_accumulator, trained channels at
    // |w| 128), so no partial sum overflows.
    int32_t acc = 0;
    for (int32_t fy = 0; fy < p.filter_h; ++fy) {
      const int32_t iy = in_y0 + fy * p.dilation_h;
      for (int32_t fx = 0; fx < p.filter_w; ++fx) {
        const int32_t ix = in_x0 + fx * p.dilation_w;
        // Taps outside the image are skipped: implicit padding with the zero point.
        if (iy < 0 || iy >= p.input_h || ix < 0 || ix >= p.input_w) continue;
        const int32_t x = input[((b * p.input_h + iy) * p.input_w + ix) * p.input_c + ic];
        const int32_t w = weights[(fy * p.filter_w + fx) * channel_stride + oc];
        acc += w * (x + p.input_offset);
      }
    }
    if (bias != nullptr) acc = WrappingAdd(acc, bias[oc]);
    acc = MultiplyByQuantizedMultiplier(acc, p.multiplier[oc], p.shift[oc]);
    output[((b * p.output_h + oy) * p.output_w + ox) * p.output_c + oc] =
        static_cast<int8_t>(AddOffsetClamp(acc, p.output_offset, p.act_min, p.act_max));
  }
}

// One input element's gradient terms from output channels [oc_begin, oc_end) (all reading its
// input channel): the sum of fold(dy[b, oy, ox, oc]) * w over the taps (fy, fx) whose output
// (oy, ox) reads input (iy, ix), tap (fy, fx) of channel oc at
// weights[(fy * filter_w + fx) * channel_stride + oc]: the same contract as DepthwisePixel, one
// weight source per call.
int32_t DepthwiseGatherSum(const DepthwiseConv2dParams& p, const int8_t* weights,
                           int32_t channel_stride, const int16_t* dy, const float* ratio,
                           int32_t b, int32_t iy, int32_t ix, int32_t oc_begin, int32_t oc_end) {
  int32_t acc = 0;
  for (int32_t fy = 0; fy < p.filter_h; ++fy) {
    int32_t oy = 0;
    if (!TapOrigin(iy, fy, p.pad_h, p.dilation_h, p.stride_h, p.output_h, &oy)) continue;
    for (int32_t fx = 0; fx < p.filter_w; ++fx) {
      int32_t ox = 0;
      if (!TapOrigin(ix, fx, p.pad_w, p.dilation_w, p.stride_w, p.output_w, &ox)) continue;
      const int16_t* g = dy + ((b * p.output_h + oy) * p.output_w + ox) * p.output_c;
      const int8_t* w = weights + (fy * p.filter_w + fx) * channel_stride;
      for (int32_t oc = oc_begin; oc < oc_end; ++oc) acc += FoldGrad(g[oc], ratio, oc) * w[oc];
    }
  }
  return acc;
}

}  // namespace

void depthwise_conv2d_s8(const DepthwiseConv2dParams& p, const int8_t* input,
                         const int8_t* filter, const int32_t* bias, int8_t* output) {
  for (int32_t b = 0; b < p.batches; ++b) {
    for (int32_t oy = 0; oy < p.output_h; ++oy) {
      for (int32_t ox = 0; ox < p.output_w; ++ox) {
        DepthwisePixel(p, input, p.train_filter, p.n_train, bias, output, b, oy, ox, 0,
                       p.n_train);
        DepthwisePixel(p, input, filter, p.output_c, bias, output, b, oy, ox, p.n_train,
                       p.output_c);
      }
    }
  }
}

float depthwise_conv2d_input_grad(const DepthwiseConv2dParams& p, const int8_t* filter,
                                  const int16_t* dy, const float* ratio, float acc_scale,
                                  int16_t* dx) {
  // Gather form: each input element sums the terms of every output that read it (the scatter
  // form's terms, regrouped; integer adds, so the sum is the same). Its depth_multiplier output
  // channels split at n_train into the SRAM copy's and flash's, one weight source per call.
  const auto gather = [&](const auto& sink) {
    int32_t i = 0;
    for (int32_t b = 0; b < p.batches; ++b) {
      for (int32_t iy = 0; iy < p.input_h; ++iy) {
        for (int32_t ix = 0; ix < p.input_w; ++ix) {
          for (int32_t ic = 0; ic < p.input_c; ++ic, ++i) {
            const int32_t oc0 = ic * p.depth_multiplier;
            const int32_t oc1 = oc0 + p.depth_multiplier;
            const int32_t split = p.n_train < oc0 ? oc0 : (p.n_train > oc1 ? oc1 : p.n_train);
            sink(i, DepthwiseGatherSum(p, p.train_filter, p.n_train, dy, ratio, b, iy, ix, oc0,
                                       split) +
                        DepthwiseGatherSum(p, filter, p.output_c, dy, ratio, b, iy, ix, split,
                                           oc1));
          }
        }
      }
    }
  };
  return GatherRequantize(p.batches * p.input_h * p.input_w * p.input_c, gather, acc_scale, dx);
}

void depthwise_conv2d_bias_update(const DepthwiseConv2dParams& p, const int16_t* dy,
                                  float lr_dy, const float* bias_coef, int32_t* bias) {
  UpdateBias(p.batches * p.output_h * p.output_w, p.output_c, dy, lr_dy, bias_coef, bias);
}

void depthwise_conv2d_weight_update(const DepthwiseConv2dParams& p, const int8_t* input,
                                    const int16_t* dy, float coef, const float* w_coef,
                                    Rounding rounding, uint32_t* prng, int8_t* weights) {
  for (int32_t fy = 0; fy < p.filter_h; ++fy) {
    for (int32_t fx = 0; fx < p.filter_w; ++fx) {
      for (int32_t oc = 0; oc < p.n_train; ++oc) {
        const int32_t ic = oc / p.depth_multiplier;
        int64_t gw = 0;
        for (int32_t b = 0; b < p.batches; ++b) {
          for (int32_t oy = 0; oy < p.output_h; ++oy) {
            const int32_t iy = oy * p.stride_h - p.pad_h + fy * p.dilation_h;
            if (iy < 0 || iy >= p.input_h) continue;
            for (int32_t ox = 0; ox < p.output_w; ++ox) {
              const int32_t ix = ox * p.stride_w - p.pad_w + fx * p.dilation_w;
              if (ix < 0 || ix >= p.input_w) continue;
              const int32_t x =
                  input[((b * p.input_h + iy) * p.input_w + ix) * p.input_c + ic] + p.input_offset;
              gw += dy[((b * p.output_h + oy) * p.output_w + ox) * p.output_c + oc] * x;
            }
          }
        }
        const float coef_o = coef * w_coef[oc];
        UpdateWeight(&weights[(fy * p.filter_w + fx) * p.n_train + oc], gw, coef_o, rounding,
                     prng);
      }
    }
  }
}

}  // namespace mt::ref
