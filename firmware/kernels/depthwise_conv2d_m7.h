// DEPTHWISE_CONV_2D for the Cortex-M7 DSP extension: the same results as
// mt::ref::depthwise_conv2d_s8, bit for bit, for depth multiplier 1 and no trained channels.
//
// The host lays the filter out for the inner loop (python/mcutrain/ops/depthwise_conv2d.py,
// m7_table): per group of four channels, four int32 start values, input_offset * (sum of the
// channel's taps; the bias is added at run time, since it may train), then per tap two words
// of int16 weights, (w_c0, w_c2) and (w_c1, w_c3), the lanes SXTB16 unpacks an input word
// into. So a tap of four channels is one input load, two SXTB16 and four SMLABB/SMLATT, and the
// input offset costs nothing. A tap in the padding reads
// a row of input zero points instead (scratch), whose products cancel the folded offset exactly.
// Channels beyond the last whole group of four take a scalar loop over the plain filter.
// 3x3 and 5x5 filters get their tap loop unrolled (other sizes run the same code with a run-time
// tap count), and an output pixel of a 3x3 filter whose taps are all inside the image reads
// them by register-offset loads instead of the tap pointer table the padded ones use.
#pragma once

#include <cstdint>

#include "kernels/depthwise_conv2d.h"

namespace mt::m7 {

// Scratch bytes depthwise_conv2d_s8 needs: one row of input_c zero points, rounded up to 4.
constexpr int32_t DepthwiseScratchBytes(const DepthwiseConv2dParams& p) {
  return (p.input_c + 3) / 4 * 4;
}

// In/out as mt::ref::depthwise_conv2d_s8, plus table (flash, layout above) and bounded (as for
// mt::m7::conv2d_s8, requantize_m7.h). Scratch: DepthwiseScratchBytes(p) bytes; with less,
// depth multiplier != 1, trained channels or more than 49 taps it runs the reference kernel.
void depthwise_conv2d_s8(const DepthwiseConv2dParams& p, const int8_t* input,
                         const int8_t* filter, const int32_t* bias, int8_t* output,
                         const int32_t* table, bool bounded, int8_t* scratch,
                         int32_t scratch_bytes);

}  // namespace mt::m7
