// Cortex-M7 MAX_POOL_2D: byte-lane maxima four channels at a time (pooling_m7.h).
#include "kernels/pooling_m7.h"

#include <cstring>

#include "kernels/dsp.h"
#include "kernels/train_math.h"

namespace mt::m7 {

void max_pool_s8(const PoolParams& p, const int8_t* in, int8_t* out) {
  if ((p.channels & 3) != 0) {
    ref::max_pool_s8(p, in, out);
    return;
  }
  const uint32_t lo = dsp::Splat8(p.act_min), hi = dsp::Splat8(p.act_max);
  const int32_t row = p.in_w * p.channels;
  for (int32_t n = 0; n < p.batches; ++n) {
    const int8_t* image = in + n * p.in_h * row;
    for (int32_t oy = 0; oy < p.out_h; ++oy) {
      for (int32_t ox = 0; ox < p.out_w; ++ox, out += p.channels) {
        const PoolWindow w = ClippedWindow(p, oy, ox);
        const int8_t* corner = image + w.y0 * row + w.x0 * p.channels;
        for (int32_t c = 0; c < p.channels; c += 4) {
          uint32_t best = dsp::Splat8(-128);  // an empty window's value
          const int8_t* r = corner + c;
          for (int32_t y = w.y0; y < w.y1; ++y, r += row) {
            const int8_t* t = r;
            for (int32_t x = w.x0; x < w.x1; ++x, t += p.channels) {
              best = dsp::Max8(dsp::Load4(t), best);
            }
          }
          const uint32_t clamped = dsp::Min8(dsp::Max8(best, lo), hi);
          std::memcpy(out + c, &clamped, sizeof clamped);
        }
      }
    }
  }
}

namespace {

// route(i, d) for each output gradient d and the index i of its window's first maximum (scan
// order: rows, then columns, as the reference) in the forward input.
template <typename Route>
void RouteToMaxima(const PoolParams& p, const int8_t* in, const int16_t* dy, const Route& route) {
  const int32_t row = p.in_w * p.channels;
  const int16_t* g = dy;
  for (int32_t n = 0; n < p.batches; ++n) {
    const int32_t base = n * p.in_h * row;
    for (int32_t oy = 0; oy < p.out_h; ++oy) {
      for (int32_t ox = 0; ox < p.out_w; ++ox, g += p.channels) {
        const PoolWindow w = ClippedWindow(p, oy, ox);
        const int32_t corner = base + w.y0 * row + w.x0 * p.channels;
        for (int32_t c = 0; c < p.channels; ++c) {
          int32_t best = corner + c;
          int32_t best_value = in[best];
          for (int32_t y = w.y0, r = best; y < w.y1; ++y, r += row) {
            for (int32_t x = w.x0, at = r; x < w.x1; ++x, at += p.channels) {
              if (in[at] > best_value) {  // strict: the first maximum stays
                best = at;
                best_value = in[at];
              }
            }
          }
          route(best, g[c]);
        }
      }
    }
  }
}

// Windows that do not overlap (stride >= filter on both axes): every input takes at most one
// dy, so the int32 sums are dy values and zeros, max |acc| is max |dy|, and each dy can be
// requantized where it lands, straight into the int16 dx (the zeros stay 0 under any k).
// With max |dy| = kGradMax, as a requantized gradient has, k is exactly 1 and dx is dy moved.
float DisjointMaxPoolBackward(const PoolParams& p, const int8_t* in, const int16_t* dy,
                              float dy_scale, int16_t* dx) {
  const int32_t n_in = p.batches * p.in_h * p.in_w * p.channels;
  const int32_t n_out = p.batches * p.out_h * p.out_w * p.channels;
  int64_t m = 0;
  for (int32_t i = 0; i < n_out; ++i) {
    const int64_t a = AbsGrad(dy[i]);
    if (a > m) m = a;
  }
  for (int32_t i = 0; i < n_in; ++i) dx[i] = 0;
  if (m == 0) return 0.0f;
  const float k = static_cast<float>(kGradMax) / static_cast<float>(m);
  if (k == 1.0f) {
    RouteToMaxima(p, in, dy, [dx](int32_t i, int16_t d) { dx[i] = d; });
  } else {
    RouteToMaxima(p, in, dy, [dx, k](int32_t i, int16_t d) { dx[i] = RequantizeGrad(d, k); });
  }
  return RequantizedScale(dy_scale, m);
}

}  // namespace

float max_pool_backward(const PoolParams& p, const int8_t* in, const int16_t* dy, float dy_scale,
                        void* dx) {
  if (p.stride_h >= p.filter_h && p.stride_w >= p.filter_w) {
    return DisjointMaxPoolBackward(p, in, dy, dy_scale, static_cast<int16_t*>(dx));
  }
  int32_t* acc = static_cast<int32_t*>(dx);
  const int32_t n_in = p.batches * p.in_h * p.in_w * p.channels;
  for (int32_t i = 0; i < n_in; ++i) acc[i] = 0;
  RouteToMaxima(p, in, dy, [acc](int32_t i, int16_t d) { acc[i] += d; });
  return GradRequantize(dx, n_in, dy_scale);
}

}  // namespace mt::m7
