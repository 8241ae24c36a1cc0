// Cortex-M7 DEPTHWISE_CONV_2D: packed int16 taps, four channels per SXTB16 pair
// (depthwise_conv2d_m7.h).
#include "kernels/depthwise_conv2d_m7.h"

#include <type_traits>

#include "kernels/bias_update_m7.h"
#include "kernels/dsp.h"
#include "kernels/fixed_point.h"
#include "kernels/param_update.h"
#include "kernels/requantize_m7.h"

// Pre-allocation scheduling hoists the unrolled taps' loads and SXTB16s ahead of their uses and
// then spills them: a third more instructions here (the conv kernel gains from it, so only here).
#pragma GCC optimize("no-schedule-insns")

namespace mt::m7 {

namespace {

constexpr int32_t kMaxTaps = 7 * 7;
constexpr int32_t kMaxFilterSide = 7;  // the input gradient's filter-row table

// Four channels' accumulators, tap by tap: input word x (channels c..c+3 of one tap) against
// the tap's packed weights (w_c0, w_c2), (w_c1, w_c3).
struct Quad {
  int32_t a0, a1, a2, a3;

  void Tap(uint32_t x, uint32_t w_even, uint32_t w_odd) {
    const uint32_t even = dsp::ExtendEven(x);  // channels c, c + 2
    const uint32_t odd = dsp::ExtendOdd(x);    // channels c + 1, c + 3
    a0 = dsp::MulAddLow(even, w_even, a0);
    a2 = dsp::MulAddHigh(even, w_even, a2);
    a1 = dsp::MulAddLow(odd, w_odd, a1);
    a3 = dsp::MulAddHigh(odd, w_odd, a3);
  }
};

// A group's accumulators before its taps: the table's folded input offset, plus the bias.
inline Quad Start(const int32_t* group, const int32_t* bias, int32_t c) {
  Quad q{group[0], group[1], group[2], group[3]};
  if (bias != nullptr) {
    q.a0 = WrappingAdd(q.a0, bias[c]);
    q.a1 = WrappingAdd(q.a1, bias[c + 1]);
    q.a2 = WrappingAdd(q.a2, bias[c + 2]);
    q.a3 = WrappingAdd(q.a3, bias[c + 3]);
  }
  return q;
}

// kTwice: the table's weights and start values are doubled (depthwise_conv2d_m7.h).
template <Requant kMode, bool kTwice = false>
inline void Store(const OutputStage& s, const Quad& q, int8_t* out, int32_t c) {
  const int8_t y0 = Requantize<kMode, kTwice>(s, q.a0, c);
  const int8_t y1 = Requantize<kMode, kTwice>(s, q.a1, c + 1);
  const int8_t y2 = Requantize<kMode, kTwice>(s, q.a2, c + 2);
  const int8_t y3 = Requantize<kMode, kTwice>(s, q.a3, c + 3);
  out[c] = y0;
  out[c + 1] = y1;
  out[c + 2] = y2;
  out[c + 3] = y3;
}

// Channels past the last whole group of four: the reference arithmetic on the plain filter.
// Inlined by force: once the file holds the trained-channel kernels too, GCC's unit-growth
// limit leaves it a call in every pixel (a tenth more instructions per layer).
template <Requant kMode>
[[gnu::always_inline]] inline void TailChannels(const DepthwiseConv2dParams& p,
                                                const OutputStage& s, const int8_t* const* src,
                                                int32_t taps, const int8_t* filter,
                                                const int32_t* bias, int8_t* out) {
  for (int32_t c = p.output_c & ~3; c < p.output_c; ++c) {
    int32_t acc = bias != nullptr ? bias[c] : 0;
    for (int32_t t = 0; t < taps; ++t) {
      acc = WrappingAdd(acc, filter[t * p.output_c + c] * (src[t][c] + p.input_offset));
    }
    out[c] = Requantize<kMode>(s, acc, c);
  }
}

// One output pixel whose taps read src[t] (an input pixel, or the zero-point row for a tap in
// the padding). kTaps == 0: the tap count is taps (run time).
// Channels from c_begin (a multiple of 4; the trained ones before it run TrainedGroups) on.
template <int32_t kTaps, Requant kMode, bool kTwice = false>
void Pixel(const DepthwiseConv2dParams& p, const OutputStage& s, const int8_t* const* src,
           int32_t taps, const int8_t* filter, const int32_t* bias, const int32_t* group_bias,
           const int32_t* table, int8_t* out, int32_t c_begin = 0) {
  const int32_t n = kTaps != 0 ? kTaps : taps;
  const int32_t body = p.output_c & ~3;
  const int32_t* group = table + c_begin / 4 * (4 + 2 * n);
  for (int32_t c = c_begin; c < body; c += 4) {
    Quad q = Start(group, group_bias, c);
    const uint32_t* w = reinterpret_cast<const uint32_t*>(group + 4);
#pragma GCC unroll 49
    for (int32_t t = 0; t < n; ++t) {
      uint32_t w_even, w_odd;
      dsp::LoadPair(w, w_even, w_odd);
      q.Tap(dsp::Load4(src[t] + c), w_even, w_odd);
    }
    group = reinterpret_cast<const int32_t*>(w);
    Store<kMode, kTwice>(s, q, out, c);
  }
  TailChannels<kMode>(p, s, src, n, filter, bias, out);
}

// An output pixel of a 3x3 filter whose taps are all inside the image:
// rows at `at`, at + row, at + 2 row; columns at 0, step, 2 step bytes. Register-offset loads
// replace the tap pointer table.
template <Requant kMode, bool kTwice>
void Interior3x3(const DepthwiseConv2dParams& p, const OutputStage& s, const int8_t* at,
                 int32_t row, int32_t step, const int32_t* group_bias, const int32_t* table,
                 int8_t* out) {
  const int32_t body = p.output_c & ~3;
  const int32_t* group = table;
  for (int32_t c = 0; c < body; c += 4, at += 4) {
    Quad q = Start(group, group_bias, c);
    const uint32_t* w = reinterpret_cast<const uint32_t*>(group + 4);
#pragma GCC unroll 3
    for (int32_t fy = 0; fy < 3; ++fy) {
      const int8_t* tap_row = at + fy * row;
#pragma GCC unroll 3
      for (int32_t fx = 0; fx < 3; ++fx) {
        uint32_t w_even, w_odd;
        dsp::LoadPair(w, w_even, w_odd);
        q.Tap(dsp::Load4(tap_row + fx * step), w_even, w_odd);
      }
    }
    group = reinterpret_cast<const int32_t*>(w);
    Store<kMode, kTwice>(s, q, out, c);
  }
}

#if MT_HAVE_DSP
// What Interior3x3Saturate reads, by the offsets its assembly names.
struct InteriorJob {
  const int8_t* at;        // +0: the first pixel's tap (0, 0), channel 0
  int32_t step;            // +4: bytes from one tap column to the next
  int32_t row;             // +8: bytes from one tap row to the next
  const int32_t* table;    // +12: the flash table's first group
  const int32_t* requant;  // +16: the first channel's short-form constants
  int8_t* out;             // +20: the next channel's output (the pixels' outputs are adjacent)
  const int8_t* end;       // +24: (the loop's) `at` past the pixel's last group
  int32_t channels;        // +28
  int32_t advance;         // +32: bytes from a pixel's `at` past its groups to the next's
  const int32_t* next;     // +36: (the loop's) the next channel's short-form constants
  int32_t pixels;          // +40: pixels left
};

// Interior3x3 for a run of adjacent output pixels, with the bias in the table and one SSAT,
// in assembly: GCC spends ~140 instructions a group of four channels on it (tap addresses
// and the requantization constants reloaded through the stack, three loads per channel's
// constants) and ~70 a pixel around the groups; this ~113 and ~15: per tap one load, one LDRD
// of its weights, two SXTB16 and four SMLABB/SMLATT; per channel one LDM of its constants and
// five instructions (four with kTwice).
template <bool kTwice>
[[gnu::noinline]] void Interior3x3Saturate(InteriorJob* job) {
  register InteriorJob* j asm("r0") = job;
#define MT_TAP(addr)                                                                       \
  "ldr r9, " addr "\n\t"                                                                    \
  "ldrd r11, r12, [r8], #8\n\t"                                                             \
  "sxtb16 r10, r9, ror #8\n\t"                                                              \
  "sxtb16 r9, r9\n\t"                                                                       \
  "smlabb r4, r9, r11, r4\n\t"                                                              \
  "smlatt r6, r9, r11, r6\n\t"                                                              \
  "smlabb r5, r10, r12, r5\n\t"                                                             \
  "smlatt r7, r10, r12, r7\n\t"
#define MT_REQUANT(acc)                                                                    \
  "ldmia r3!, {r9, r10, r11}\n\t"                                                           \
  ".if %c[twice]\n\t"                                                                       \
  "smmlar r12, " acc ", r9, r11\n\t"                                                        \
  ".else\n\t"                                                                               \
  "lsl r12, " acc ", #1\n\t"                                                                \
  "smmlar r12, r12, r9, r11\n\t"                                                            \
  ".endif\n\t"                                                                              \
  "add r12, r12, " acc ", asr #31\n\t"                                                      \
  "asr r12, r12, r10\n\t"                                                                   \
  "ssat " acc ", #8, r12\n\t"
  asm volatile(
      "mov lr, r0\n\t"
      "ldr r1, [lr, #4]\n\t"
      "ldr r2, [lr, #8]\n\t"
      "ldr r0, [lr, #0]\n"
      "0:\n\t"  // a pixel
      "ldr r8, [lr, #12]\n\t"
      "ldr r3, [lr, #16]\n\t"
      "str r3, [lr, #36]\n\t"
      "ldr r3, [lr, #28]\n\t"
      "add r3, r3, r0\n\t"
      "str r3, [lr, #24]\n"
      "1:\n\t"  // a group of four channels
      "ldmia r8!, {r4, r5, r6, r7}\n\t"
      MT_TAP("[r0]") MT_TAP("[r0, r1]") MT_TAP("[r0, r1, lsl #1]")
      "add r3, r0, r2\n\t"
      MT_TAP("[r3]") MT_TAP("[r3, r1]") MT_TAP("[r3, r1, lsl #1]")
      "add r3, r3, r2\n\t"
      MT_TAP("[r3]") MT_TAP("[r3, r1]") MT_TAP("[r3, r1, lsl #1]")
      "ldr r3, [lr, #36]\n\t"
      MT_REQUANT("r4") MT_REQUANT("r5") MT_REQUANT("r6") MT_REQUANT("r7")
      "str r3, [lr, #36]\n\t"
      "ldr r3, [lr, #20]\n\t"
      "strb r4, [r3, #0]\n\t"
      "strb r5, [r3, #1]\n\t"
      "strb r6, [r3, #2]\n\t"
      "strb r7, [r3, #3]\n\t"
      "add r3, r3, #4\n\t"
      "str r3, [lr, #20]\n\t"
      "add r0, r0, #4\n\t"
      "ldr r3, [lr, #24]\n\t"
      "cmp r0, r3\n\t"
      "bne 1b\n\t"
      "ldr r3, [lr, #32]\n\t"
      "add r0, r0, r3\n\t"
      "ldr r3, [lr, #40]\n\t"
      "subs r3, r3, #1\n\t"
      "str r3, [lr, #40]\n\t"
      "bne 0b"
      : "+r"(j)
      : [twice] "i"(kTwice ? 1 : 0)
      : "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr", "cc",
        "memory");
#undef MT_REQUANT
#undef MT_TAP
}
#endif

// The input pixel each tap of the output pixel whose window starts at (in_y0, in_x0) reads, or
// the zero-point row for a tap in the padding.
[[gnu::always_inline]] inline void TapSources(const DepthwiseConv2dParams& p,
                                              const int8_t* image, int32_t row_bytes,
                                              int32_t in_y0, int32_t in_x0,
                                              const int8_t* zero_row, const int8_t** src) {
  int32_t t = 0;
  for (int32_t fy = 0; fy < p.filter_h; ++fy) {
    const int32_t iy = in_y0 + fy * p.dilation_h;
    const bool row_inside = iy >= 0 && iy < p.input_h;
    for (int32_t fx = 0; fx < p.filter_w; ++fx, ++t) {
      const int32_t ix = in_x0 + fx * p.dilation_w;
      src[t] = row_inside && ix >= 0 && ix < p.input_w ? image + iy * row_bytes + ix * p.input_c
                                                       : zero_row;
    }
  }
}

template <int32_t kTaps, Requant kMode, bool kTwice>
void Run(const DepthwiseConv2dParams& p, const int8_t* input, const int8_t* filter,
         const int32_t* bias, int8_t* output, const int32_t* table, const int32_t* requant,
         bool bias_in_table, const int8_t* zero_row) {
  // The whole groups' bias, unless the table's start values hold it already.
  const int32_t* group_bias = bias_in_table ? nullptr : bias;
  const OutputStage s{p.multiplier, p.shift, p.output_offset, p.act_min, p.act_max, requant};
  const int32_t taps = p.filter_h * p.filter_w;
  const int32_t row_bytes = p.input_w * p.input_c;
  // The 3x3 interior path needs every channel in whole groups (no tail to run per pixel).
  const bool interior_path = kTaps == 9 && p.filter_w == 3 && (p.output_c & 3) == 0;
  const int8_t* src[kMaxTaps];
#if MT_HAVE_DSP
  InteriorJob job{nullptr,  p.dilation_w * p.input_c, p.dilation_h * row_bytes,
                  table,    requant,
                  nullptr,  nullptr,
                  p.output_c, p.stride_w * p.input_c - p.output_c,
                  nullptr,  0};
#endif
  int8_t* out = output;
  for (int32_t b = 0; b < p.batches; ++b) {
    const int8_t* image = input + b * p.input_h * row_bytes;
    for (int32_t oy = 0; oy < p.output_h; ++oy) {
      const int32_t in_y0 = oy * p.stride_h - p.pad_h;
      const bool rows_inside =
          in_y0 >= 0 && in_y0 + (p.filter_h - 1) * p.dilation_h < p.input_h;
      for (int32_t ox = 0; ox < p.output_w; ++ox, out += p.output_c) {
        const int32_t in_x0 = ox * p.stride_w - p.pad_w;
        if (interior_path && rows_inside && in_x0 >= 0 &&
            in_x0 + 2 * p.dilation_w < p.input_w) {
          const int8_t* at = image + in_y0 * row_bytes + in_x0 * p.input_c;
#if MT_HAVE_DSP
          if (kMode == Requant::kSaturate && group_bias == nullptr) {
            // The run of interior pixels from ox on, in one call.
            int32_t n = 1;
            while (ox + n < p.output_w &&
                   (ox + n) * p.stride_w - p.pad_w + 2 * p.dilation_w < p.input_w) {
              ++n;
            }
            job.at = at;
            job.out = out;
            job.pixels = n;
            Interior3x3Saturate<kTwice>(&job);
            ox += n - 1;
            out += (n - 1) * p.output_c;
            continue;
          }
#endif
          Interior3x3<kMode, kTwice>(p, s, at, p.dilation_h * row_bytes, p.dilation_w * p.input_c,
                             group_bias, table, out);
          continue;
        }
        TapSources(p, image, row_bytes, in_y0, in_x0, zero_row, src);
        Pixel<kTaps, kMode, kTwice>(p, s, src, taps, filter, bias, group_bias, table, out);
      }
    }
  }
}

// The tap loop unrolled for the common filter sizes.
template <Requant kMode, bool kTwice>
void Dispatch(const DepthwiseConv2dParams& p, const int8_t* input, const int8_t* filter,
              const int32_t* bias, int8_t* output, const int32_t* table,
              const int32_t* requant, bool bias_in_table, const int8_t* zeros) {
  if (p.filter_h == 3 && p.filter_w == 3) {
    Run<9, kMode, kTwice>(p, input, filter, bias, output, table, requant, bias_in_table, zeros);
  } else if (p.filter_h == 5 && p.filter_w == 5) {
    Run<25, kMode, kTwice>(p, input, filter, bias, output, table, requant, bias_in_table, zeros);
  } else {
    Run<0, kMode, kTwice>(p, input, filter, bias, output, table, requant, bias_in_table, zeros);
  }
}

// ---- layers with trained channels ----
//
// The trained channels' weights move, so the flash table cannot hold them. A whole group of
// four trained channels reads its taps from train_filter (stride n_train) as words SXTB16
// unpacks into the table's lane pairs, and the input with the offset added (SXTAB16; a padded
// tap's zero-point row then adds 0), so it needs no start values. The group holding both
// trained and frozen channels runs the reference arithmetic, each channel reading its own
// weight source; the frozen groups after it run Pixel's loop on the table. Kept apart from
// Run: sharing its loop cost the frozen-only layers a tenth more instructions.

inline int32_t TrainedEnd(const DepthwiseConv2dParams& p) { return (p.n_train + 3) / 4 * 4; }

template <Requant kMode>
void TrainedGroups(const DepthwiseConv2dParams& p, const OutputStage& s,
                   const int8_t* const* src, int32_t taps, const int8_t* filter,
                   const int32_t* bias, int8_t* out) {
  const uint32_t offset2 = dsp::Splat16(p.input_offset);
  const int8_t* const weights = p.train_filter;
  const int32_t whole = p.n_train & ~3;
  for (int32_t c = 0; c < whole; c += 4) {
    Quad q = bias != nullptr ? Quad{bias[c], bias[c + 1], bias[c + 2], bias[c + 3]}
                             : Quad{0, 0, 0, 0};
    for (int32_t t = 0; t < taps; ++t) {
      const uint32_t w = dsp::Load4(weights + t * p.n_train + c);
      const uint32_t x = dsp::Load4(src[t] + c);
      const uint32_t x_even = dsp::ExtendEvenAdd(x, offset2);
      const uint32_t x_odd = dsp::ExtendOddAdd(x, offset2);
      const uint32_t w_even = dsp::ExtendEven(w), w_odd = dsp::ExtendOdd(w);
      q.a0 = dsp::MulAddLow(x_even, w_even, q.a0);
      q.a2 = dsp::MulAddHigh(x_even, w_even, q.a2);
      q.a1 = dsp::MulAddLow(x_odd, w_odd, q.a1);
      q.a3 = dsp::MulAddHigh(x_odd, w_odd, q.a3);
    }
    Store<kMode>(s, q, out, c);
  }
  for (int32_t c = whole; c < TrainedEnd(p); ++c) {
    const bool trained = c < p.n_train;
    const int8_t* w = trained ? weights + c : filter + c;
    const int32_t stride = trained ? p.n_train : p.output_c;
    int32_t acc = bias != nullptr ? bias[c] : 0;
    for (int32_t t = 0; t < taps; ++t) {
      acc = WrappingAdd(acc, w[t * stride] * (src[t][c] + p.input_offset));
    }
    out[c] = Requantize<Requant::kChecked>(s, acc, c);
  }
}

template <Requant kMode, Requant kTrainedMode>
void RunTrained(const DepthwiseConv2dParams& p, const int8_t* input, const int8_t* filter,
                const int32_t* bias, int8_t* output, const int32_t* table,
                const int32_t* requant, bool bias_in_table, const int8_t* zero_row) {
  const int32_t* group_bias = bias_in_table ? nullptr : bias;
  const OutputStage s{p.multiplier, p.shift, p.output_offset, p.act_min, p.act_max, requant};
  const int32_t taps = p.filter_h * p.filter_w;
  const int32_t row_bytes = p.input_w * p.input_c;
  const int8_t* src[kMaxTaps];
  int8_t* out = output;
  for (int32_t b = 0; b < p.batches; ++b) {
    const int8_t* image = input + b * p.input_h * row_bytes;
    for (int32_t oy = 0; oy < p.output_h; ++oy) {
      for (int32_t ox = 0; ox < p.output_w; ++ox, out += p.output_c) {
        TapSources(p, image, row_bytes, oy * p.stride_h - p.pad_h, ox * p.stride_w - p.pad_w,
                   zero_row, src);
        TrainedGroups<kTrainedMode>(p, s, src, taps, filter, bias, out);
        Pixel<0, kMode>(p, s, src, taps, filter, bias, group_bias, table, out, TrainedEnd(p));
      }
    }
  }
}

// ---- 3x3 at stride 1: input rows staged as int16 lanes ----
//
// Four channels at a time, the three input rows an output row reads wait as int16 (input offset
// added) in a ring laid out [channel][column][lane]: lanes 0-2 hold the rows whose index mod 3
// is the lane, lane 3 repeats lane 2 of the next column, and a zero column either side stands
// for the padding. Moving down one output row stages one new row. An output is then three loads
// and five SMLADs: (lane 0, lane 1) against the two rows' weights at each of the three filter
// columns, (lane 2, lane 3) against the third row's first two and lane 2 alone against its last.
// The weights, packed for each of the three row orders once per call, stay in registers along an
// output row; the tap loop above takes eight instructions per tap of four channels.

constexpr int32_t kRingLanes = 4;

// One channel's packed weights in one row order: a[fx] = (w[fy0][fx], w[fy1][fx]),
// b01 = (w[fy2][0], w[fy2][1]), b2 = w[fy2][2], fy_l the filter row lane l holds.
struct RingTaps {
  uint32_t a0, a1, a2, b01, b2;
};
static_assert(sizeof(RingTaps) == kDepthwiseRingTapWords * 4, "DepthwiseRingScratchBytes");

// n columns of four channels from `in` (input pixels in_step bytes apart) into ring lane t on,
// the four channels' lanes `channel` int16 apart. kEcho: also into lane 3 of the column before
// (lane 2's repeat).
template <bool kEcho>
void StageColumns(const int8_t* in, int32_t in_step, int32_t n, uint32_t offset2, int16_t* t,
                  int32_t channel) {
  int16_t* const end = t + n * kRingLanes;
#if MT_HAVE_DSP
  if (t != end) {
    // GCC keeps a pointer per channel and steps each (17 instructions a column; here 12, and
    // 16 with the repeat, which stores through a second pointer 6 bytes back).
    const int32_t c1 = channel * 2, c2 = channel * 4, c3 = channel * 6;  // bytes
    uint32_t x, even, odd;
    int16_t* echo = t + 1 - kRingLanes;
#define MT_STAGE_LANES(ptr)                  \
  "lsr %[x], %[even], #16\n\t"               \
  "strh %[x], [" ptr ", %[c2]]\n\t"           \
  "lsr %[x], %[odd], #16\n\t"                \
  "strh %[x], [" ptr ", %[c3]]\n\t"           \
  "strh %[odd], [" ptr ", %[c1]]\n\t"         \
  "strh %[even], [" ptr "], #8\n\t"
    asm volatile(
        "1:\n\t"
        "ldr %[x], [%[in]]\n\t"
        "add %[in], %[in], %[in_step]\n\t"
        "sxtab16 %[even], %[offset2], %[x]\n\t"         // channels 0, 2
        "sxtab16 %[odd], %[offset2], %[x], ror #8\n\t"  // channels 1, 3
        MT_STAGE_LANES("%[t]")
        ".if %c[repeat]\n\t"
        MT_STAGE_LANES("%[echo]")
        ".endif\n\t"
        "cmp %[t], %[end]\n\t"
        "bne 1b"
        : [t] "+r"(t), [echo] "+r"(echo), [in] "+r"(in), [x] "=&r"(x), [even] "=&r"(even),
          [odd] "=&r"(odd)
        : [in_step] "r"(in_step), [offset2] "r"(offset2), [c1] "r"(c1), [c2] "r"(c2),
          [c3] "r"(c3), [end] "r"(end), [repeat] "i"(kEcho ? 1 : 0)
        : "cc", "memory");
#undef MT_STAGE_LANES
  }
#else
  int16_t* t1 = t + channel;
  int16_t* t2 = t1 + channel;
  int16_t* t3 = t2 + channel;
  for (; t != end; t += kRingLanes, t1 += kRingLanes, t2 += kRingLanes, t3 += kRingLanes,
                   in += in_step) {
    const uint32_t x = dsp::Load4(in);
    const uint32_t even = dsp::ExtendEvenAdd(x, offset2);  // channels 0, 2
    const uint32_t odd = dsp::ExtendOddAdd(x, offset2);    // channels 1, 3
    t[0] = static_cast<int16_t>(even);
    t1[0] = static_cast<int16_t>(odd);
    t2[0] = static_cast<int16_t>(even >> 16);
    t3[0] = static_cast<int16_t>(odd >> 16);
    if (kEcho) {
      t[1 - kRingLanes] = static_cast<int16_t>(even);
      t1[1 - kRingLanes] = static_cast<int16_t>(odd);
      t2[1 - kRingLanes] = static_cast<int16_t>(even >> 16);
      t3[1 - kRingLanes] = static_cast<int16_t>(odd >> 16);
    }
  }
#endif
}

// Input row iy of channels c0..c0+3 into lane `lane`, zeros where iy is outside the image.
void StageRow(const DepthwiseConv2dParams& p, const int8_t* image, int32_t iy, int32_t c0,
              int32_t lane, int16_t* ring) {
  const int32_t channel = DepthwiseRingColumns(p) * kRingLanes;
  int16_t* const t = ring + kRingLanes + lane;  // channel 0, column 1 (input column 0)
  if (iy < 0 || iy >= p.input_h) {
    const int32_t echo = lane == 2 ? 1 - kRingLanes : 0;
    for (int32_t k = 0; k < 4; ++k) {
      for (int32_t x = 0; x < p.input_w; ++x) {
        t[k * channel + x * kRingLanes] = 0;
        t[k * channel + x * kRingLanes + echo] = 0;
      }
    }
    return;
  }
  const int8_t* in = image + iy * p.input_w * p.input_c + c0;
  const uint32_t offset2 = dsp::Splat16(p.input_offset);
  if (lane == 2) {
    StageColumns<true>(in, p.input_c, p.input_w, offset2, t, channel);
  } else {
    StageColumns<false>(in, p.input_c, p.input_w, offset2, t, channel);
  }
}

// Channel c's taps in row order r, where lane l holds filter row (l - r) mod 3 (the rows of
// output row oy sit at order (oy - pad_h) mod 3), times `scale` (2 on the short form, which
// then skips its doubling of the accumulator: RingRow).
RingTaps PackRingTaps(const DepthwiseConv2dParams& p, const int8_t* filter, int32_t c,
                      int32_t r, int32_t scale) {
  const int8_t* row0 = filter + (3 - r) % 3 * 3 * p.output_c + c;
  const int8_t* row1 = filter + (4 - r) % 3 * 3 * p.output_c + c;
  const int8_t* row2 = filter + (5 - r) % 3 * 3 * p.output_c + c;
  const int32_t n = p.output_c, k = scale;
  return RingTaps{dsp::Pack(k * row0[0], k * row1[0]), dsp::Pack(k * row0[n], k * row1[n]),
                  dsp::Pack(k * row0[2 * n], k * row1[2 * n]),
                  dsp::Pack(k * row2[0], k * row2[n]), dsp::Pack(k * row2[2 * n], 0)};
}

// One output row of one channel: out[ox * step] for ox < n, from the ring at column t on. On
// the short form the taps and `start` are doubled (RunRing3x3), so the accumulator is too.
template <Requant kMode>
void RingRow(const OutputStage& s, int32_t c, const RingTaps& w, int32_t start,
             const uint32_t* t, int32_t n, int8_t* out, int32_t step) {
  const uint32_t* const end = t + n * 2;
  for (; t != end; t += 2, out += step) {
    int32_t acc = dsp::Dot2(t[0], w.a0, start);
    acc = dsp::Dot2(t[1], w.b01, acc);
    acc = dsp::Dot2(t[2], w.a1, acc);
    acc = dsp::Dot2(t[4], w.a2, acc);
    acc = dsp::MulAddLow(t[5], w.b2, acc);
    *out = Requantize<kMode, kMode != Requant::kChecked>(s, acc, c);
  }
}

#if MT_HAVE_DSP
// The same with one SSAT for the clamp, written out: GCC spills the taps and the short form's
// constants and loads them back for every output (27 instructions an output, here 18).
template <>
[[gnu::noinline]] void RingRow<Requant::kSaturate>(const OutputStage& s, int32_t c,
                                                   const RingTaps& w, int32_t start,
                                                   const uint32_t* t, int32_t n, int8_t* out,
                                                   int32_t step) {
  if (n <= 0) return;
  const uint32_t* const end = t + n * 2;
  const ShortForm f = ShortFormOf(s, c);
  int32_t acc, x0, x1;
  asm volatile(
      "1:\n\t"
      "ldrd %[x0], %[x1], [%[t]], #8\n\t"  // column ox: lanes (0, 1), (2, 3)
      "smlad %[acc], %[x0], %[a0], %[start]\n\t"
      "smlad %[acc], %[x1], %[b01], %[acc]\n\t"
      "ldr %[x0], [%[t]]\n\t"  // column ox + 1: lanes (0, 1)
      "smlad %[acc], %[x0], %[a1], %[acc]\n\t"
      "ldrd %[x0], %[x1], [%[t], #8]\n\t"  // column ox + 2
      "smlad %[acc], %[x0], %[a2], %[acc]\n\t"
      "smlabb %[acc], %[x1], %[b2], %[acc]\n\t"
      "smmlar %[x0], %[acc], %[m], %[k]\n\t"  // RequantizeShort, acc doubled
      "add %[x0], %[x0], %[acc], asr #31\n\t"
      "asr %[x0], %[x0], %[e]\n\t"
      "ssat %[x0], #8, %[x0]\n\t"
      "ldr %[x1], %[step]\n\t"
      "strb %[x0], [%[out]]\n\t"
      "add %[out], %[out], %[x1]\n\t"
      "ldr %[x1], %[end]\n\t"
      "cmp %[t], %[x1]\n\t"
      "bne 1b"
      : [t] "+r"(t), [out] "+r"(out), [acc] "=&r"(acc), [x0] "=&r"(x0), [x1] "=&r"(x1)
      : [a0] "r"(w.a0), [b01] "r"(w.b01), [a1] "r"(w.a1), [a2] "r"(w.a2), [b2] "r"(w.b2),
        [start] "r"(start), [m] "r"(f.multiplier), [k] "r"(f.constant), [e] "r"(f.right),
        [step] "m"(step), [end] "m"(end)
      : "cc", "memory");
}
#endif

template <Requant kMode>
void RunRing3x3(const DepthwiseConv2dParams& p, const int8_t* input, const int8_t* filter,
                const int32_t* bias, int8_t* output, const int32_t* requant, int8_t* scratch) {
  const OutputStage s{p.multiplier, p.shift, p.output_offset, p.act_min, p.act_max, requant};
  // |2 acc| < 2^30 on the short form (its precondition), so doubling is exact there.
  constexpr int32_t kScale = kMode == Requant::kChecked ? 1 : 2;
  const int32_t channel = DepthwiseRingColumns(p) * kRingLanes;
  auto* ring = reinterpret_cast<int16_t*>(scratch);
  auto* taps = reinterpret_cast<RingTaps(*)[3]>(scratch + DepthwiseRingBytes(p));
  // What StageRow never writes stays 0: the border columns and lane 3 of the last input
  // column (the right border's lane 2).
  for (int32_t k = 0; k < kRingLanes; ++k) {
    int16_t* const row = ring + k * channel;
    for (int32_t i = 0; i < kRingLanes; ++i) row[i] = 0;
    for (int32_t i = channel - kRingLanes - 1; i < channel; ++i) row[i] = 0;
  }
  for (int32_t b = 0; b < p.batches; ++b) {
    const int8_t* image = input + b * p.input_h * p.input_w * p.input_c;
    int8_t* out_image = output + b * p.output_h * p.output_w * p.output_c;
    for (int32_t c0 = 0; c0 < p.output_c; c0 += kRingLanes) {
      bool packed[3] = {false, false, false};  // the row orders in taps
      int32_t held[3] = {INT32_MIN, INT32_MIN, INT32_MIN};  // the row in each lane
      for (int32_t oy = 0; oy < p.output_h; ++oy) {
        const int32_t y0 = oy - p.pad_h;
        for (int32_t iy = y0; iy < y0 + 3; ++iy) {
          const int32_t lane = (iy % 3 + 3) % 3;
          if (held[lane] != iy) {
            StageRow(p, image, iy, c0, lane, ring);
            held[lane] = iy;
          }
        }
        const int32_t order = (y0 % 3 + 3) % 3;
        if (!packed[order]) {  // a band of one row needs one order
          for (int32_t k = 0; k < kRingLanes; ++k) {
            taps[k][order] = PackRingTaps(p, filter, c0 + k, order, kScale);
          }
          packed[order] = true;
        }
        for (int32_t k = 0; k < kRingLanes; ++k) {
          const int32_t c = c0 + k;
          const auto* t = reinterpret_cast<const uint32_t*>(
              ring + k * channel + (1 - p.pad_w) * kRingLanes);
          RingRow<kMode>(s, c, taps[k][order], bias != nullptr ? kScale * bias[c] : 0, t,
                         p.output_w,
                         out_image + oy * p.output_w * p.output_c + c, p.output_c);
        }
      }
    }
  }
}

}  // namespace

void depthwise_conv2d_s8(const DepthwiseConv2dParams& p, const int8_t* input,
                         const int8_t* filter, const int32_t* bias, int8_t* output,
                         const int32_t* table, const int32_t* requant, bool bias_in_table,
                         int8_t* scratch, int32_t scratch_bytes) {
  static_assert(kMaxTaps == 7 * 7, "DepthwiseServes bounds the taps by the pointer table");
  if (!DepthwiseServes(p) || scratch_bytes < DepthwiseScratchBytes(p)) {
    ref::depthwise_conv2d_s8(p, input, filter, bias, output);
    return;
  }
  const RequantPlan plan = PlanRequant(requant, p.output_c, bias, p.act_min, p.act_max);
  const Requant mode = plan.mode;
  if (p.n_train == 0 && DepthwiseRing3x3(p) && scratch_bytes >= DepthwiseRingScratchBytes(p) &&
      (reinterpret_cast<uintptr_t>(scratch) & 3) == 0) {
    WithRequant(mode, [&](auto mode_tag) {
      RunRing3x3<decltype(mode_tag)::value>(p, input, filter, bias, output, requant, scratch);
    });
    return;
  }
  for (int32_t c = 0; c < p.input_c; ++c) scratch[c] = static_cast<int8_t>(-p.input_offset);
  if (p.n_train > 0) {
    // The trained channels' weights move: the short form only where the host bounded them.
    const Requant trained_mode = plan.trained_short ? mode : Requant::kChecked;
    WithRequant(mode, [&](auto mode_tag) {
      WithRequant(trained_mode, [&](auto trained_tag) {
        RunTrained<decltype(mode_tag)::value, decltype(trained_tag)::value>(
            p, input, filter, bias, output, table, requant, bias_in_table, scratch);
      });
    });
    return;
  }
  // The host doubled the table (m7_table) for a frozen layer with its bias in the table and
  // the short form: PlanRequant then never falls back to the checked form.
  const bool twice = bias_in_table && requant != nullptr;
  WithRequant(mode, [&](auto mode_tag) {
    constexpr Requant kMode = decltype(mode_tag)::value;
    if constexpr (kMode != Requant::kChecked) {
      if (twice) {
        Dispatch<kMode, true>(p, input, filter, bias, output, table, requant, bias_in_table,
                              scratch);
        return;
      }
    }
    Dispatch<kMode, false>(p, input, filter, bias, output, table, requant, bias_in_table,
                           scratch);
  });
}

// ---- backward ----

namespace {

constexpr int32_t kLanes = 4;  // channels per input-gradient block (the wide form's: below)
constexpr int32_t kWideLanes = kDepthwiseWideLanes;

// Where the pieces of depthwise_conv2d_input_grad's scratch start (depthwise_conv2d_m7.h).
// A block of L lanes (4, or kWideLanes) keeps its taps as [group of 4][tap][2] int16 lane pairs.
struct GradScratch {
  int16_t* ring;     // [ring rows][output_w][4] folded output gradient
  uint32_t* taps;    // [filter_h * filter_w][2] the block's weights as int16 lane pairs
  int16_t* columns;  // [input_w][filter_w] ring offset of tap fx's output column, or -1
  int16_t* padded_ring;  // the roomy scratch's ring with zero margins (kPadded), or null
  int16_t* wide_ring;    // the widest scratch's: as padded_ring, kWideLanes lanes, or null
  uint32_t* wide_taps;   // its block's taps, [kWideLanes / 4][filter_h * filter_w][2]

