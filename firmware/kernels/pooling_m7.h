// MAX_POOL_2D for the Cortex-M7: the same results as mt::ref's (pooling.h), bit for bit.
//
// The forward takes four channels per word: a window's maximum is one SSUB8 + SEL per tap for
// four channels (byte lanes, dsp::Max8), the fused clamp two more per word. The backward finds
// each window's first maximum per channel with the window's addresses computed once per output
// pixel rather than once per tap and channel. No scratch.
#pragma once

#include <cstdint>

#include "kernels/pooling.h"

namespace mt::m7 {

// As mt::ref::max_pool_s8; channels % 4 != 0 runs the reference.
void max_pool_s8(const PoolParams& p, const int8_t* in, int8_t* out);

// As mt::ref::max_pool_backward (same buffers, same result).
float max_pool_backward(const PoolParams& p, const int8_t* in, const int16_t* dy, float dy_scale,
                        void* dx);

}  // namespace mt::m7
