// The bias update of a stored output gradient for the Cortex-M7 kernels: the same results as
// mt::UpdateBias (param_update.h), bit for bit. The reference walks one channel's column at a
// time in int64; here eight channels' sums run side by side in int32 registers, a word of two
// int16 values at a time (SXTAH and ADD ..., ASR #16), so each value costs 1.5 instructions.
// Integer sums in any order are exact, and int32 cannot overflow below kInt32SumRows rows.
#pragma once

#include <cstdint>

#include "kernels/dsp.h"
#include "kernels/param_update.h"

namespace mt::m7 {

// Rows of int16 values whose sum always fits int32: 65535 * 32768 < 2^31.
constexpr int32_t kInt32SumRows = 65535;

// As mt::UpdateBias(rows, channels, dy, ...): dy is [rows, channels], channels innermost.
inline void UpdateBiasRows(int32_t rows, int32_t channels, const int16_t* dy, float lr_dy,
                           const float* bias_coef, int32_t* bias) {
  if (rows > kInt32SumRows) {
    UpdateBias(rows, channels, dy, lr_dy, bias_coef, bias);
    return;
  }
  int32_t c = 0;
  for (; c + 8 <= channels; c += 8) {
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
    const int16_t* g = dy + c;
    for (int32_t r = 0; r < rows; ++r, g += channels) {
      const int32_t w0 = static_cast<int32_t>(dsp::Load4(g));
      const int32_t w1 = static_cast<int32_t>(dsp::Load4(g + 2));
      const int32_t w2 = static_cast<int32_t>(dsp::Load4(g + 4));
      const int32_t w3 = static_cast<int32_t>(dsp::Load4(g + 6));
      s0 += static_cast<int16_t>(w0);
      s1 += w0 >> 16;
      s2 += static_cast<int16_t>(w1);
      s3 += w1 >> 16;
      s4 += static_cast<int16_t>(w2);
      s5 += w2 >> 16;
      s6 += static_cast<int16_t>(w3);
      s7 += w3 >> 16;
    }
    const int32_t sums[8] = {s0, s1, s2, s3, s4, s5, s6, s7};
    for (int32_t j = 0; j < 8; ++j) {
      UpdateBiasValue(&bias[c + j], sums[j], lr_dy, bias_coef[c + j]);
    }
  }
  for (; c < channels; ++c) {
    int32_t sum = 0;
    for (int32_t r = 0; r < rows; ++r) sum += dy[r * channels + c];
    UpdateBiasValue(&bias[c], sum, lr_dy, bias_coef[c]);
  }
}

}  // namespace mt::m7