  GradScratch(const DepthwiseConv2dParams& p, int8_t* scratch, bool padded, bool wide)
      : ring(reinterpret_cast<int16_t*>(scratch)),
        taps(reinterpret_cast<uint32_t*>(scratch + DepthwiseGradRingRows(p) * p.output_w *
                                                       kLanes * 2)),
        columns(reinterpret_cast<int16_t*>(taps + 2 * p.filter_h * p.filter_w)),
        padded_ring(padded ? reinterpret_cast<int16_t*>(
                                 scratch + DepthwiseStagedInputGradScratchBytes(p))
                           : nullptr),
        wide_ring(wide ? reinterpret_cast<int16_t*>(
                             scratch + DepthwiseStagedInputGradScratchBytes(p))
                       : nullptr),
        wide_taps(wide ? reinterpret_cast<uint32_t*>(
                             wide_ring + DepthwiseGradRingRows(p) *
                                             (p.output_w + 2 * (p.filter_w - 1)) * kWideLanes)
                       : nullptr) {}
};

// The output column each tap of each input column reads, once per call: the tap loop then
// needs no division and no bounds test beyond one sign.
void FillColumns(const DepthwiseConv2dParams& p, int16_t* columns) {
  for (int32_t ix = 0; ix < p.input_w; ++ix) {
    for (int32_t fx = 0; fx < p.filter_w; ++fx) {
      int32_t ox = 0;
      const bool reads =
          TapOrigin(ix, fx, p.pad_w, p.dilation_w, p.stride_w, p.output_w, &ox);
      columns[ix * p.filter_w + fx] = static_cast<int16_t>(reads ? ox * kLanes : -1);
    }
  }
}

// Output row oy of batch b, channels [c0, c0 + n), folded into one ring row of kL int16 lanes
// (lanes past n hold 0, so they add nothing).
template <int32_t kL>
void FoldRow(const DepthwiseConv2dParams& p, const int16_t* dy, const float* ratio, int32_t b,
             int32_t oy, int32_t c0, int32_t n, int16_t* row) {
  const int16_t* g = dy + ((b * p.output_h + oy) * p.output_w) * p.output_c + c0;
  for (int32_t ox = 0; ox < p.output_w; ++ox, g += p.output_c, row += kL) {
    for (int32_t j = 0; j < kL; ++j) {
      row[j] = static_cast<int16_t>(j < n ? FoldGrad(g[j], ratio, c0 + j) : 0);
    }
  }
}

// Channels [c0, c0 + n) (n <= kL) of every input pixel, taps from `weights` (tap t of channel c
// at weights[t * stride + c], one weight source per call as in the reference): sink(i, acc)
// for each of their input-gradient sums.
// kPadded (stride and dilation 1 along the width, given the roomy scratch): each ring row
// has filter_w - 1 zero columns on either side, so every tap of every input column reads a
// column of the row and the tap loop needs no column table and no test. kL: lanes per ring
// column, 4, or kWideLanes (padded only), whose groups of four share each pixel's row walk.
template <int32_t kL, bool kPadded, typename Sink>
void InputGradBlock(const DepthwiseConv2dParams& p, const int8_t* weights, int32_t stride,
                    const int16_t* dy, const float* ratio, int32_t c0, int32_t n,
                    const GradScratch& s, const Sink& sink) {
  static_assert(kL == kLanes || kPadded, "the wide form reads zero-margined rows only");
  const Sink local = sink;  // (train_math.h, the sinks)
  const int32_t tap_count = p.filter_h * p.filter_w;
  const int32_t groups = kL == kLanes ? 1 : (n + 3) / 4;
  uint32_t* const taps = kL == kLanes ? s.taps : s.wide_taps;
  for (int32_t g = 0; g < groups; ++g) {
    for (int32_t t = 0; t < tap_count; ++t) {
      int32_t w[4] = {};
      for (int32_t j = 0; j < 4 && 4 * g + j < n; ++j) w[j] = weights[t * stride + c0 + 4 * g + j];
      taps[(g * tap_count + t) * 2] = dsp::Pack(w[0], w[1]);
      taps[(g * tap_count + t) * 2 + 1] = dsp::Pack(w[2], w[3]);
    }
  }
  const int32_t ring_rows = DepthwiseGradRingRows(p);
  const int32_t margin = kPadded ? (p.filter_w - 1) * kL : 0;  // zero values each side
  const int32_t row_values = p.output_w * kL + 2 * margin;
  int16_t* const ring = kL != kLanes ? s.wide_ring : kPadded ? s.padded_ring : s.ring;
  // Only the margins: FoldRow writes the rest of a row before any tap reads it.
  for (int32_t r = 0; r < ring_rows; ++r) {
    int16_t* const row = ring + r * row_values;
    for (int32_t v = 0; v < margin; ++v) row[v] = row[row_values - margin + v] = 0;
  }
  for (int32_t b = 0; b < p.batches; ++b) {
    int32_t folded = 0;  // output rows [0, folded) of batch b have been through the ring
    for (int32_t iy = 0; iy < p.input_h; ++iy) {
      // The last output row input row iy reads; the ring keeps the ring_rows before it.
      const int32_t last = (iy + p.pad_h) / p.stride_h;
      const int32_t need = last < p.output_h ? last + 1 : p.output_h;
      for (; folded < need; ++folded) {
        FoldRow<kL>(p, dy, ratio, b, folded, c0, n,
                    ring + (folded % ring_rows) * row_values + margin);
      }
      // The filter rows that read input row iy, with the ring row and the taps each uses.
      const int16_t* rows[kMaxFilterSide];
      const uint32_t* tap_rows[kMaxFilterSide];
      int32_t live = 0;
      for (int32_t fy = 0; fy < p.filter_h; ++fy) {
        int32_t oy = 0;
        if (!TapOrigin(iy, fy, p.pad_h, p.dilation_h, p.stride_h, p.output_h, &oy)) continue;
        rows[live] = ring + (oy % ring_rows) * row_values;
        tap_rows[live++] = taps + 2 * fy * p.filter_w;
      }
      const int16_t* columns = s.columns;
      int32_t i = ((b * p.input_h + iy) * p.input_w) * p.input_c + c0;
      for (int32_t ix = 0; ix < p.input_w; ++ix, columns += p.filter_w, i += p.input_c) {
        for (int32_t g = 0; g < groups; ++g) {
          int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          const auto add = [&](const int16_t* d, const uint32_t* tap) {
            const uint32_t d01 = dsp::Load4(d), d23 = dsp::Load4(d + 2);
            a0 = dsp::MulAddLow(d01, tap[0], a0);
            a1 = dsp::MulAddHigh(d01, tap[0], a1);
            a2 = dsp::MulAddLow(d23, tap[1], a2);
            a3 = dsp::MulAddHigh(d23, tap[1], a3);
          };
          for (int32_t k = 0; k < live; ++k) {
            const uint32_t* tap = tap_rows[k] + g * tap_count * 2;
            if constexpr (kPadded) {
              // Tap fx reads output column ix + pad_w - fx, margin values into the row.
              const int16_t* d = rows[k] + margin + (ix + p.pad_w) * kL + 4 * g;
              if (p.filter_w == 3) {  // unrolled: the loads take constant offsets
                add(d, tap);
                add(d - kL, tap + 2);
                add(d - 2 * kL, tap + 4);
                continue;
              }
              for (int32_t fx = 0; fx < p.filter_w; ++fx, tap += 2, d -= kL) add(d, tap);
            } else {
              for (int32_t fx = 0; fx < p.filter_w; ++fx, tap += 2) {
                const int32_t at = columns[fx];
                if (at >= 0) add(rows[k] + at, tap);
              }
            }
          }
          const int32_t lane = 4 * g;
          local(i + lane, a0);
          if (lane + 1 < n) local(i + lane + 1, a1);
          if (lane + 2 < n) local(i + lane + 2, a2);
          if (lane + 3 < n) local(i + lane + 3, a3);
        }
      }
    }
  }
  sink.Absorb(local);
}

}  // namespace

float depthwise_conv2d_input_grad(const DepthwiseConv2dParams& p, const int8_t* filter,
                                  const int16_t* dy, const float* ratio, float acc_scale,
                                  int16_t* dx, int8_t* scratch, int32_t scratch_bytes) {
  if (p.depth_multiplier != 1 || p.filter_h > kMaxFilterSide ||
      scratch_bytes < DepthwiseInputGradScratchBytes(p)) {
    return ref::depthwise_conv2d_input_grad(p, filter, dy, ratio, acc_scale, dx);
  }
  const bool wide = DepthwisePaddedGrad(p) &&
                    scratch_bytes >= DepthwiseWideInputGradScratchBytes(p);
  const bool padded = !wide && DepthwisePaddedGrad(p) &&
                      scratch_bytes >= DepthwisePaddedInputGradScratchBytes(p);
  const GradScratch s(p, scratch, padded, wide);
  // The zero margins stand in for the column table.
  if (!padded && !wide) FillColumns(p, s.columns);
  // Blocks never straddle n_train: the trained prefix reads the SRAM copy (stride n_train),
  // the rest flash (stride output_c).
  const auto blocks = [&](auto lanes_tag, auto padded_tag, const auto& sink) {
    constexpr int32_t kL = decltype(lanes_tag)::value;
    constexpr bool kPadded = decltype(padded_tag)::value;
    for (int32_t c0 = 0; c0 < p.n_train; c0 += kL) {
      const int32_t n = p.n_train - c0 < kL ? p.n_train - c0 : kL;
      InputGradBlock<kL, kPadded>(p, p.train_filter, p.n_train, dy, ratio, c0, n, s, sink);
    }
    for (int32_t c0 = p.n_train; c0 < p.output_c; c0 += kL) {
      const int32_t n = p.output_c - c0 < kL ? p.output_c - c0 : kL;
      InputGradBlock<kL, kPadded>(p, filter, p.output_c, dy, ratio, c0, n, s, sink);
    }
  };
  using Narrow = std::integral_constant<int32_t, kLanes>;
  using Wide = std::integral_constant<int32_t, kWideLanes>;
  const int32_t n = p.batches * p.input_h * p.input_w * p.input_c;
  if (scratch_bytes >= DepthwiseStagedInputGradScratchBytes(p)) {
    int16_t* high = reinterpret_cast<int16_t*>(scratch + DepthwiseInputGradScratchBytes(p));
    if (wide) {
      return GatherRequantizeStaged(n, [&](const auto& sink) {
        blocks(Wide{}, std::true_type{}, sink);
      }, acc_scale, dx, high);
    }
    if (padded) {
      return GatherRequantizeStaged(n, [&](const auto& sink) {
        blocks(Narrow{}, std::true_type{}, sink);
      }, acc_scale, dx, high);
    }
    return GatherRequantizeStaged(n, [&](const auto& sink) {
      blocks(Narrow{}, std::false_type{}, sink);
    }, acc_scale, dx, high);
  }
  return GatherRequantize(n, [&](const auto& sink) {
    blocks(Narrow{}, std::false_type{}, sink);
  }, acc_scale, dx);
}

void depthwise_conv2d_bias_update(const DepthwiseConv2dParams& p, const int16_t* dy,
                                  float lr_dy, const float* bias_coef, int32_t* bias, int8_t*,
                                  int32_t) {
  UpdateBiasRows(p.batches * p.output_h * p.output_w, p.output_c, dy, lr_dy, bias_coef, bias);
}

void depthwise_conv2d_weight_update(const DepthwiseConv2dParams& p, const int8_t* input,
                                    const int16_t* dy, float coef, const float* w_coef,
                                    Rounding rounding, uint32_t* prng, int8_t* weights, int8_t*,
                                    int32_t) {
  ref::depthwise_conv2d_weight_update(p, input, dy, coef, w_coef, rounding, prng, weights);
}

}  // namespace mt::m7
