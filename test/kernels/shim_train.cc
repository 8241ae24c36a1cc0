// extern "C" wrappers around the training kernels that no operator's backward rule emits
// (activation masks, losses, fan-out) for the ctypes tests in test_backward_misc.py; the backward
// rules themselves are run through their emitted code (test/kernels/emitted.py).
#include <cstdint>

#include "kernels/activation_mask.h"
#include "kernels/grad_sum.h"
#include "kernels/loss.h"

extern "C" {

void mt_mask_pack(const int8_t* y, int32_t n, int32_t lo, int32_t hi, uint8_t* bits) {
  mt::ref::mask_pack(y, n, lo, hi, bits);
}

void mt_mask_apply(int16_t* d, int32_t n, const uint8_t* bits) { mt::ref::mask_apply(d, n, bits); }

int32_t mt_softmax_cross_entropy_grad(const int8_t* q, int32_t n, int32_t label, int16_t* d,
                                      float* scale, float* loss) {
  return mt::ref::softmax_cross_entropy_grad(q, n, label, d, scale, loss);
}

int32_t mt_logits_cross_entropy_grad(const int8_t* y, int32_t n, float so, int32_t label,
                                     int16_t* d, float* scale, float* loss) {
  return mt::ref::logits_cross_entropy_grad(y, n, so, label, d, scale, loss);
}

float mt_mse_grad(const int8_t* y, int32_t n, float so, int32_t zo, const float* t, int16_t* d,
                  float* scale) {
  return mt::ref::mse_grad(y, n, so, zo, t, d, scale);
}

float mt_grad_sum(const int16_t* a, float sa, const int16_t* b, float sb, int32_t n,
                  int32_t* acc_out) {
  return mt::ref::grad_sum(a, sa, b, sb, n, acc_out);
}

}  // extern "C"
