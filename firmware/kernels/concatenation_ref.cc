// Reference CONCATENATION: row by row, input by input.
#include "kernels/concatenation.h"

namespace mt {
namespace ref {

void concat_s8(const ConcatParams& p, const int8_t* const* inputs, int8_t* out) {
  for (int32_t r = 0; r < p.outer; ++r) {
    for (int32_t k = 0; k < p.num_inputs; ++k) {
      const int32_t n = p.row_bytes[k];
      const int8_t* src = inputs[k] + r * n;
      for (int32_t j = 0; j < n; ++j) {
        *out++ = src[j];
      }
    }
  }
}


void concat_backward(const ConcatParams& p, int32_t k, const int16_t* dy, int16_t* dx) {
  int32_t offset = 0;
  for (int32_t j = 0; j < k; ++j) offset += p.row_bytes[j];
  const int32_t n = p.row_bytes[k];
  for (int32_t r = 0; r < p.outer; ++r) {
    const int16_t* src = dy + r * p.out_row_bytes + offset;
    for (int32_t j = 0; j < n; ++j) {
      *dx++ = src[j];
    }
  }
}

}  // namespace ref
}  // namespace mt
