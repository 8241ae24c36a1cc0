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
};

namespace ref {

// Reference loop nest, bit-exact with tflite::reference_integer_ops::DepthwiseConvPerChannel.
// In: input, filter, bias (may be nullptr). Out: output (must not alias input). Scratch: none.
void depthwise_conv2d_s8(const DepthwiseConv2dParams& p, const int8_t* input,
                         const int8_t* filter, const int32_t* bias, int8_t* output);

}  // namespace ref
}  // namespace mt
