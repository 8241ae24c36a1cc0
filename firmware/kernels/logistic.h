// LOGISTIC (sigmoid), int8: TFLite's int8 reference LOGISTIC bit for bit, as a table read.
//
// TFLite fixes the output quantization (scale 1/256, zero point -128) and fills a 256-entry
// table per input quantization; python/mcutrain/ops/logistic.py computes the same table at
// compile time and places it in flash, so the kernel only indexes it. The backward kernel reads a
// second table, round(s'(x) * 2^15) per input value, also computed on the host.
#pragma once

#include <cstdint>

namespace mt {

struct LogisticParams {
  int32_t size;  // elements of the input (= output)
};

namespace ref {

/// out[i] = table[in[i] + 128].
/// @param[in]  p      element count
/// @param[in]  table  int8[256]: output of every int8 input, input -128 first
/// @param[in]  in     int8 input
/// @param[out] out    int8 output; may alias `in` (each element is read before it is written)
void logistic_s8(const LogisticParams& p, const int8_t* table, const int8_t* in, int8_t* out);

// ---- backward (docs/training.md, "LOGISTIC") ----

/// acc[i] = dy[i] * deriv[in[i] + 128], then GradRequantize(acc, dy_scale / 2^15) in place.
/// @param[in]  deriv     int16[256]: round(s(x) * (1 - s(x)) * 2^15) of every int8 input (<= 8192,
///                       so |acc| <= 8191 * 8192 fits int32)
/// @param[in]  in        int8, the saved forward input
/// @param[in]  dy        int16 output gradient, scale dy_scale
/// @param[out] dx        4 * size bytes, 4-byte aligned, not overlapping dy: int32 accumulators,
///                       on return the int16 input gradient (first 2 * size bytes)
/// @return the input gradient's scale
float logistic_backward(const LogisticParams& p, const int16_t* deriv, const int8_t* in,
                        const int16_t* dy, float dy_scale, void* dx);

}  // namespace ref
}  // namespace mt
