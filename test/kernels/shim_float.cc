// extern "C" wrappers around the fp32 classifier kernels for test_float_classifier.py.
#include <cstdint>

#include "kernels/float_classifier.h"

namespace {

mt::FloatClassifierParams Params(int32_t depth, int32_t units, int32_t input_offset,
                                 float input_scale, int32_t output_logits = 0,
                                 float output_inv_scale = 0.0f, int32_t output_zero_point = 0) {
  return {depth,         units,           input_offset,     input_scale,
          output_logits, output_inv_scale, output_zero_point};
}

}  // namespace

extern "C" {

float mt_exp_f32(float x) { return mt::ref::exp_f32(x); }

void mt_float_classifier_init(int32_t depth, int32_t units, const int8_t* wq, const int32_t* bq,
                              const float* w_scale, const float* b_scale, float* w, float* b) {
  mt::ref::float_classifier_init(Params(depth, units, 0, 0.0f), wq, bq, w_scale, b_scale, w, b);
}

void mt_float_classifier_forward(int32_t depth, int32_t units, int32_t input_offset,
                                 float input_scale, int32_t output_logits,
                                 float output_inv_scale, int32_t output_zero_point,
                                 const float* w, const float* b, const int8_t* x, float* work,
                                 int8_t* q) {
  mt::ref::float_classifier_forward(Params(depth, units, input_offset, input_scale, output_logits,
                                           output_inv_scale, output_zero_point),
                                    w, b, x, work, q);
}

int32_t mt_float_classifier_loss(int32_t depth, int32_t units, const float* work, int32_t label,
                                 float* loss) {
  return mt::ref::float_classifier_loss(Params(depth, units, 0, 0.0f), work, label, loss);
}

float mt_float_classifier_backward(int32_t depth, int32_t units, float* w, float* b,
                                   const float* work, int32_t label, float lr, float* scratch,
                                   int16_t* dx) {
  return mt::ref::float_classifier_backward(Params(depth, units, 0, 0.0f), w, b, work, label, lr,
                                            scratch, dx);
}

}  // extern "C"
