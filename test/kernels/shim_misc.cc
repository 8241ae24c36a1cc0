// extern "C" wrappers around the ADD, pooling, PAD, CONCATENATION and requantize kernels for the
// ctypes tests. Parameter structs made only of int32 fields arrive as the same flat int32 list
// the code generator uses as their brace initializer, so these tests also pin the field order.
#include <cstdint>
#include <cstring>

#include "kernels/add.h"
#include "kernels/concatenation.h"
#include "kernels/pad.h"
#include "kernels/pooling.h"
#include "kernels/quantize.h"

namespace {

template <typename Params>
Params FromFields(const int32_t* fields) {
  static_assert(sizeof(Params) % sizeof(int32_t) == 0, "params must be all int32 fields");
  Params p;
  std::memcpy(&p, fields, sizeof(Params));
  return p;
}

}  // namespace

extern "C" {

int32_t mt_add_params_fields() { return sizeof(mt::AddParams) / sizeof(int32_t); }
int32_t mt_pool_params_fields() { return sizeof(mt::PoolParams) / sizeof(int32_t); }
int32_t mt_pad_params_fields() { return sizeof(mt::PadParams) / sizeof(int32_t); }
int32_t mt_requantize_params_fields() { return sizeof(mt::RequantizeParams) / sizeof(int32_t); }

void mt_add_s8(const int32_t* fields, const int8_t* a, const int8_t* b, int8_t* out) {
  mt::ref::add_s8(FromFields<mt::AddParams>(fields), a, b, out);
}

void mt_avg_pool_s8(const int32_t* fields, const int8_t* in, int8_t* out) {
  mt::ref::avg_pool_s8(FromFields<mt::PoolParams>(fields), in, out);
}

void mt_max_pool_s8(const int32_t* fields, const int8_t* in, int8_t* out) {
  mt::ref::max_pool_s8(FromFields<mt::PoolParams>(fields), in, out);
}

void mt_pad_s8(const int32_t* fields, const int8_t* in, int8_t* out) {
  mt::ref::pad_s8(FromFields<mt::PadParams>(fields), in, out);
}

void mt_requantize_s8(const int32_t* fields, const int8_t* in, int8_t* out) {
  mt::ref::requantize_s8(FromFields<mt::RequantizeParams>(fields), in, out);
}

void mt_concat_s8(int32_t num_inputs, int32_t outer, const int32_t* row_sizes,
                  int32_t out_row, const int8_t* const* inputs, int8_t* out) {
  const mt::ConcatParams p = {num_inputs, outer, row_sizes, out_row};
  mt::ref::concat_s8(p, inputs, out);
}

}  // extern "C"
