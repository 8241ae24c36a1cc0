// Cortex-M7 DEPTHWISE_CONV_2D: packed int16 taps, four channels per SXTB16 pair
// (depthwise_conv2d_m7.h).
#include "kernels/depthwise_conv2d_m7.h"

#include "kernels/dsp.h"
#include "kernels/fixed_point.h"
#include "kernels/requantize_m7.h"

namespace mt::m7 {

namespace {

constexpr int32_t kMaxTaps = 7 * 7;

// All channels of one output pixel whose taps read src[t] (an input pixel, or the zero-point
// row for a tap in the padding). kTaps == 0: the tap count is taps (run time).
template <int32_t kTaps, bool kBounded>
void Pixel(const DepthwiseConv2dParams& p, const int8_t* const* src, int32_t taps,
           const int8_t* filter, const int32_t* bias, const int32_t* table, int8_t* out) {
  const int32_t n = kTaps != 0 ? kTaps : taps;
  const int32_t groups = p.output_c / 4;
  const int32_t offset = p.output_offset;
  const int32_t lo = p.act_min;
  const int32_t hi = p.act_max;
  const int32_t* group = table;
  for (int32_t c = 0; c < 4 * groups; c += 4, group += 4 + 2 * n) {
    int32_t a0 = group[0], a1 = group[1], a2 = group[2], a3 = group[3];
    if (bias != nullptr) {
      a0 = WrappingAdd(a0, bias[c]);
      a1 = WrappingAdd(a1, bias[c + 1]);
      a2 = WrappingAdd(a2, bias[c + 2]);
      a3 = WrappingAdd(a3, bias[c + 3]);
    }
    const uint32_t* w = reinterpret_cast<const uint32_t*>(group + 4);
#pragma GCC unroll 49
    for (int32_t t = 0; t < n; ++t) {
      const uint32_t x = dsp::Load4(src[t] + c);
      const uint32_t even = dsp::ExtendEven(x);  // channels c, c + 2
      const uint32_t odd = dsp::ExtendOdd(x);    // channels c + 1, c + 3
      a0 = dsp::MulAddLow(even, w[2 * t], a0);
      a2 = dsp::MulAddHigh(even, w[2 * t], a2);
      a1 = dsp::MulAddLow(odd, w[2 * t + 1], a1);
      a3 = dsp::MulAddHigh(odd, w[2 * t + 1], a3);
    }
    out[c] = Requantize<kBounded>(a0, p.multiplier[c], p.shift[c], offset, lo, hi);
    out[c + 1] = Requantize<kBounded>(a1, p.multiplier[c + 1], p.shift[c + 1], offset, lo, hi);
    out[c + 2] = Requantize<kBounded>(a2, p.multiplier[c + 2], p.shift[c + 2], offset, lo, hi);
    out[c + 3] = Requantize<kBounded>(a3, p.multiplier[c + 3], p.shift[c + 3], offset, lo, hi);
  }
  for (int32_t c = 4 * groups; c < p.output_c; ++c) {
    int32_t acc = bias != nullptr ? bias[c] : 0;
    for (int32_t t = 0; t < n; ++t) {
      acc = WrappingAdd(acc, filter[t * p.output_c + c] * (src[t][c] + p.input_offset));
    }
    out[c] = Requantize<kBounded>(acc, p.multiplier[c], p.shift[c], offset, lo, hi);
  }
}

template <int32_t kTaps, bool kBounded>
void Run(const DepthwiseConv2dParams& p, const int8_t* input, const int8_t* filter,
         const int32_t* bias, int8_t* output, const int32_t* table, const int8_t* zero_row) {
  const int32_t taps = p.filter_h * p.filter_w;
  const int32_t row_bytes = p.input_w * p.input_c;
  const int8_t* src[kMaxTaps];
  int8_t* out = output;
  for (int32_t b = 0; b < p.batches; ++b) {
    const int8_t* image = input + b * p.input_h * row_bytes;
    for (int32_t oy = 0; oy < p.output_h; ++oy) {
      const int32_t in_y0 = oy * p.stride_h - p.pad_h;
      for (int32_t ox = 0; ox < p.output_w; ++ox, out += p.output_c) {
        const int32_t in_x0 = ox * p.stride_w - p.pad_w;
        int32_t t = 0;
        for (int32_t fy = 0; fy < p.filter_h; ++fy) {
          const int32_t iy = in_y0 + fy * p.dilation_h;
          const bool row_inside = iy >= 0 && iy < p.input_h;
          for (int32_t fx = 0; fx < p.filter_w; ++fx, ++t) {
            const int32_t ix = in_x0 + fx * p.dilation_w;
            src[t] = row_inside && ix >= 0 && ix < p.input_w
                         ? image + iy * row_bytes + ix * p.input_c
                         : zero_row;
          }
        }
        Pixel<kTaps, kBounded>(p, src, taps, filter, bias, table, out);
      }
    }
  }
}

// The tap loop unrolled for the common filter sizes.
template <bool kBounded>
void Dispatch(const DepthwiseConv2dParams& p, const int8_t* input, const int8_t* filter,
              const int32_t* bias, int8_t* output, const int32_t* table, const int8_t* zeros) {
  if (p.filter_h == 3 && p.filter_w == 3) {
    Run<9, kBounded>(p, input, filter, bias, output, table, zeros);
  } else if (p.filter_h == 5 && p.filter_w == 5) {
    Run<25, kBounded>(p, input, filter, bias, output, table, zeros);
  } else if (p.filter_h == 7 && p.filter_w == 7) {
    Run<49, kBounded>(p, input, filter, bias, output, table, zeros);
  } else {
    Run<0, kBounded>(p, input, filter, bias, output, table, zeros);
  }
}

}  // namespace

void depthwise_conv2d_s8(const DepthwiseConv2dParams& p, const int8_t* input,
                         const int8_t* filter, const int32_t* bias, int8_t* output,
                         const int32_t* table, bool bounded, int8_t* scratch,
                         int32_t scratch_bytes) {
  const int32_t taps = p.filter_h * p.filter_w;
  if (p.depth_multiplier != 1 || p.n_train != 0 || taps > kMaxTaps ||
      scratch_bytes < DepthwiseScratchBytes(p)) {
    ref::depthwise_conv2d_s8(p, input, filter, bias, output);
    return;
  }
  for (int32_t c = 0; c < p.input_c; ++c) scratch[c] = static_cast<int8_t>(-p.input_offset);
  if (bounded) {
    Dispatch<true>(p, input, filter, bias, output, table, scratch);
  } else {
    Dispatch<false>(p, input, filter, bias, output, table, scratch);
  }
}

}  // namespace mt::m7
