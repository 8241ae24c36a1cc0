// extern "C" wrappers around the training kernels (backward rules, activation masks, losses,
// fan-out) for the ctypes tests in test_backward_misc.py. Parameter structs made only of int32
// fields arrive as the flat int32 list the code generator uses as their brace initializer.
#include <cstdint>
#include <cstring>

#include "kernels/activation_mask.h"
#include "kernels/concatenation.h"
#include "kernels/grad_sum.h"
#include "kernels/loss.h"
#include "kernels/mean.h"
#include "kernels/pad.h"
#include "kernels/pooling.h"

namespace {

template <typename Params>
Params TrainFields(const int32_t* fields) {
  static_assert(sizeof(Params) % sizeof(int32_t) == 0, "params must be all int32 fields");
  Params p;
  std::memcpy(&p, fields, sizeof(Params));
  return p;
}

}  // namespace

extern "C" {

void mt_mean_backward(const int32_t* fields, const int16_t* dy, int16_t* dx) {
  mt::ref::mean_backward(TrainFields<mt::MeanParams>(fields), dy, dx);
}

float mt_avg_pool_backward(const int32_t* fields, const int16_t* dy, float dy_scale, void* dx) {
  return mt::ref::avg_pool_backward(TrainFields<mt::PoolParams>(fields), dy, dy_scale, dx);
}

float mt_max_pool_backward(const int32_t* fields, const int8_t* in, const int16_t* dy,
                           float dy_scale, void* dx) {
  return mt::ref::max_pool_backward(TrainFields<mt::PoolParams>(fields), in, dy, dy_scale, dx);
}

void mt_pad_backward(const int32_t* fields, const int16_t* dy, int16_t* dx) {
  mt::ref::pad_backward(TrainFields<mt::PadParams>(fields), dy, dx);
}

void mt_concat_backward(int32_t num_inputs, int32_t outer, const int32_t* row_sizes,
                        int32_t out_row, int32_t k, const int16_t* dy, int16_t* dx) {
  const mt::ConcatParams p = {num_inputs, outer, row_sizes, out_row};
  mt::ref::concat_backward(p, k, dy, dx);
}

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
