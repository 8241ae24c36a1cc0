// extern "C" wrappers around the MEAN and SOFTMAX kernels for ctypes tests. Parameters travel as
// a flat int32 array in struct field order (the Python params' fields()), checked by count.
#include <cstdint>

#include "kernels/mean.h"
#include "kernels/softmax.h"

extern "C" {

int32_t mt_mean_params_fields() { return sizeof(mt::MeanParams) / sizeof(int32_t); }
int32_t mt_softmax_params_fields() { return sizeof(mt::SoftmaxParams) / sizeof(int32_t); }

void mt_mean_s8(const int32_t* f, const int8_t* in, int8_t* out) {
  const mt::MeanParams p = {f[0], f[1], f[2], f[3], f[4], f[5], f[6]};
  mt::ref::mean_s8(p, in, out);
}

void mt_softmax_s8(const int32_t* f, const int8_t* in, int8_t* out) {
  const mt::SoftmaxParams p = {f[0], f[1], f[2], f[3], f[4]};
  mt::ref::softmax_s8(p, in, out);
}

}  // extern "C"
