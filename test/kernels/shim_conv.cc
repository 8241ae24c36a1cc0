// extern "C" wrappers with flat arguments around the conv-family backward kernels, for the
// ctypes tests in test_conv_backward.py. `s` holds the params struct's integer fields in
// declaration order with the pointer fields left out.
//
// Each shim runs one backward step exactly as the emitted code does: input gradient +
// GradRequantize (when dx != nullptr), bias update (when bias != nullptr), weight update (when
// n_train > 0), in that order.
#include "kernels/conv2d.h"
#include "kernels/depthwise_conv2d.h"
#include "kernels/fully_connected.h"
#include "kernels/train_math.h"

namespace {

struct BackwardArgs {
  const int8_t* filter;   // flash filter
  int8_t* weights;        // SRAM copy of the trained channels (also the forward's train_filter)
  const int8_t* input;    // saved forward input
  const int16_t* dy;
  float dy_scale;
  const float* ratio;     // fold ratios or nullptr
  float max_sw;
  int32_t* dx;            // int32 accumulators, int16 on return; nullptr: no input gradient
  int32_t dx_count;
  float* dx_scale;
  float lr, input_scale;
  int32_t* bias;          // SRAM bias or nullptr
  const float* bias_coef;
  const float* w_coef;
  int32_t rounding;       // mt::Rounding
  uint32_t* prng;
};

template <typename P, typename InputGrad, typename BiasUpdate, typename WeightUpdate>
void Backward(const P& p, const BackwardArgs& a, InputGrad input_grad, BiasUpdate bias_update,
              WeightUpdate weight_update) {
  if (a.dx != nullptr) {
    input_grad(p, a.filter, a.dy, a.ratio, a.dx);
    *a.dx_scale = mt::GradRequantize(a.dx, a.dx_count, a.dy_scale * a.max_sw);
  }
  const float lr_dy = a.lr * a.dy_scale;
  if (a.bias != nullptr) bias_update(p, a.dy, lr_dy, a.bias_coef, a.bias);
  if (p.n_train > 0) {
    weight_update(p, a.input, a.dy, lr_dy * a.input_scale, a.w_coef,
                  static_cast<mt::Rounding>(a.rounding), a.prng, a.weights);
  }
}

}  // namespace

extern "C" {

void shim_conv2d_backward(const int32_t* s, int32_t n_train, const BackwardArgs* a) {
  const mt::Conv2dParams p = {s[0],  s[1],  s[2],  s[3],  s[4],  s[5],  s[6],    s[7],
                              s[8],  s[9],  s[10], s[11], s[12], s[13], s[14],   s[15],
                              s[16], s[17], nullptr, nullptr, s[18], s[19], a->weights, n_train};
  Backward(p, *a, mt::ref::conv2d_input_grad, mt::ref::conv2d_bias_update,
           mt::ref::conv2d_weight_update);
}

void shim_depthwise_conv2d_backward(const int32_t* s, int32_t n_train, const BackwardArgs* a) {
  const mt::DepthwiseConv2dParams p = {
      s[0],  s[1],  s[2],  s[3],  s[4],  s[5],    s[6],    s[7],  s[8],  s[9],       s[10],
      s[11], s[12], s[13], s[14], s[15], s[16],   s[17],   nullptr, nullptr, s[18], s[19],
      a->weights, n_train};
  Backward(p, *a, mt::ref::depthwise_conv2d_input_grad, mt::ref::depthwise_conv2d_bias_update,
           mt::ref::depthwise_conv2d_weight_update);
}

void shim_fully_connected_backward(const int32_t* s, int32_t n_train, const BackwardArgs* a) {
  const mt::FullyConnectedParams p = {s[0],    s[1],    s[2],    s[3], s[4],       s[5],
                                      nullptr, nullptr, nullptr, s[6], s[7], a->weights,
                                      n_train};
  Backward(p, *a, mt::ref::fully_connected_input_grad, mt::ref::fully_connected_bias_update,
           mt::ref::fully_connected_weight_update);
}

}  // extern "C"
