// FULLY_CONNECTED backward for the Cortex-M7: the reference's results, bit for bit.
//
// The weight update of a single-sample step is one product per weight, so the per-weight update
// arithmetic is nearly all of it: here with the rounding fixed at compile time, the PRNG state
// in a register and the int32 sum converted directly (param_update.h UpdateWeightFast), about
// half the reference's instructions. The input gradient and the bias update are the
// reference's (this variant names them so that a backward step calls one namespace).
#pragma once

#include <cstdint>

#include "kernels/fully_connected.h"

namespace mt::m7 {

// As mt::ref::fully_connected_input_grad.
float fully_connected_input_grad(const FullyConnectedParams& p, const int8_t* filter,
                                 const int16_t* dy, const float* ratio, float acc_scale,
                                 int16_t* dx);

// As mt::ref::fully_connected_bias_update.
void fully_connected_bias_update(const FullyConnectedParams& p, const int16_t* dy, float lr_dy,
                                 const float* bias_coef, int32_t* bias);

// As mt::ref::fully_connected_weight_update; more than one sample runs the reference.
void fully_connected_weight_update(const FullyConnectedParams& p, const int8_t* input,
                                   const int16_t* dy, float coef, const float* w_coef,
                                   Rounding rounding, uint32_t* prng, int8_t* weights);

}  // namespace mt::m7
