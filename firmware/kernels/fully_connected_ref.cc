// Reference FULLY_CONNECTED: the plain loop nest that optimized versions must equal.
#include "kernels/fully_connected.h"

#include "kernels/fixed_point.h"
#include "kernels/param_update.h"

namespace mt::ref {
namespace {

// Output units [o_begin, o_end) of one batch row, row o of the weights at rows + o * accum_depth
// (same layout in flash and in the SRAM copy of the trained prefix). The trained prefix and the
// frozen rest are two calls, so no loop asks which memory a row lives in.
void FullyConnectedRows(const FullyConnectedParams& p, const int8_t* x, const int8_t* rows,
                        const int32_t* bias, int8_t* out, int32_t o_begin, int32_t o_end) {
  for (int32_t o = o_begin; o < o_end; ++o) {
    const int8_t* w = rows + o * p.accum_depth;
    // Plain signed adds: the compiler refuses any unit whose sum of |w + filter_offset| *
    // max|x + input_offset| could leave int32 (ops/common.py check_accumulator, trained units at
    // |w| 128 + |filter_offset|), so no partial sum overflows.
    int32_t acc = 0;
    for (int32_t d = 0; d < p.accum_depth; ++d) {
      acc += (static_cast<int32_t>(w[d]) + p.filter_offset) *
             (static_cast<int32_t>(x[d]) + p.input_offset);
    }
    if (bias != nullptr) acc = WrappingAdd(acc, bias[o]);
    acc = MultiplyByQuantizedMultiplier(acc, p.multiplier[o], p.shift[o]);
    out[o] = static_cast<int8_t>(AddOffsetClamp(acc, p.output_offset, p.act_min, p.act_max));
  }
}

// Input elements [k0, k0 + n) of one batch row: adds to acc[j] the terms fold(g[o]) *
// w[o, k0 + j] of output units [o_begin, o_end), row o of the weights at rows + o * accum_depth.
// The same contract as FullyConnectedRows: one weight source per call.
void FullyConnectedGatherBlock(const FullyConnectedParams& p, const int8_t* rows,
                               const int16_t* g, const float* ratio, int32_t k0, int32_t n,
                               int32_t o_begin, int32_t o_end, int32_t* acc) {
  for (int32_t o = o_begin; o < o_end; ++o) {
    const int32_t d = FoldGrad(g[o], ratio, o);
    if (d == 0) continue;
    const int8_t* w = rows + o * p.accum_depth + k0;
    for (int32_t j = 0; j < n; ++j) acc[j] += d * w[j];
  }
}

}  // namespace

void fully_connected_s8(const FullyConnectedParams& p, const int8_t* input, const int8_t* filter,
                        const int32_t* bias, int8_t* output) {
  for (int32_t b = 0; b < p.batches; ++b) {
    const int8_t* x = input + b * p.accum_depth;
    int8_t* out = output + b * p.output_depth;
    FullyConnectedRows(p, x, p.train_filter, bias, out, 0, p.n_train);
    FullyConnectedRows(p, x, filter, bias, out, p.n_train, p.output_depth);
  }
}

float fully_connected_input_grad(const FullyConnectedParams& p, const int8_t* filter,
                                 const int16_t* dy, const float* ratio, float acc_scale,
                                 int16_t* dx) {
  // Gather form, kGatherBlock input elements at a time; the same integer sums as W^T dy.
  const auto gather = [&](const auto& sink) {
    for (int32_t b = 0; b < p.batches; ++b) {
      const int16_t* g = dy + b * p.output_depth;
      for (int32_t k0 = 0; k0 < p.accum_depth; k0 += kGatherBlock) {
        const int32_t left = p.accum_depth - k0;
        const int32_t n = left < kGatherBlock ? left : kGatherBlock;
        int32_t acc[kGatherBlock] = {};
        FullyConnectedGatherBlock(p, p.train_filter, g, ratio, k0, n, 0, p.n_train, acc);
        FullyConnectedGatherBlock(p, filter, g, ratio, k0, n, p.n_train, p.output_depth, acc);
        for (int32_t j = 0; j < n; ++j) sink(b * p.accum_depth + k0 + j, acc[j]);
      }
    }
  };
  return GatherRequantize(p.batches * p.accum_depth, gather, acc_scale, dx);
}

void fully_connected_bias_update(const FullyConnectedParams& p, const int16_t* dy, float lr_dy,
                                 const float* bias_coef, int32_t* bias) {
  UpdateBias(p.batches, p.output_depth, dy, lr_dy, bias_coef, bias);
}

void fully_connected_weight_update(const FullyConnectedParams& p, const int8_t* input,
                                   const int16_t* dy, float coef, const float* w_coef,
                                   Rounding rounding, uint32_t* prng, int8_t* weights) {
  for (int32_t o = 0; o < p.n_train; ++o) {
    const float coef_o = coef * w_coef[o];
    for (int32_t k = 0; k < p.accum_depth; ++k) {
      int64_t gw = 0;
      for (int32_t b = 0; b < p.batches; ++b) {
        gw += dy[b * p.output_depth + o] * (static_cast<int32_t>(input[b * p.accum_depth + k]) +
                                            p.input_offset);
      }
      UpdateWeight(&weights[o * p.accum_depth + k], gw, coef_o, rounding, prng);
    }
  }
}

}  // namespace mt::ref
