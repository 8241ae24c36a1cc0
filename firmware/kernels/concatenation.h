// CONCATENATION, int8: join tensors along one axis.
//
// TFLite accepts int8 CONCATENATION only when every input has the output's scale and zero point
// (its Prepare fails otherwise), so this is a pure copy; the host (python/mcutrain/ops/
// concatenation.py) rejects models that would need rescaling. Any rank: the host flattens the
// dims before the axis into `outer` and the axis with the dims after it into one row per input.
#pragma once

#include <cstdint>

namespace mt {

struct ConcatParams {
  int32_t num_inputs;         // >= 1
  int32_t outer;              // product of the dims before the axis
  const int32_t* row_bytes;   // per input: its axis dim times the product of the dims after it
  int32_t out_row_bytes;      // sum of row_bytes
};

namespace ref {

/// @param[in]  p       layout (see ConcatParams)
/// @param[in]  inputs  p.num_inputs int8 tensors, each dense [outer, row_bytes[i]]
/// @param[out] out     int8, dense [outer, out_row_bytes]; must not alias any input
void concat_s8(const ConcatParams& p, const int8_t* const* inputs, int8_t* out);


// ---- backward (docs/training.md, "CONCATENATION") ----

/// Input gradient of input k: its columns of each output row, copied without rescaling;
/// dx.scale = dy.scale (set by the caller). Constant inputs simply get no call.
/// @param[in]  p   the forward layout (row_bytes counts elements, here int16 ones)
/// @param[in]  k   input index, 0 <= k < p.num_inputs (constants included in the numbering)
/// @param[in]  dy  int16, dense [outer, out_row_bytes]
/// @param[out] dx  int16, dense [outer, row_bytes[k]]; must not overlap `dy`
void concat_backward(const ConcatParams& p, int32_t k, const int16_t* dy, int16_t* dx);

}  // namespace ref
}  // namespace mt
