// Reference LOGISTIC: table reads; every constant comes from the host.
#include "kernels/logistic.h"

#include "kernels/train_math.h"

namespace mt {
namespace ref {

void logistic_s8(const LogisticParams& p, const int8_t* table, const int8_t* in, int8_t* out) {
  for (int32_t i = 0; i < p.size; ++i) out[i] = table[in[i] + 128];
}

float logistic_backward(const LogisticParams& p, const int16_t* deriv, const int8_t* in,
                        const int16_t* dy, float dy_scale, void* dx) {
  int32_t* acc = static_cast<int32_t*>(dx);
  for (int32_t i = 0; i < p.size; ++i) acc[i] = dy[i] * deriv[in[i] + 128];
  // dy_scale / 32768 is exact (a power of two), the same float the numpy reference computes.
  return GradRequantize(dx, p.size, dy_scale / 32768.0f);
}

}  // namespace ref
}  // namespace mt
