// FULLY_CONNECTED, int8 activations and weights, int32 bias: TFLite's quantized dense layer.
//
// Layouts (row-major):
//   input  [batches, accum_depth]      int8 (any input rank, flattened; TFLite does the same)
//   filter [output_depth, accum_depth] int8
//   bias   [output_depth]              int32, or nullptr when absent
//   output [batches, output_depth]     int8
// Per-tensor weight quantization may carry a weight zero point (filter_offset, TFLite keeps it
// for backward compatibility); per-channel weights are symmetric and have filter_offset 0.
//
// Two requantizations exist in TFLite and both are offered here:
// - real_scale == nullptr: fixed point, acc * multiplier * 2^(shift - 31) with double rounding,
//   as TFLite's optimized kernels, TFLite Micro and CMSIS-NN do;
// - real_scale != nullptr: std::round(double(acc) * real_scale[o]), as TFLite's reference
//   kernels (reference_integer_ops::FullyConnected / FullyConnectedPerChannel with float scales,
//   the BUILTIN_REF resolver) do. real_scale = (double(input_scale) * double(filter_scale)) /
//   double(output_scale), computed on the host. The two differ by one level now and then.
//
// Every field is computed on the host (python/mcutrain/ops/fully_connected.py) and emitted as a
// `static const` object in flash; the kernels do no validation.
#pragma once

#include <cstdint>

namespace mt {

struct FullyConnectedParams {
  int32_t batches;
  int32_t accum_depth;
  int32_t output_depth;
  int32_t input_offset;        // -input_zero_point, in [-127, 128]
  int32_t filter_offset;       // -filter_zero_point, 0 for per-channel weights
  int32_t output_offset;       // output_zero_point, in [-128, 127]
  const int32_t* multiplier;   // [output_depth] Q31 significands (per-tensor value repeated)
  const int32_t* shift;        // [output_depth] power-of-two exponents, in [-31, 30]
  const double* real_scale;    // [output_depth] or nullptr (see above)
  int32_t act_min, act_max;    // fused activation clamp, -128 <= act_min <= act_max <= 127
};

namespace ref {

// Reference loop nest, bit-exact with tflite::reference_integer_ops::FullyConnected and
// FullyConnectedPerChannel. In: input, filter, bias (may be nullptr). Out: output (must not
// alias input). Scratch: none.
void fully_connected_s8(const FullyConnectedParams& p, const int8_t* input, const int8_t* filter,
                        const int32_t* bias, int8_t* output);

}  // namespace ref
}  // namespace mt
