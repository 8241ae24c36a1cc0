// extern "C" wrappers with flat arguments around the conv-family reference kernels, for the
// ctypes tests in test_conv_kernels.py. `s` holds the params struct's integer fields in
// declaration order with the two pointer fields (multiplier, shift) left out.
#include "kernels/conv2d.h"
#include "kernels/depthwise_conv2d.h"
#include "kernels/fully_connected.h"

extern "C" {

void shim_conv2d_s8(const int32_t* s, const int32_t* multiplier, const int32_t* shift,
                    const int8_t* input, const int8_t* filter, const int32_t* bias,
                    int8_t* output) {
  const mt::Conv2dParams p = {s[0],  s[1],  s[2],  s[3],  s[4],  s[5],  s[6],  s[7],
                              s[8],  s[9],  s[10], s[11], s[12], s[13], s[14], s[15],
                              s[16], s[17], multiplier, shift, s[18], s[19]};
  mt::ref::conv2d_s8(p, input, filter, bias, output);
}

void shim_depthwise_conv2d_s8(const int32_t* s, const int32_t* multiplier, const int32_t* shift,
                              const int8_t* input, const int8_t* filter, const int32_t* bias,
                              int8_t* output) {
  const mt::DepthwiseConv2dParams p = {s[0],  s[1],  s[2],  s[3],  s[4],  s[5],  s[6],  s[7],
                                       s[8],  s[9],  s[10], s[11], s[12], s[13], s[14], s[15],
                                       s[16], s[17], multiplier, shift, s[18], s[19]};
  mt::ref::depthwise_conv2d_s8(p, input, filter, bias, output);
}

// real_scale may be nullptr (fixed-point requantization).
void shim_fully_connected_s8(const int32_t* s, const int32_t* multiplier, const int32_t* shift,
                             const double* real_scale, const int8_t* input, const int8_t* filter,
                             const int32_t* bias, int8_t* output) {
  const mt::FullyConnectedParams p = {s[0],  s[1],       s[2], s[3], s[4], s[5],
                                      multiplier, shift, real_scale, s[6], s[7]};
  mt::ref::fully_connected_s8(p, input, filter, bias, output);
}

}  // extern "C"
