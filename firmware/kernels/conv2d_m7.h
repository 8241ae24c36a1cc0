// CONV_2D for the Cortex-M7 DSP extension: the same results as mt::ref::conv2d_s8, bit for bit.
//
// The method is im2col into int16 plus SMLAD. For each block of four output pixels, the
// filter_h * filter_w * filter_c input values a filter row reads (its receptive field, OHWI order)
// are written once into scratch as int16 with the input offset already added; padded taps are
// written as 0, which is exactly what they contribute to the reference. Every output channel
// then takes a dot product of its int8 weight row against the four columns, two MACs per
// SMLAD, so each weight word is loaded and expanded once for four pixels.
// The column of each group of four values is stored in the order SXTB16 unpacks a weight word,
// (k0, k2, k1, k3), so a weight word needs no reordering.
//
// Serves plain (groups == 1) convolution of any shape, stride, dilation and padding, with the
// trained-channel prefix read from p.train_filter as in the reference (two channel ranges).
#pragma once

#include <cstdint>

#include "kernels/conv2d.h"

namespace mt::m7 {

// Scratch bytes conv2d_s8 needs for p (python/mcutrain/ops/conv2d.py mirrors it): four int16
// columns of filter_h * filter_w * filter_c values, each rounded up to a multiple of four, and
// when filter_c is not a multiple of four a stage of one more such column.
constexpr int32_t Conv2dScratchBytes(const Conv2dParams& p) {
  const int32_t depth = p.filter_h * p.filter_w * p.filter_c;
  const int32_t columns = (p.filter_c & 3) == 0 ? 4 : 5;
  return columns * ((depth + 3) / 4 * 4) * static_cast<int32_t>(sizeof(int16_t));
}

// A pointwise layer of depth 8 (MobileNetV2's expansions after its narrowest blocks): with
// room for sixteen pixels' columns it keeps each output channel's eight weights in registers
// and runs sixteen pixels per channel, where the four-pixel blocks pay a channel's set-up,
// bias and stores for every four (twice the instructions of its multiplies).
constexpr int32_t kConvNarrowPixels = 16;
// (More than 16 outputs: the pass doubles its columns, which pays only then; conv2d_s8.)
constexpr bool Conv2dNarrow(const Conv2dParams& p) {
  return p.filter_h == 1 && p.filter_w == 1 && p.pad_h == 0 && p.pad_w == 0 &&
         p.filter_c == 8 && p.output_c > 16;
}
constexpr int32_t Conv2dNarrowScratchBytes(const Conv2dParams& p) {
  return kConvNarrowPixels * p.filter_c * static_cast<int32_t>(sizeof(int16_t));
}

// In/out as mt::ref::conv2d_s8. requant: the host's per-channel short-form table
// (requantize_m7.h) where every frozen channel meets its preconditions, else nullptr;
// bias_in_table: its rows lead with the channel's bias (a frozen layer's: ops/conv2d.py
// m7_table), four words a channel, which the channel loop reads with the constants.
// Scratch: Conv2dScratchBytes(p) bytes, 4-byte aligned; with less (or groups > 1) it runs the
// reference kernel instead.
void conv2d_s8(const Conv2dParams& p, const int8_t* input, const int8_t* filter,
               const int32_t* bias, int8_t* output, const int32_t* requant, bool bias_in_table,
               int8_t* scratch, int32_t scratch_bytes);

// ---- backward (contracts as mt::ref's, conv2d.h) ----
//
// Both kernels pair values along the dimension they sum over, so one SMLAD does two MACs
// without a transposed copy of anything: the two weight rows oc and oc + 1 (input gradient,
// summed over output channels) or two input pixels (weight gradient, summed over pixels) are
// loaded as words of four input channels and regrouped by halves (PKHBT/PKHTB) into bytes
// (a0 a1 b0 b1) and (a2 a3 b2 b3), which SXTB16 turns into the pairs (a_c, b_c) of each channel
// c; the other operand is an int16 pair of folded output gradients. Sums are the reference's
// integer sums in another order, exact, so the results are bit-identical.

// Taps the input-gradient kernel folds one output-gradient row for (filter_h * filter_w).
constexpr int32_t kConvGradMaxTaps = 7 * 7;

// Values of one folded output-gradient row: each range of output channels, trained and frozen,
// rounded up to even, for any n_train (so the host sizes it without knowing the scheme).
constexpr int32_t Conv2dGradRowValues(const Conv2dParams& p) { return (p.output_c + 2) / 2 * 2; }

// Scratch bytes of the backward kernels (python/mcutrain/ops/conv2d.py mirrors them; a step
// plans only those of the kernels it runs). The input gradient: its folded output-gradient
// rows, one per tap.
constexpr int32_t Conv2dInputGradScratchBytes(const Conv2dParams& p) {
  return p.filter_h * p.filter_w * Conv2dGradRowValues(p) * 2;
}

// The high halves of the int32 sums the input gradient stages (GatherRequantizeStaged) when
// the scratch has room for them: one int16 per input value.
constexpr int32_t Conv2dStagedHighBytes(const Conv2dParams& p) {
  return p.batches * p.input_h * p.input_w * p.input_c * 2;
}

// With this much the input gradient is gathered once, not twice: the rows, then the high halves.
constexpr int32_t Conv2dStagedInputGradScratchBytes(const Conv2dParams& p) {
  return Conv2dInputGradScratchBytes(p) + Conv2dStagedHighBytes(p);
}

// Pixels (positions) per block of the pointwise and 1-D input-gradient paths below.
constexpr int32_t kConvGradPixels = 4;

// A pointwise layer (1x1, stride 1, no padding): its input gradient can run four pixels at a
// time, given four folded rows interleaved and the staged sums' high halves.
constexpr bool Conv2dPointwiseGrad(const Conv2dParams& p) {
  return p.filter_h == 1 && p.filter_w == 1 && p.stride_h == 1 && p.stride_w == 1 &&
         p.pad_h == 0 && p.pad_w == 0;
}
constexpr int32_t Conv2dPointwiseInputGradRowsBytes(const Conv2dParams& p) {
  return kConvGradPixels * Conv2dGradRowValues(p) * 2;
}
constexpr int32_t Conv2dPointwiseInputGradScratchBytes(const Conv2dParams& p) {
  return Conv2dPointwiseInputGradRowsBytes(p) + Conv2dStagedHighBytes(p);
}

// A 1-D layer (one column or one row, stride 1, no dilation) of more than one tap: its input
// gradient can run four positions at a time from a sliding window of the folded output
// gradient (one line of Conv2dLineLength positions per output channel pair), plus the staged
// sums' high halves.
constexpr bool Conv2dLineGrad(const Conv2dParams& p) {
  const bool down = p.input_w == 1 && p.output_w == 1 && p.filter_w == 1 && p.stride_h == 1 &&
                    p.dilation_h == 1;
  const bool across = p.input_h == 1 && p.output_h == 1 && p.filter_h == 1 &&
                      p.stride_w == 1 && p.dilation_w == 1;
  return (down || across) && p.filter_h * p.filter_w > 1;
}
// A block's positions plus the taps - 1 before them that its last tap reads.
constexpr int32_t Conv2dLineLength(const Conv2dParams& p) {
  return kConvGradPixels + p.filter_h * p.filter_w - 1;
}
constexpr int32_t Conv2dLineInputGradRowsBytes(const Conv2dParams& p) {
  return ((p.n_train + 1) / 2 + (p.output_c - p.n_train + 1) / 2) * Conv2dLineLength(p) * 4;
}
constexpr int32_t Conv2dLineInputGradScratchBytes(const Conv2dParams& p) {
  return Conv2dLineInputGradRowsBytes(p) + Conv2dStagedHighBytes(p);
}

// The weight update: one trained channel's output-gradient column over all pixels plus one 0,
// rounded up to even.
constexpr int32_t Conv2dWeightUpdateScratchBytes(const Conv2dParams& p) {
  return (p.batches * p.output_h * p.output_w + 2) / 2 * 2 * 2;
}

// A single-image pointwise or 1-D layer: with room for its input transposed as well (int16,
// input offset added, one row of Conv2dTransposedRowValues per input channel), each tap's
// weight gradient is a run of the dy column against a run of each channel's row, four channels
// per dy load.
// Positions capped so that a channel's sum, |dy| <= 8191 times |x + offset| <= 255 per
// position, fits int32.
constexpr int32_t kTransposedMaxPositions = 1024;
constexpr bool Conv2dTransposedWeightGrad(const Conv2dParams& p) {
  return p.batches == 1 && (Conv2dPointwiseGrad(p) || Conv2dLineGrad(p)) &&
         p.output_h * p.output_w <= kTransposedMaxPositions;
}
constexpr int32_t Conv2dTransposedRowValues(const Conv2dParams& p) {
  return (p.input_h * p.input_w + 2) / 2 * 2;  // and the pair read one past the last
}
constexpr int32_t Conv2dTransposedWeightUpdateScratchBytes(const Conv2dParams& p) {
  return Conv2dWeightUpdateScratchBytes(p) + p.input_c * Conv2dTransposedRowValues(p) * 2;
}

// As mt::ref::conv2d_input_grad, for plain (groups == 1) convolution up to kConvGradMaxTaps
// taps, trained channels included; with less scratch or another shape the reference runs.
float conv2d_input_grad(const Conv2dParams& p, const int8_t* filter, const GradView& dy,
                        const float* ratio, float acc_scale, int16_t* dx, int8_t* scratch,
                        int32_t scratch_bytes);
float conv2d_input_grad(const Conv2dParams& p, const int8_t* filter, const int16_t* dy,
                        const float* ratio, float acc_scale, int16_t* dx, int8_t* scratch,
                        int32_t scratch_bytes);

// As mt::ref::conv2d_bias_update: a stored gradient by UpdateBiasRows (bias_update_m7.h), a
// view (mask or broadcast) by the reference. No scratch (the step's is passed to every backward
// kernel of a variant).
void conv2d_bias_update(const Conv2dParams& p, const GradView& dy, float lr_dy,
                        const float* bias_coef, int32_t* bias, int8_t* scratch,
                        int32_t scratch_bytes);
void conv2d_bias_update(const Conv2dParams& p, const int16_t* dy, float lr_dy,
                        const float* bias_coef, int32_t* bias, int8_t* scratch,
                        int32_t scratch_bytes);

// As mt::ref::conv2d_weight_update, for plain (groups == 1) convolution of any shape; with
// less scratch it runs the reference. Each tap's output positions are walked as lines (output
// rows, or the column of a 1-D output) of consecutive positions, paired per SMLAD; given
// Conv2dTransposedWeightUpdateScratchBytes, a Conv2dTransposedWeightGrad layer reads its
// transposed input instead.
void conv2d_weight_update(const Conv2dParams& p, const int8_t* input, const GradView& dy,
                          float coef, const float* w_coef, Rounding rounding, uint32_t* prng,
                          int8_t* weights, int8_t* scratch, int32_t scratch_bytes);
void conv2d_weight_update(const Conv2dParams& p, const int8_t* input, const int16_t* dy,
                          float coef, const float* w_coef, Rounding rounding, uint32_t* prng,
                          int8_t* weights, int8_t* scratch, int32_t scratch_bytes);

}  // namespace mt::m7
