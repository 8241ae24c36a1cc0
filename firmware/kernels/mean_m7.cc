// Cortex-M7 MEAN: int16 lane sums, four channels per word (mean_m7.h).
#include "kernels/mean_m7.h"

#include "kernels/dsp.h"
#include "kernels/fixed_point.h"

namespace mt::m7 {

namespace {

int8_t Rescale(const MeanParams& p, int32_t sum, int32_t zero_point_sum) {
  const int32_t scaled =
      MultiplyByQuantizedMultiplier(sum - zero_point_sum, p.multiplier, p.shift);
  return static_cast<int8_t>(AddOffsetClamp(scaled, p.output_zero_point, -128, 127));
}

}  // namespace

void mean_s8(const MeanParams& p, const int8_t* in, int8_t* out) {
  const int32_t zero_point_sum = p.reduce * p.input_zero_point;
  const int32_t body = p.inner & ~3;
  for (int32_t o = 0; o < p.outer; ++o, out += p.inner) {
    const int8_t* const block = in + o * p.reduce * p.inner;
    for (int32_t i = 0; i < body; i += 4) {
      int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int32_t r0 = 0; r0 < p.reduce; r0 += kMeanLaneChunk) {
        const int32_t n = p.reduce - r0 < kMeanLaneChunk ? p.reduce - r0 : kMeanLaneChunk;
        const int8_t* x = block + r0 * p.inner + i;
        uint32_t even = 0, odd = 0;  // lanes (c, c + 2), (c + 1, c + 3)
        for (const int8_t* const end = x + n * p.inner; x != end; x += p.inner) {
          const uint32_t w = dsp::Load4(x);
          even = dsp::ExtendEvenAdd(w, even);
          odd = dsp::ExtendOddAdd(w, odd);
        }
        s0 += static_cast<int16_t>(even & 0xFFFFu);
        s2 += static_cast<int16_t>(even >> 16);
        s1 += static_cast<int16_t>(odd & 0xFFFFu);
        s3 += static_cast<int16_t>(odd >> 16);
      }
      out[i] = Rescale(p, s0, zero_point_sum);
      out[i + 1] = Rescale(p, s1, zero_point_sum);
      out[i + 2] = Rescale(p, s2, zero_point_sum);
      out[i + 3] = Rescale(p, s3, zero_point_sum);
    }
    for (int32_t i = body; i < p.inner; ++i) {
      int32_t sum = 0;
      for (int32_t r = 0; r < p.reduce; ++r) sum += block[r * p.inner + i];
      out[i] = Rescale(p, sum, zero_point_sum);
    }
  }
}

}  // namespace mt::m7
