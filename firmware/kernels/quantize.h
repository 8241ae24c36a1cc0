// QUANTIZE int8 -> int8 (requantize mid-graph), TFLite's reference Requantize bit for bit:
// out = clamp(MultiplyByQuantizedMultiplier(in - in_zp, multiplier, shift) + out_zp).
// float -> int8 QUANTIZE only appears at a model's input and is removed by the compiler.
#pragma once

#include <cstdint>

namespace mt {

struct RequantizeParams {
  int32_t size;        // number of elements
  int32_t in_zp;       // input zero point, int8 range
  int32_t out_zp;      // output zero point, int8 range
  int32_t multiplier;  // Q31 significand of scale_in / scale_out
  int32_t shift;       // its exponent (may be positive)
};

namespace ref {

/// @param[in]  p    constants (see RequantizeParams)
/// @param[in]  in   int8, p.size elements, any layout
/// @param[out] out  int8, p.size elements in the same layout; may alias `in` exactly
void requantize_s8(const RequantizeParams& p, const int8_t* in, int8_t* out);

}  // namespace ref
}  // namespace mt
