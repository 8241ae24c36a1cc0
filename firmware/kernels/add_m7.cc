// Cortex-M7 ADD: per-operand tables, then the short-form output stage (add_m7.h).
#include "kernels/add_m7.h"

#include "kernels/fixed_point.h"
#include "kernels/requantize_m7.h"

namespace mt::m7 {

namespace {

// Element strides of a tensor of shape `shape` stored contiguously, outermost first.
bool Contiguous(const int32_t shape[4], const int32_t strides[4]) {
  int32_t stride = 1;
  for (int32_t d = 3; d >= 0; --d) {
    if (shape[d] > 1 && strides[d] != stride) return false;
    stride *= shape[d];
  }
  return true;
}

template <Requant kMode>
void Elements(const AddParams& p, const OutputStage& s, const uint8_t* a, const uint8_t* b,
              int8_t* out, int32_t n, const int32_t* ta, const int32_t* tb) {
  const ShortForm f = kMode == Requant::kChecked ? ShortForm{} : ShortFormOf(s, 0);
  for (int32_t i = 0; i < n; ++i) {
    const int32_t sum = ta[a[i]] + tb[b[i]];
    if (kMode == Requant::kChecked) {
      const int32_t raw =
          MultiplyByQuantizedMultiplierSmallerThanOneExp(sum, p.out_multiplier, p.out_shift) +
          p.out_offset;
      out[i] = static_cast<int8_t>(Clamp(raw, p.act_min, p.act_max));
    } else {
      out[i] = RequantizeShort<kMode>(s, f, sum);
    }
  }
}

}  // namespace

void add_s8(const AddParams& p, const int8_t* a, const int8_t* b, int8_t* out,
            const int32_t* tables, const int32_t* requant) {
  if (!Contiguous(p.out_shape, p.a_strides) || !Contiguous(p.out_shape, p.b_strides)) {
    ref::add_s8(p, a, b, out);
    return;
  }
  const int32_t n = p.out_shape[0] * p.out_shape[1] * p.out_shape[2] * p.out_shape[3];
  const OutputStage s{nullptr, nullptr, p.out_offset, p.act_min, p.act_max, requant};
  const auto* ua = reinterpret_cast<const uint8_t*>(a);
  const auto* ub = reinterpret_cast<const uint8_t*>(b);
  WithRequant(ChooseRequant(requant, p.act_min, p.act_max), [&](auto mode_tag) {
    Elements<decltype(mode_tag)::value>(p, s, ua, ub, out, n, tables, tables + 256);
  });
}

}  // namespace mt::m7
