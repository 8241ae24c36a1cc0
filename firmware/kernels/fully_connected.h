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
// Requantization is fixed point, acc * multiplier * 2^(shift - 31) with double rounding, as in
// TFLite Micro, CMSIS-NN and TFLite's optimized kernels. TFLite's reference kernels (LiteRT's
// BUILTIN_REF resolver) round double(acc) * real_scale instead and differ by one level now and
// then; TFLite Micro is the reference on a microcontroller, so it is the one followed.
//
// Every field is computed on the host (python/mcutrain/ops/fully_connected.py) and emitted as a
// `static const` object in flash; the kernels do no validation.
#pragma once

#include <cstdint>

#include "kernels/train_math.h"

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
  int32_t act_min, act_max;    // fused activation clamp, -128 <= act_min <= act_max <= 127
  // On-device training: output units o < n_train read their weights from train_filter, the
  // SRAM copy of the first n_train rows of the filter; the others read the `filter` argument
  // (flash). n_train == 0 (the default) is plain inference. Every kernel that reads weights
  // (fully_connected_s8, fully_connected_input_grad) works on the unit ranges [0, n_train) and
  // [n_train, output_depth) separately, one weight source per range, never a per-unit choice.
  const int8_t* train_filter = nullptr;
  int32_t n_train = 0;
};

namespace ref {

// Reference loop nest, bit-exact with TFLite Micro's FULLY_CONNECTED (per-tensor and
// per-channel weights). In: input, filter, bias (may be nullptr). Out: output (must not
// alias input). Scratch: none.
void fully_connected_s8(const FullyConnectedParams& p, const int8_t* input, const int8_t* filter,
                        const int32_t* bias, int8_t* output);

// ---- backward (docs/training.md, "Rules per operator"); run in this order in one step ----
// Training requires filter_offset == 0 (the compiler refuses other weights).

// Input gradient, requantized: acc[b, d] = sum over o of fold(dy[b, o]) * w[o, d], then
// dx = grad_requantize(acc, acc_scale); returns dx's scale (0 when every sum is 0).
// In:  filter [output_depth, accum_depth] int8 (flash) for the rows [p.n_train, output_depth);
//             rows [0, p.n_train) read p.train_filter, which must still hold this step's old
//             weights. Each sum adds the two ranges' terms (integer adds, so splitting the rows
//             does not change it)
//      dy     [batches, output_depth] int16 output gradient (|dy| <= 8191)
//      ratio  [output_depth] float32 sW[o] / max(sW), or nullptr for per-tensor weights; each
//             dy term is folded where it is used, round_half_away((float)dy * ratio[o])
//      acc_scale dy_scale * max(sW)
// Out: dx [batches, accum_depth] int16 (overwritten; may not alias dy or filter).
// Scratch: none, and no int32 tensor: two passes (mt::GatherRequantize) compute every sum twice,
// the first for max |acc|, the second to write dx, so the cost is twice the input-gradient MACs.
// Bit-identical to storing the sums and mt::GradRequantize. Stack: one block of kGatherBlock
// int32 sums (64 B). Depth: output_depth terms.
float fully_connected_input_grad(const FullyConnectedParams& p, const int8_t* filter,
                                 const int16_t* dy, const float* ratio, float acc_scale,
                                 int16_t* dx);

// Bias update, as conv2d_bias_update: bias[o] -= round((lr_dy * sum_b dy[b, o]) * bias_coef[o]).
void fully_connected_bias_update(const FullyConnectedParams& p, const int16_t* dy, float lr_dy,
                                 const float* bias_coef, int32_t* bias);

// Weight update of rows o < p.n_train in memory order (one PRNG draw per weight when
// stochastic): GW[o, d] = sum_b dy[b, o] * (x[b, d] - zx) (int64),
// w = clamp(w - R((float)GW * (coef * w_coef[o])), -127, 127), coef = (lr * dy_scale) * sx.
// In:  input [batches, accum_depth] int8, the forward input (must be saved)
//      dy as above (unfolded), w_coef [p.n_train] float32
// In/out: weights [p.n_train, accum_depth] int8 (SRAM copy, = p.train_filter), prng.
void fully_connected_weight_update(const FullyConnectedParams& p, const int8_t* input,
                                   const int16_t* dy, float coef, const float* w_coef,
                                   Rounding rounding, uint32_t* prng, int8_t* weights);

}  // namespace ref
}  // namespace mt
