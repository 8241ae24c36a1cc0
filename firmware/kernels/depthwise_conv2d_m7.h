// DEPTHWISE_CONV_2D for the Cortex-M7 DSP extension: the same results as
// mt::ref::depthwise_conv2d_s8, bit for bit, for depth multiplier 1 (DepthwiseServes).
//
// The host lays the filter out for the inner loop (python/mcutrain/ops/depthwise_conv2d.py,
// m7_table): per group of four channels, four int32 start values, input_offset * (sum of the
// channel's taps) plus the bias unless it trains (a training bias is added at run time), then
// per tap two words of int16 weights, (w_c0, w_c2) and (w_c1, w_c3), the lanes SXTB16 unpacks
// an input word into. So a tap of four channels is one input load, two SXTB16 and four
// SMLABB/SMLATT, and the input offset costs nothing. A tap in the padding reads a row of input
// zero points instead (scratch), whose products cancel the folded offset exactly. For a frozen
// layer on the short form with its bias in the table, the start values and weights are doubled
// (m7_doubles_table), so each output's requantization skips the doubling it would do.
// Channels beyond the last whole group of four take a scalar loop over the plain filter.
// 3x3 and 5x5 filters get their tap loop unrolled (other sizes run the same code with a run-time
// tap count), and an output pixel of a 3x3 filter whose taps are all inside the image reads
// them by register-offset loads instead of the tap pointer table the padded ones use.
// A 3x3 layer at stride 1 with long enough rows (DepthwiseRing3x3) runs on its input rows staged
// as int16 in scratch instead, two taps per SMLAD (depthwise_conv2d_m7.cc); it reads the plain
// filter, not the table.
#pragma once

#include <cstdint>

#include "kernels/depthwise_conv2d.h"

