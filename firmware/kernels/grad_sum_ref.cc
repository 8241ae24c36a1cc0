// Reference fan-out sum.
#include "kernels/grad_sum.h"

#include "kernels/train_math.h"

namespace mt {
namespace ref {

float grad_sum(const int16_t* a, float sa, const int16_t* b, float sb, int32_t n,
               int32_t* acc_out) {
  if (sa == 0.0f || sb == 0.0f) {
    // One side carries no gradient: the sum is the other side exactly, with no re-rounding.
    const int16_t* src = sa == 0.0f ? b : a;
    int16_t* out = reinterpret_cast<int16_t*>(acc_out);
    for (int32_t i = 0; i < n; ++i) out[i] = src[i];
    return sa == 0.0f ? sb : sa;
  }
  const float s = sa > sb ? sa : sb;
  const float ra = sa / s;
  const float rb = sb / s;
  for (int32_t i = 0; i < n; ++i) {
    const float va = RoundHalfAway(static_cast<float>(a[i]) * ra);
    const float vb = RoundHalfAway(static_cast<float>(b[i]) * rb);
    acc_out[i] = static_cast<int32_t>(va) + static_cast<int32_t>(vb);
  }
  return GradRequantize(acc_out, n, s);
}

}  // namespace ref
}  // namespace mt
