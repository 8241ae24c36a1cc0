// Reference pooling: plain loops, the yardstick every optimized pooling kernel must equal.
#include "kernels/pooling.h"

#include "kernels/fixed_point.h"
#include "kernels/train_math.h"

namespace mt {
namespace ref {

namespace {

inline int32_t Max(int32_t a, int32_t b) { return a > b ? a : b; }

}  // namespace

void avg_pool_s8(const PoolParams& p, const int8_t* in, int8_t* out) {
  for (int32_t n = 0; n < p.batches; ++n) {
    const int8_t* image = in + n * p.in_h * p.in_w * p.channels;
    for (int32_t oy = 0; oy < p.out_h; ++oy) {
      for (int32_t ox = 0; ox < p.out_w; ++ox) {
        const PoolWindow w = ClippedWindow(p, oy, ox);
        const int32_t count = (w.y1 - w.y0) * (w.x1 - w.x0);
        for (int32_t c = 0; c < p.channels; ++c) {
          int32_t sum = 0;
          for (int32_t y = w.y0; y < w.y1; ++y) {
            for (int32_t x = w.x0; x < w.x1; ++x) {
              sum += image[(y * p.in_w + x) * p.channels + c];
            }
          }
          // C++ division truncates toward zero; adding half the divisor away from zero first
          // makes it round half away from zero, as TFLite does. An empty window (impossible with
          // TFLite's padding rule, checked on the host) would divide by zero.
          const int32_t avg = sum > 0 ? (sum + count / 2) / count : (sum - count / 2) / count;
          *out++ = static_cast<int8_t>(Clamp(avg, p.act_min, p.act_max));
        }
      }
    }
  }
}

void max_pool_s8(const PoolParams& p, const int8_t* in, int8_t* out) {
  for (int32_t n = 0; n < p.batches; ++n) {
    const int8_t* image = in + n * p.in_h * p.in_w * p.channels;
    for (int32_t oy = 0; oy < p.out_h; ++oy) {
      for (int32_t ox = 0; ox < p.out_w; ++ox) {
        const PoolWindow w = ClippedWindow(p, oy, ox);
        for (int32_t c = 0; c < p.channels; ++c) {
          int32_t best = -128;
          for (int32_t y = w.y0; y < w.y1; ++y) {
            for (int32_t x = w.x0; x < w.x1; ++x) {
              best = Max(best, image[(y * p.in_w + x) * p.channels + c]);
            }
          }
          *out++ = static_cast<int8_t>(Clamp(best, p.act_min, p.act_max));
        }
      }
    }
  }
}


namespace {

// round(4096 / count), half away from zero, in integers: the weight of one tap of an average.
inline int32_t AverageWeight(int32_t count) { return (4096 + count / 2) / count; }

}  // namespace

float avg_pool_backward(const PoolParams& p, const int16_t* dy, float dy_scale, void* dx) {
  int32_t* acc = static_cast<int32_t*>(dx);
  const int32_t n_in = p.batches * p.in_h * p.in_w * p.channels;
  for (int32_t i = 0; i < n_in; ++i) acc[i] = 0;
  for (int32_t n = 0; n < p.batches; ++n) {
    int32_t* image = acc + n * p.in_h * p.in_w * p.channels;
    for (int32_t oy = 0; oy < p.out_h; ++oy) {
      for (int32_t ox = 0; ox < p.out_w; ++ox) {
        const PoolWindow w = ClippedWindow(p, oy, ox);
        const int32_t weight = AverageWeight((w.y1 - w.y0) * (w.x1 - w.x0));
        const int16_t* g = dy + ((n * p.out_h + oy) * p.out_w + ox) * p.channels;
        for (int32_t y = w.y0; y < w.y1; ++y) {
          for (int32_t x = w.x0; x < w.x1; ++x) {
            int32_t* tap = image + (y * p.in_w + x) * p.channels;
            for (int32_t c = 0; c < p.channels; ++c) tap[c] += g[c] * weight;
          }
        }
      }
    }
  }
  // dy_scale / 4096 is exact (a power of two), the same float the numpy reference computes.
  return GradRequantize(dx, n_in, dy_scale / 4096.0f);
}

float max_pool_backward(const PoolParams& p, const int8_t* in, const int16_t* dy, float dy_scale,
                        void* dx) {
  int32_t* acc = static_cast<int32_t*>(dx);
  const int32_t n_in = p.batches * p.in_h * p.in_w * p.channels;
  for (int32_t i = 0; i < n_in; ++i) acc[i] = 0;
  for (int32_t n = 0; n < p.batches; ++n) {
    const int32_t base = n * p.in_h * p.in_w * p.channels;
    for (int32_t oy = 0; oy < p.out_h; ++oy) {
      for (int32_t ox = 0; ox < p.out_w; ++ox) {
        const PoolWindow w = ClippedWindow(p, oy, ox);
        const int16_t* g = dy + ((n * p.out_h + oy) * p.out_w + ox) * p.channels;
        for (int32_t c = 0; c < p.channels; ++c) {
          // Strict '>' keeps the first maximum in scan order when values tie.
          int32_t best = base + (w.y0 * p.in_w + w.x0) * p.channels + c;
          for (int32_t y = w.y0; y < w.y1; ++y) {
            for (int32_t x = w.x0; x < w.x1; ++x) {
              const int32_t at = base + (y * p.in_w + x) * p.channels + c;
              if (in[at] > in[best]) best = at;
            }
          }
          acc[best] += g[c];
        }
      }
    }
  }
  return GradRequantize(dx, n_in, dy_scale);
}

}  // namespace ref
}  // namespace mt
