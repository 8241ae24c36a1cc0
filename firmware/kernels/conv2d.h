// CONV_2D, int8 activations and weights, int32 bias: TFLite's per-channel quantized convolution.
//
// Layouts (row-major, C innermost):
//   input  [batches, input_h, input_w, input_c]             int8, NHWC
//   filter [output_c, filter_h, filter_w, filter_c]          int8, OHWI, symmetric (zero point 0)
//   bias   [output_c]                                        int32, or nullptr when absent
//   output [batches, output_h, output_w, output_c]          int8, NHWC
// Grouped convolution: groups = input_c / filter_c; output channel o reads input channels
// [g * filter_c, (g + 1) * filter_c) with g = o / (output_c / groups). Plain conv has groups 1.
//
// Every field is computed once on the host (python/mcutrain/ops/conv2d.py) and emitted as a
// `static const` object in flash; the kernels do no validation ("prepare once, run blind").
#pragma once

#include <cstdint>

#include "kernels/train_math.h"

namespace mt {

struct Conv2dParams {
  int32_t batches;
  int32_t input_h, input_w, input_c;
  int32_t filter_h, filter_w, filter_c;  // filter_c = input channels seen by one filter
  int32_t output_h, output_w, output_c;
  int32_t stride_h, stride_w;
  int32_t dilation_h, dilation_w;
  int32_t pad_h, pad_w;        // leading (top/left) zero padding; taps outside the image skip
  int32_t input_offset;        // -input_zero_point, in [-127, 128]
  int32_t output_offset;       // output_zero_point, in [-128, 127]
  const int32_t* multiplier;   // [output_c] Q31 significands (a per-tensor scale is repeated)
  const int32_t* shift;        // [output_c] power-of-two exponents, in [-31, 30]
  int32_t act_min, act_max;    // fused activation clamp, -128 <= act_min <= act_max <= 127
  // On-device training: output channels o < n_train read their weights from train_filter, the
  // SRAM copy of the first n_train rows of the OHWI filter (same row layout); the others read
  // the `filter` argument (flash). n_train == 0 (the default) is plain inference. Every kernel
  // that reads weights (conv2d_s8, conv2d_input_grad) works on the channel ranges [0, n_train)
  // and [n_train, output_c) separately, one weight source per range: an optimized kernel may do
  // the same and never asks per channel which memory it reads.
  const int8_t* train_filter = nullptr;
  int32_t n_train = 0;
};

namespace ref {

// Reference loop nest, bit-exact with tflite::reference_integer_ops::ConvPerChannel.
// In: input, filter, bias (may be nullptr). Out: output (must not alias input).
// Scratch: none. Accumulates in int32: filter_h * filter_w * filter_c must stay below 2^16.
void conv2d_s8(const Conv2dParams& p, const int8_t* input, const int8_t* filter,
               const int32_t* bias, int8_t* output);

// ---- backward (docs/training.md, "Rules per operator"); run in this order in one step ----

// Input gradient, requantized: the transposed convolution of the folded output gradient,
// acc[b, iy, ix, ic] = sum of fold(dy[b, oy, ox, oc]) * w[oc, fy, fx, ic - in_c0(oc)] over every
// (oy, ox, oc, fy, fx) whose tap reads (iy, ix) (taps outside the input are dropped), then
// dx = grad_requantize(acc, acc_scale); returns dx's scale (0 when every sum is 0).
// In:  filter   [output_c, filter_h, filter_w, filter_c] int8 (flash) for the channels
//               [p.n_train, output_c); [0, p.n_train) read p.train_filter, which must still hold
//               this step's old weights. Each sum adds the two ranges' terms (integer adds, so
//               splitting the channels does not change it)
//      dy       [batches, output_h, output_w, output_c] int16 output gradient (|dy| <= 8191)
//      ratio    [output_c] float32 sW[c] / max(sW), or nullptr for per-tensor weights; each dy
//               term is folded where it is used, round_half_away((float)dy * ratio[oc])
//      acc_scale dy_scale * max(sW)
// Out: dx [batches, input_h, input_w, input_c] int16 (overwritten; may not alias dy or filter).
// Scratch: none, and no int32 tensor: two passes (mt::GatherRequantize) compute every sum twice,
// the first for max |acc|, the second to write dx, so the cost is twice the input-gradient MACs
// of one transposed convolution. Bit-identical to storing the sums and mt::GradRequantize.
// Stack: one block of kGatherBlock int32 sums (64 B); each folded dy term is computed once
// per block of input channels.
// Depth: each sum has at most output_c / groups * filter_h * filter_w terms (the compiler
// checks 8191 * 127 * depth < 2^31, which bounds every partial sum too).
float conv2d_input_grad(const Conv2dParams& p, const int8_t* filter, const int16_t* dy,
                        const float* ratio, float acc_scale, int16_t* dx);
// The same reading dy through a view (train_math.h GradView): dy element (pixel, oc) =
// dy.At(pixel, oc), e.g. a MEAN's C-value output gradient at every pixel under this
// operator's activation mask, so the broadcast tensor is never stored. dy.channels = output_c.
// The stored form above is this with pixel_stride output_c and no mask; the sums are the same
// integer sums, element for element.
float conv2d_input_grad(const Conv2dParams& p, const int8_t* filter, const GradView& dy,
                        const float* ratio, float acc_scale, int16_t* dx);

// Bias update: GB[o] = sum of dy[..., o] (int64), bias[o] -= round_half_away((lr_dy * GB[o]) *
// bias_coef[o]), saturated to int32. lr_dy = lr * dy_scale (float32).
// In: dy as above (unfolded), bias_coef [output_c] float32. In/out: bias [output_c] int32 (SRAM).
void conv2d_bias_update(const Conv2dParams& p, const int16_t* dy, float lr_dy,
                        const float* bias_coef, int32_t* bias);
void conv2d_bias_update(const Conv2dParams& p, const GradView& dy, float lr_dy,
                        const float* bias_coef, int32_t* bias);

// Weight update of output channels o < p.n_train, in OHWI memory order (one PRNG draw per
// weight when stochastic): GW = sum over output positions of dy[.., o] * (x - zx) (int64,
// padded taps contribute 0), w = clamp(w - R((float)GW * (coef * w_coef[o])), -127, 127).
// coef = (lr * dy_scale) * input_scale (float32, per step).
// In:  input   [batches, input_h, input_w, input_c] int8, the forward input (must be saved)
//      dy      as above (unfolded), w_coef [p.n_train] float32
// In/out: weights [p.n_train, filter_h, filter_w, filter_c] int8 (the SRAM copy, i.e. the
//      memory p.train_filter points to), prng (xorshift32 state, stochastic rounding only).
void conv2d_weight_update(const Conv2dParams& p, const int8_t* input, const int16_t* dy,
                          float coef, const float* w_coef, Rounding rounding, uint32_t* prng,
                          int8_t* weights);
void conv2d_weight_update(const Conv2dParams& p, const int8_t* input, const GradView& dy,
                          float coef, const float* w_coef, Rounding rounding, uint32_t* prng,
                          int8_t* weights);

}  // namespace ref
}  // namespace mt
