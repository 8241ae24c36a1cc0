// Cortex-M7 FULLY_CONNECTED backward (fully_connected_m7.h).
#include "kernels/fully_connected_m7.h"

#include "kernels/param_update.h"

namespace mt::m7 {

namespace {

// One sample: GW[o, k] = dy[o] * (x[k] + input_offset), which |dy| <= 8191 keeps inside int32.
template <Rounding kRounding>
void SampleWeightUpdate(const FullyConnectedParams& p, const int8_t* input, const int16_t* dy,
                        float coef, const float* w_coef, uint32_t* prng, int8_t* weights) {
  uint32_t state = *prng;
  int8_t* w = weights;
  for (int32_t o = 0; o < p.n_train; ++o) {
    const float coef_o = coef * w_coef[o];
    const int32_t d = dy[o];
    for (int32_t k = 0; k < p.accum_depth; ++k, ++w) {
      UpdateWeightFast<kRounding>(w, d * (static_cast<int32_t>(input[k]) + p.input_offset),
                                  coef_o, state);
    }
  }
  *prng = state;
}

}  // namespace

float fully_connected_input_grad(const FullyConnectedParams& p, const int8_t* filter,
                                 const int16_t* dy, const float* ratio, float acc_scale,
                                 int16_t* dx) {
  return ref::fully_connected_input_grad(p, filter, dy, ratio, acc_scale, dx);
}

void fully_connected_bias_update(const FullyConnectedParams& p, const int16_t* dy, float lr_dy,
                                 const float* bias_coef, int32_t* bias) {
  ref::fully_connected_bias_update(p, dy, lr_dy, bias_coef, bias);
}

void fully_connected_weight_update(const FullyConnectedParams& p, const int8_t* input,
                                   const int16_t* dy, float coef, const float* w_coef,
                                   Rounding rounding, uint32_t* prng, int8_t* weights) {
  if (p.batches != 1) {
    ref::fully_connected_weight_update(p, input, dy, coef, w_coef, rounding, prng, weights);
    return;
  }
  WithRounding(rounding, [&](auto rounding_tag) {
    SampleWeightUpdate<decltype(rounding_tag)::value>(p, input, dy, coef, w_coef, prng, weights);
  });
}

}  // namespace mt::m7
