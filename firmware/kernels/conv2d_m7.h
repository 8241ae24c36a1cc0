// CONV_2D for the Cortex-M7 DSP extension: the same results as mt::ref::conv2d_s8, bit for bit.
//
// The method is im2col into int16 plus SMLAD. For each pair of output pixels, the
// filter_h * filter_w * filter_c input values a filter row reads (its receptive field, OHWI order)
// are written once into scratch as int16 with the input offset already added; padded taps are
// written as 0, which is exactly what they contribute to the reference. Every output channel
// pair then takes a dot product of its two int8 weight rows against the two columns, with two
// MACs per SMLAD and a 2x2 register block (2 channels x 2 pixels), so each weight word is
// expanded once for two pixels and each column word is loaded once for two channels.
// The column of each group of four values is stored in the order SXTB16 unpacks a weight word,
// (k0, k2, k1, k3), so a weight word needs no reordering.
//
// Serves plain (groups == 1) convolution of any shape, stride, dilation and padding, with the
// trained-channel prefix read from p.train_filter as in the reference (two channel ranges).
#pragma once

#include <cstdint>

#include "kernels/conv2d.h"

namespace mt::m7 {

// Scratch bytes conv2d_s8 needs for p (python/mcutrain/ops/conv2d.py mirrors it): two int16
// columns of filter_h * filter_w * filter_c values, each rounded up to a multiple of four.
constexpr int32_t Conv2dScratchBytes(const Conv2dParams& p) {
  const int32_t depth = p.filter_h * p.filter_w * p.filter_c;
  return 2 * ((depth + 3) / 4 * 4) * static_cast<int32_t>(sizeof(int16_t));
}

// In/out as mt::ref::conv2d_s8. bounded: the host found every frozen channel's shift negative
// and |accumulator| < 2^29 (requantize_m7.h), so their requantization takes the short form.
// Scratch: Conv2dScratchBytes(p) bytes, 4-byte aligned; with less (or groups > 1) it runs the
// reference kernel instead.
void conv2d_s8(const Conv2dParams& p, const int8_t* input, const int8_t* filter,
               const int32_t* bias, int8_t* output, bool bounded, int8_t* scratch,
               int32_t scratch_bytes);

}  // namespace mt::m7
