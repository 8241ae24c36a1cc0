// DEPTHWISE_CONV_2D, int8 activations and weights, int32 bias: TFLite's per-channel quantized
// depthwise convolution.
//
// Layouts (row-major, C innermost):
//   input  [batches, input_h, input_w, input_c]                   int8, NHWC
//   filter [1, filter_h, filter_w, output_c]                      int8, 1HWC, zero point 0
//   bias   [output_c]                                             int32, or nullptr when absent
//   output [batches, output_h, output_w, output_c]                int8, NHWC
// output_c = input_c * depth_multiplier; output channel o = i * depth_multiplier + m reads only
// input channel i.
//
// Every field is computed on the host (python/mcutrain/ops/depthwise_conv2d.py) and emitted as a
// `static const` object in flash; the kernels do no validation.
#pragma once

#include <cstdint>

#include "kernels/train_math.h"

namespace mt {

struct DepthwiseConv2dParams {
  int32_t batches;
  int32_t input_h, input_w, input_c;
  int32_t filter_h, filter_w;
  int32_t output_h, output_w, output_c;
  int32_t depth_multiplier;    // output_c / input_c
  int32_t stride_h, stride_w;
  int32_t dilation_h, dilation_w;
  int32_t pad_h, pad_w;        // leading (top/left) zero padding; taps outside the image skip
  int32_t input_offset;        // -input_zero_point, in [-127, 128]
  int32_t output_offset;       // output_zero_point, in [-128, 127]
  const int32_t* multiplier;   // [output_c] Q31 significands (a per-tensor scale is repeated)
  const int32_t* shift;        // [output_c] power-of-two exponents, in [-31, 30]
  int32_t act_min, act_max;    // fused activation clamp, -128 <= act_min <= act_max <= 127
  // On-device training: output channels o < n_train read their weights from train_filter, the
  // SRAM copy laid out [filter_h][filter_w][n_train] (the 1HWC filter restricted to the trained
  // channels); the others read the `filter` argument (flash). n_train == 0: plain inference.
  // Every kernel that reads weights (depthwise_conv2d_s8, depthwise_conv2d_input_grad) works on
  // the channel ranges [0, n_train) (stride n_train) and [n_train, output_c) (stride output_c)
  // separately, one weight source per range, never a per-channel choice of memory.
  const int8_t* train_filter = nullptr;
  int32_t n_train = 0;
};

namespace ref {

// Reference loop nest, bit-exact with tflite::reference_integer_ops::DepthwiseConvPerChannel.
// In: input, filter, bias (may be nullptr). Out: output (must not alias input). Scratch: none.
void depthwise_conv2d_s8(const DepthwiseConv2dParams& p, const int8_t* input,
                         const int8_t* filter, const int32_t* bias, int8_t* output);

// ---- backward (docs/training.md, "Rules per operator"); run in this order in one step ----

// Input gradient, requantized: acc[b, iy, ix, ic] = sum over m < depth_multiplier and the taps
// (oy, ox, fy, fx) reading (iy, ix) of fold(dy[b, oy, ox, oc]) * w[fy, fx, oc] with
// oc = ic * depth_multiplier + m (taps outside the input are dropped), then
// dx = grad_requantize(acc, acc_scale); returns dx's scale (0 when every sum is 0).
// In:  filter [1, filter_h, filter_w, output_c] int8 (flash) for the channels
//             [p.n_train, output_c); [0, p.n_train) read p.train_filter (stride n_train), which
//             must still hold this step's old weights. Each sum adds the two ranges' terms
//             (integer adds, so splitting the channels does not change it)
//      dy     [batches, output_h, output_w, output_c] int16 output gradient (|dy| <= 8191)
//      ratio  [output_c] float32 sW[c] / max(sW), or nullptr for per-tensor weights; each dy
//             term is folded where it is used, round_half_away((float)dy * ratio[oc])
//      acc_scale dy_scale * max(sW)
// Out: dx [batches, input_h, input_w, input_c] int16 (overwritten; may not alias dy or filter).
// Scratch: none, and no int32 buffer: two passes (mt::GatherRequantize) compute every sum twice,
// the first for max |acc|, the second to write dx, so the cost is twice the input-gradient MACs.
// Bit-identical to storing the sums and mt::GradRequantize. Depth of each sum: at most
// depth_multiplier * filter_h * filter_w terms.
float depthwise_conv2d_input_grad(const DepthwiseConv2dParams& p, const int8_t* filter,
                                  const int16_t* dy, const float* ratio, float acc_scale,
                                  int16_t* dx);

// Bias update, as conv2d_bias_update: bias[o] -= round((lr_dy * sum dy[..., o]) * bias_coef[o]).
void depthwise_conv2d_bias_update(const DepthwiseConv2dParams& p, const int16_t* dy,
                                  float lr_dy, const float* bias_coef, int32_t* bias);

// Weight update of output channels o < p.n_train in the SRAM copy's order (fy, fx, o; one PRNG
// draw per weight when stochastic): GW[fy, fx, o] = sum over output positions of
// dy[.., o] * (x[.., o / depth_multiplier] - zx) (int64, padded taps 0),
// w = clamp(w - R((float)GW * (coef * w_coef[o])), -127, 127), coef = (lr * dy_scale) * sx.
// In:  input [batches, input_h, input_w, input_c] int8, the forward input (must be saved)
//      dy as above (unfolded), w_coef [p.n_train] float32
// In/out: weights [filter_h, filter_w, p.n_train] int8 (SRAM copy, = p.train_filter), prng.
void depthwise_conv2d_weight_update(const DepthwiseConv2dParams& p, const int8_t* input,
                                    const int16_t* dy, float coef, const float* w_coef,
                                    Rounding rounding, uint32_t* prng, int8_t* weights);

}  // namespace ref
}  // namespace mt