namespace mt::m7 {

// A 3x3 layer at stride and dilation 1 with at most one column of padding either side, whole
// groups of four channels and rows of at least kDepthwiseRingMinWidth outputs runs on staged
// rows (the ring, depthwise_conv2d_m7.cc). Each output row of each channel costs ~70
// instructions of set-up there, so shorter rows run faster on the tap loop (MobileNetV2's 8x8
// layers: 4.3 instructions per MAC on the ring, 3.8 on the taps; its 16x16 ones: 3.3 and 3.8).
constexpr int32_t kDepthwiseRingMinWidth = 16;
constexpr bool DepthwiseRing3x3(const DepthwiseConv2dParams& p) {
  return p.filter_h == 3 && p.filter_w == 3 && p.stride_h == 1 && p.stride_w == 1 &&
         p.dilation_h == 1 && p.dilation_w == 1 && p.pad_w >= 0 && p.pad_w <= 1 &&
         p.output_w + 2 - p.pad_w <= p.input_w + 1 && (p.output_c & 3) == 0 &&
         p.output_w >= kDepthwiseRingMinWidth;
}

// The ring's columns per channel (the input's and a zero column either side), and its bytes:
// four channels of them, four int16 lanes each.
constexpr int32_t DepthwiseRingColumns(const DepthwiseConv2dParams& p) { return p.input_w + 2; }
constexpr int32_t DepthwiseRingBytes(const DepthwiseConv2dParams& p) {
  return 4 * DepthwiseRingColumns(p) * 4 * 2;
}

// What depthwise_conv2d_s8 computes (else it runs the reference): depth multiplier 1, at most
// 7x7 taps, and a trained prefix that ends within the whole groups of four channels.
constexpr bool DepthwiseServes(const DepthwiseConv2dParams& p) {
  return p.depth_multiplier == 1 && p.filter_h * p.filter_w <= 7 * 7 &&
         (p.n_train + 3) / 4 * 4 <= (p.output_c & ~3);
}

// Scratch bytes depthwise_conv2d_s8 needs (python/mcutrain/ops/depthwise_conv2d.py mirrors
// them): one row of input_c zero points, rounded up to 4. A DepthwiseRing3x3 layer given
// DepthwiseRingScratchBytes (4-byte aligned; the host plans it where the arena has the room)
// runs on the ring: the ring and the four channels' taps in three row orders (five words each).
constexpr int32_t DepthwiseScratchBytes(const DepthwiseConv2dParams& p) {
  return (p.input_c + 3) / 4 * 4;
}
constexpr int32_t kDepthwiseRingTapWords = 5;  // one channel's taps in one row order
constexpr int32_t DepthwiseRingScratchBytes(const DepthwiseConv2dParams& p) {
  return DepthwiseRingBytes(p) + 4 * 3 * kDepthwiseRingTapWords * 4;
}

// In/out as mt::ref::depthwise_conv2d_s8, plus table (flash, layout above), requant (as for
// mt::m7::conv2d_s8, requantize_m7.h) and bias_in_table: the host folded the (flash) bias into
// the table's start values, so only the channels past the last group of four add `bias`.
// Scratch: DepthwiseScratchBytes(p) bytes (or DepthwiseRingScratchBytes(p), above); with less,
// or what DepthwiseServes declines, it runs the reference kernel. Trained channels read
// p.train_filter (the table's rows for them are never read).
void depthwise_conv2d_s8(const DepthwiseConv2dParams& p, const int8_t* input,
                         const int8_t* filter, const int32_t* bias, int8_t* output,
                         const int32_t* table, const int32_t* requant, bool bias_in_table,
                         int8_t* scratch,
                         int32_t scratch_bytes);

// ---- backward (contracts as mt::ref's, depthwise_conv2d.h) ----
//
// The input gradient runs a block of four channels at a time (32 given the most scratch,
// below). Each output-gradient value of those channels is folded (FoldGrad) once per pass into
// a ring of the output rows the current input row reads, as int16 lane pairs, and the block's
// taps are packed the same way; a tap is then two word loads per operand and four
// SMLABB/SMLATT, where the reference folds every term again and finds every tap's origin per
// channel: the taps that read an input pixel come from a table of output columns per input
// column, built once, and the filter rows that read an input row. The ring makes the scratch a
// few rows of the output gradient, not the whole of it. Sums are the reference's integer sums
// (any order is exact), so the result is bit-identical.

// Output rows one input row's taps read: the ring's depth.
constexpr int32_t DepthwiseGradRingRows(const DepthwiseConv2dParams& p) {
  return (p.filter_h - 1) * p.dilation_h / p.stride_h + 1;
}

// Scratch bytes depthwise_conv2d_input_grad needs: the ring (ring rows x output_w x 4 int16),
// the block's packed taps (filter_h x filter_w x 4 int16), then the output column each tap of
// each input column reads (input_w x filter_w int16), rounded up to 4 bytes.
constexpr int32_t DepthwiseInputGradScratchBytes(const DepthwiseConv2dParams& p) {
  return (DepthwiseGradRingRows(p) * p.output_w + p.filter_h * p.filter_w) * 4 * 2 +
         (p.input_w * p.filter_w + 1) / 2 * 4;
}

// With this much the input gradient is gathered once, not twice (GatherRequantizeStaged): the
// above, then the high halves of the int32 sums, one int16 per input value.
constexpr int32_t DepthwiseStagedInputGradScratchBytes(const DepthwiseConv2dParams& p) {
  return DepthwiseInputGradScratchBytes(p) +
         p.batches * p.input_h * p.input_w * p.input_c * 2;
}

// Along the width at stride and dilation 1, more room still lets the tap loop run without a
// column table: after the staged scratch, a ring whose rows have filter_w - 1 zero columns on
// either side.
constexpr bool DepthwisePaddedGrad(const DepthwiseConv2dParams& p) {
  return p.stride_w == 1 && p.dilation_w == 1;
}
constexpr int32_t DepthwisePaddedInputGradScratchBytes(const DepthwiseConv2dParams& p) {
  return DepthwiseStagedInputGradScratchBytes(p) +
         DepthwiseGradRingRows(p) * (p.output_w + 2 * (p.filter_w - 1)) * 4 * 2;
}

// Channels per block of the wide form below.
constexpr int32_t kDepthwiseWideLanes = 32;

// With more room again (stride and dilation 1 along the width), the blocks are
// kDepthwiseWideLanes channels wide, not four: after the staged scratch, a zero-margined ring
// and packed taps that wide. An input pixel's loop over the filter rows that read it is then
// paid once per eight groups of four channels, where on tiny late-stage maps (4x4, 8x8) that
// loop and the per-block set-up cost several times the multiplies themselves.
constexpr int32_t DepthwiseWideInputGradScratchBytes(const DepthwiseConv2dParams& p) {
  return DepthwiseStagedInputGradScratchBytes(p) +
         (DepthwiseGradRingRows(p) * (p.output_w + 2 * (p.filter_w - 1)) +
          p.filter_h * p.filter_w) * kDepthwiseWideLanes * 2;
}

// As mt::ref::depthwise_conv2d_input_grad, for depth multiplier 1 (trained channels included)
// and filters up to 7 rows; with less scratch, or another shape, it runs the reference kernel.
float depthwise_conv2d_input_grad(const DepthwiseConv2dParams& p, const int8_t* filter,
                                  const int16_t* dy, const float* ratio, float acc_scale,
                                  int16_t* dx, int8_t* scratch, int32_t scratch_bytes);

// The bias update by UpdateBiasRows (bias_update_m7.h), the weight update by the reference
// kernel; no scratch (the step's is passed to every backward kernel of a variant).
void depthwise_conv2d_bias_update(const DepthwiseConv2dParams& p, const int16_t* dy,
                                  float lr_dy, const float* bias_coef, int32_t* bias,
                                  int8_t* scratch, int32_t scratch_bytes);
void depthwise_conv2d_weight_update(const DepthwiseConv2dParams& p, const int8_t* input,
                                    const int16_t* dy, float coef, const float* w_coef,
                                    Rounding rounding, uint32_t* prng, int8_t* weights,
                                    int8_t* scratch, int32_t scratch_bytes);

}  // namespace mt::m7
