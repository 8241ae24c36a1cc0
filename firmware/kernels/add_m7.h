// ADD for the Cortex-M7: the same results as mt::ref::add_s8, bit for bit, for two operands of
// the output's own shape (no broadcast; any band of rows of them).
//
// Each operand has 256 possible values, so the host tabulates what the reference computes per
// operand, (q + offset) << 20 rescaled onto the common scale (python/mcutrain/ops/add.py,
// m7_tables), and an element is two byte loads, two table loads and one add before the output
// requantization, which takes requantize_m7.h's short form where the host found it exact.
#pragma once

#include <cstdint>

#include "kernels/add.h"

namespace mt::m7 {

// In/out as mt::ref::add_s8. tables: int32 [2][256], operand a's scaled value of each uint8
// bit pattern, then operand b's (flash). requant: {multiplier, right shift, rounding constant +
// output offset} of the output stage (requantize_m7.h), or nullptr for the reference
// arithmetic. Operands of another shape than the output run the reference kernel.
void add_s8(const AddParams& p, const int8_t* a, const int8_t* b, int8_t* out,
            const int32_t* tables, const int32_t* requant);

}  // namespace mt::m7
