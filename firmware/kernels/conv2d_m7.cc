// Cortex-M7 CONV_2D: im2col to int16, then 2x2-blocked SMLAD dot products (conv2d_m7.h).
#include "kernels/conv2d_m7.h"

#include <cstring>

#include "kernels/bias_update_m7.h"
#include "kernels/dsp.h"
#include "kernels/fixed_point.h"
#include "kernels/param_update.h"
#include "kernels/requantize_m7.h"

namespace mt::m7 {

namespace {

// Output pixels per block: each weight word is loaded and unpacked once for all of them.
constexpr int32_t kPixels = 4;

// The block's columns: each pixel's `depth` int16 values (its receptive field plus the input
// offset) in groups of four stored as (k0, k2, k1, k3), the order SXTB16 unpacks a weight word
// into, the last group zero-padded; the four pixels' words of a group interleaved, [group]
// [pixel][even, odd], so that one pointer walks all four.
struct Columns {
  int32_t depth;   // filter_h * filter_w * filter_c
  int32_t body;    // depth & ~3: values covered by whole weight words
  int32_t groups;  // depth rounded up to 4, over 4
};

// A run of n int8 values plus the input offset into n int16 values in natural order (dst may
// be unaligned). Word by word: SXTB16 gives the lanes (x0, x2), (x1, x3), the halves swapped
// back give (x0, x1), (x2, x3).
void WidenRun(const int8_t* src, int32_t n, uint32_t offset2, int32_t offset, int16_t* dst) {
  int32_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const uint32_t x = dsp::Load4(src + i);
    const uint32_t even = dsp::Add16(dsp::ExtendEven(x), offset2);
    const uint32_t odd = dsp::Add16(dsp::ExtendOdd(x), offset2);
    const uint32_t words[2] = {dsp::LowHalves(even, odd), dsp::HighHalves(even, odd)};
    std::memcpy(dst + i, words, sizeof words);
  }
  for (; i < n; ++i) dst[i] = static_cast<int16_t>(src[i] + offset);
}

// The column of an output pixel inside the image whose filter rows each read one contiguous
// run of input (no dilation along the width) and whose depth is not whole words: the runs go
// to the stage as bytes, end to end, so that every group of four is one word of it, unpacked
// as in the word-aligned case. (The int16 stage of Im2col's general path costs ~460
// instructions a pixel of the 3x3x3 stem.) The last group's unused bytes meet TailWord's zero
// weights; the word they are in is zeroed first only so that no uninitialised scratch is read.
[[gnu::noinline]] void RunColumns(const int8_t* row, int32_t run, int32_t rows, int32_t row_step,
                                  const Columns& c, uint32_t offset2, int8_t* stage,
                                  uint32_t* out) {
  const int32_t groups = c.groups;
  dsp::Store4(stage + (groups - 1) * 4, 0);
  int8_t* bytes = stage;
  for (int32_t r = 0; r < rows; ++r, row += row_step, bytes += run) {
    int32_t i = 0;
    for (; i + 4 <= run; i += 4) dsp::Store4(bytes + i, dsp::Load4(row + i));
    for (; i < run; ++i) bytes[i] = row[i];
  }
  const int8_t* stream = stage;
  for (uint32_t* const end = out + groups * 2 * kPixels; out != end;
       out += 2 * kPixels, stream += 4) {
    const uint32_t x = dsp::Load4(stream);
    out[0] = dsp::ExtendEvenAdd(x, offset2);
    out[1] = dsp::ExtendOddAdd(x, offset2);
  }
  // The unused lanes of the last group, (k0, k2) (k1, k3) past the depth, hold the offset now:
  // zero them, since SaturateRows reads the last weight word whole.
  const int32_t tail = c.depth - c.body;
  if (tail != 0) {
    out -= 2 * kPixels;
    out[0] &= tail == 3 ? ~0u : 0xFFFFu;
    out[1] &= tail == 1 ? 0u : 0xFFFFu;
  }
}

// RunColumns for a run and row count fixed at compile time (the 3x3x3 stem's 9 and 3), with no
// stage: each group's word is loaded from the input where it lies within one filter row, or
// merged from two loads (one BFI) where it straddles two; ~35 instructions a pixel instead of
// ~90. Reads up to three bytes past the window's last byte (the caller checks that they are
// inside the input) and, for a straddling word, bytes beside the window on its rows; those
// lanes are replaced or meet zero weights.
template <int32_t kRun, int32_t kRows>
[[gnu::noinline]] void StreamColumns(const int8_t* row, int32_t row_step, uint32_t offset2,
                                     uint32_t* out) {
  constexpr int32_t kDepth = kRun * kRows;
  constexpr int32_t kGroups = (kDepth + 3) / 4;
#pragma GCC unroll 64
  for (int32_t g = 0; g < kGroups; ++g, out += 2 * kPixels) {
    const int32_t r = 4 * g / kRun;
    const int32_t at = 4 * g % kRun;
    const int8_t* const segment = row + r * row_step;
    uint32_t x = dsp::Load4(segment + at);
    if (at + 4 > kRun && r + 1 < kRows) {
      const int32_t own = kRun - at;  // bytes of this row; the rest start the next
      const uint32_t mask = (1u << (8 * own)) - 1u;
      x = (x & mask) | (dsp::Load4(segment + row_step - own) & ~mask);
    }
    out[0] = dsp::ExtendEvenAdd(x, offset2);
    out[1] = dsp::ExtendOddAdd(x, offset2);
  }
  // The unused lanes of the last group, as in RunColumns.
  constexpr int32_t kTail = kDepth % 4;
  if constexpr (kTail != 0) {
    out -= 2 * kPixels;
    out[0] &= kTail == 3 ? ~0u : 0xFFFFu;
    out[1] &= kTail == 1 ? 0u : 0xFFFFu;
  }
}

// The receptive field of output pixel (b, oy, ox) plus the input offset, as column k.
void Im2col(const Conv2dParams& p, const Columns& c, const int8_t* input, int32_t b,
            int32_t oy, int32_t ox, int32_t k, uint32_t* columns) {
  const int32_t in_y0 = oy * p.stride_h - p.pad_h;
  const int32_t in_x0 = ox * p.stride_w - p.pad_w;
  uint32_t* out = columns + k * 2;  // group 0 of pixel k
  if ((p.filter_c & 3) == 0) {
    // Every tap starts a weight word: unpack four bytes per group, already permuted.
    const uint32_t offset2 = dsp::Splat16(p.input_offset);
    for (int32_t fy = 0; fy < p.filter_h; ++fy) {
      const int32_t iy = in_y0 + fy * p.dilation_h;
      for (int32_t fx = 0; fx < p.filter_w; ++fx) {
        const int32_t ix = in_x0 + fx * p.dilation_w;
        uint32_t* const end = out + p.filter_c / 4 * kPixels * 2;
        if (iy < 0 || iy >= p.input_h || ix < 0 || ix >= p.input_w) {
          for (; out != end; out += 2 * kPixels) out[0] = out[1] = 0;
          continue;
        }
        const int8_t* in = input + ((b * p.input_h + iy) * p.input_w + ix) * p.input_c;
        for (; out != end; out += 2 * kPixels, in += 4) {
          const uint32_t x = dsp::Load4(in);
          out[0] = dsp::Add16(dsp::ExtendEven(x), offset2);
          out[1] = dsp::Add16(dsp::ExtendOdd(x), offset2);
        }
      }
    }
    return;
  }
  // Taps that do not start a word (the 3-channel stem, say).
  int16_t* const stage = reinterpret_cast<int16_t*>(columns + c.groups * kPixels * 2);
  const uint32_t offset2 = dsp::Splat16(p.input_offset);
  const int32_t run = p.filter_w * p.filter_c;
  const bool x_inside = in_x0 >= 0 && in_x0 + (p.filter_w - 1) * p.dilation_w < p.input_w;
  const bool y_inside = in_y0 >= 0 && in_y0 + (p.filter_h - 1) * p.dilation_h < p.input_h;
  if (x_inside && y_inside && p.dilation_w == 1) {
    const int8_t* row = input + ((b * p.input_h + in_y0) * p.input_w + in_x0) * p.input_c;
    const int32_t row_step = p.dilation_h * p.input_w * p.input_c;
    const int8_t* const input_end = input + p.batches * p.input_h * p.input_w * p.input_c;
    if (run == 9 && p.filter_h == 3 && row + 2 * row_step + 12 <= input_end) {
      StreamColumns<9, 3>(row, row_step, offset2, out);
      return;
    }
    RunColumns(row, run, p.filter_h, p.dilation_h * p.input_w * p.input_c, c, offset2,
               reinterpret_cast<int8_t*>(stage), out);
    return;
  }
  // Elsewhere the receptive field goes to the stage as int16 in natural order, a filter row at
  // a time where its taps are adjacent and inside, then by groups of four into the column as
  // (k0, k2), (k1, k3).
  int16_t* v = stage;
  for (int32_t fy = 0; fy < p.filter_h; ++fy) {
    const int32_t iy = in_y0 + fy * p.dilation_h;
    const bool row_inside = iy >= 0 && iy < p.input_h;
    const int8_t* row = input + ((b * p.input_h + iy) * p.input_w + in_x0) * p.input_c;
    if (row_inside && x_inside && p.dilation_w == 1) {
      WidenRun(row, run, offset2, p.input_offset, v);
      v += run;
      continue;
    }
    for (int32_t fx = 0; fx < p.filter_w; ++fx, v += p.filter_c) {
      const int32_t ix = in_x0 + fx * p.dilation_w;
      if (!row_inside || ix < 0 || ix >= p.input_w) {
        for (int32_t ic = 0; ic < p.filter_c; ++ic) v[ic] = 0;
        continue;
      }
      WidenRun(row + fx * p.dilation_w * p.input_c, p.filter_c, offset2, p.input_offset, v);
    }
  }
  // The last group's unused lanes meet TailWord's zero bytes; zero them so that no
  // uninitialised scratch is read.
  for (int16_t* const end = stage + c.groups * 4; v != end; ++v) *v = 0;
  for (int32_t g = 0; g < c.groups; ++g, out += 2 * kPixels) {
    const uint32_t a = dsp::Load4(stage + 4 * g);
    const uint32_t d = dsp::Load4(stage + 4 * g + 2);
    out[0] = dsp::LowHalves(a, d);   // (k0, k2)
    out[1] = dsp::HighHalves(a, d);  // (k1, k3)
  }
}

// A 1x1 filter without padding whose depth is whole words: the block's columns straight from
// its four input pixels, in[k] pixel k's channels, one group of all four per pass. (Im2col
// walks taps and tests bounds per pixel: ~115 instructions a pixel of eight channels.)
void PointwiseColumns(const int8_t* const in[kPixels], int32_t groups, uint32_t offset2,
                      uint32_t* out) {
  const int8_t* p0 = in[0];
  const int8_t* p1 = in[1];
  const int8_t* p2 = in[2];
  const int8_t* p3 = in[3];
  for (uint32_t* const end = out + groups * kPixels * 2; out != end; out += kPixels * 2) {
    const uint32_t x0 = dsp::Load4(p0);
    const uint32_t x1 = dsp::Load4(p1);
    const uint32_t x2 = dsp::Load4(p2);
    const uint32_t x3 = dsp::Load4(p3);
    p0 += 4;
    p1 += 4;
    p2 += 4;
    p3 += 4;
    out[0] = dsp::ExtendEvenAdd(x0, offset2);
    out[1] = dsp::ExtendOddAdd(x0, offset2);
    out[2] = dsp::ExtendEvenAdd(x1, offset2);
    out[3] = dsp::ExtendOddAdd(x1, offset2);
    out[4] = dsp::ExtendEvenAdd(x2, offset2);
    out[5] = dsp::ExtendOddAdd(x2, offset2);
    out[6] = dsp::ExtendEvenAdd(x3, offset2);
    out[7] = dsp::ExtendOddAdd(x3, offset2);
  }
}

// The last depth - body (1 to 3) weights of a row as one word, zero-filled: the row may end
// the filter array, so no word is read past it.
inline uint32_t TailWord(const int8_t* w, int32_t n) {
  uint32_t v = static_cast<uint8_t>(w[0]);
  if (n > 1) v |= static_cast<uint32_t>(static_cast<uint8_t>(w[1])) << 8;
  if (n > 2) v |= static_cast<uint32_t>(static_cast<uint8_t>(w[2])) << 16;
  return v;
}

// One weight row against the block's four columns, a word of four weights at a time.
struct Block {
  int32_t a0, a1, a2, a3;

  void Group(uint32_t w, const uint32_t*& x) {
    const uint32_t even = dsp::ExtendEven(w);
    const uint32_t odd = dsp::ExtendOdd(w);
    Pixel(even, odd, x, a0);
    Pixel(even, odd, x, a1);
    Pixel(even, odd, x, a2);
    Pixel(even, odd, x, a3);
  }

  static void Pixel(uint32_t even, uint32_t odd, const uint32_t*& x, int32_t& acc) {
    uint32_t x_even, x_odd;
    dsp::LoadPair(x, x_even, x_odd);
    acc = dsp::Dot2(even, x_even, acc);
    acc = dsp::Dot2(odd, x_odd, acc);
  }
};

// The row's first `groups` weight words against the block's columns from x on; returns x past
// them, w past the words.
[[gnu::always_inline]] inline const uint32_t* Body(const int8_t*& w, const uint32_t* x,
                                                   int32_t groups, Block& k) {
#if MT_HAVE_DSP
  // GCC loads the columns with LDRD and tests a loop after every group: 17 instructions a
  // group. One LDM for two pixels' four words and the loop unrolled four times (entered by a
  // jump for the last 1-3 groups) make it 13 and a fraction. LDM fills registers in number
  // order, hence r0-r3 by name.
  uint32_t e, o;
#define MT_GROUP                                                                           \
  asm volatile("ldr %[e], [%[w]], #4\n\t"                                                  \
               "sxtb16 %[o], %[e], ror #8\n\t"                                             \
               "sxtb16 %[e], %[e]\n\t"                                                     \
               "ldmia %[x]!, {r0, r1, r2, r3}\n\t"                                         \
               "smlad %[a0], %[e], r0, %[a0]\n\t"                                          \
               "smlad %[a0], %[o], r1, %[a0]\n\t"                                          \
               "smlad %[a1], %[e], r2, %[a1]\n\t"                                          \
               "smlad %[a1], %[o], r3, %[a1]\n\t"                                          \
               "ldmia %[x]!, {r0, r1, r2, r3}\n\t"                                         \
               "smlad %[a2], %[e], r0, %[a2]\n\t"                                          \
               "smlad %[a2], %[o], r1, %[a2]\n\t"                                          \
               "smlad %[a3], %[e], r2, %[a3]\n\t"                                          \
               "smlad %[a3], %[o], r3, %[a3]"                                               \
               : [w] "+r"(w), [x] "+r"(x), [a0] "+r"(k.a0), [a1] "+r"(k.a1),                \
                 [a2] "+r"(k.a2), [a3] "+r"(k.a3), [e] "=&r"(e), [o] "=&r"(o)              \
               :                                                                            \
               : "r0", "r1", "r2", "r3", "memory")
  int32_t quads = (groups - 1) >> 2;  // loops of four before the last 1-4 groups
  groups -= quads * 4;
  for (; quads > 0; --quads) {
    MT_GROUP;
    MT_GROUP;
    MT_GROUP;
    MT_GROUP;
  }
  switch (groups) {
    case 4:
      MT_GROUP;
      [[fallthrough]];
    case 3:
      MT_GROUP;
      [[fallthrough]];
    case 2:
      MT_GROUP;
      [[fallthrough]];
    case 1:
      MT_GROUP;
      break;
    default:
      break;
  }
#undef MT_GROUP
#else
  for (; groups > 0; --groups) {
    const uint32_t word = dsp::Load4(w);
    w += 4;
    k.Group(word, x);
  }
#endif
  return x;
}

#if MT_HAVE_DSP
// What SaturateRows reads, by the offsets its assembly names.
struct SaturateJob {
  const int32_t* bias;      // +0: the next channel's bias (unless kTableBias)
  const uint32_t* columns;  // +4
  int8_t* out;              // +8: the next channel's output of the block's first pixel
  int32_t step;             // +12: bytes from one pixel's outputs to the next's
  int8_t* out_end;          // +16: out past the last channel
  const uint32_t* x_end;    // +20: the columns' end
  uint32_t entry;           // +24: (set by the loop) where a channel's first group starts
  int32_t back;             // +28: bytes the weight pointer steps back after a row
  const int8_t* w;          // +32: the first channel's weight row
  const int32_t* table;     // +36: the first channel's row: its short-form constants, after
                            //      its bias with kTableBias
  int32_t skip;             // +40: bytes of group code the first pass of a row skips
};

// Bytes of one group's code in SaturateRows: thirteen 32-bit instructions (the assembler checks).
constexpr int32_t kGroupCodeBytes = 52;

// Channels' loop for the common case (full block, bias, kSaturate), in assembly: GCC keeps
// the loop's pointers and counts in stack slots it reloads, and dispatches the groups by a
// table and a loop per channel, ~55 instructions a channel around the groups; here ~40. The
// groups are the unrolled Body, entered part-way for the first pass (groups % 4), and each
// weight row is read as whole words, the last one ending up to three bytes into the next
// row (`back` steps back over them): the columns' unused lanes are 0, so those bytes add
// nothing, and the caller keeps the filter's last row to the C++ loop, so that no byte past
// the filter is read.
// kBack: the rows end in a partial word (`back` is not 0). kLoop: more than four groups.
// kTwice: the columns hold twice the input values (DoubleColumns), so the bias is doubled as
// it is loaded and the requantization's doubling is saved: one instruction a channel for four.
// kTableBias: each table row leads with the channel's bias, read with one load (three through
// the job's bias pointer).
template <bool kBack, bool kLoop, bool kTwice, bool kTableBias>
[[gnu::noinline]] void SaturateRows(SaturateJob* job) {
  register SaturateJob* j asm("r12") = job;
#define MT_GROUP                                                                           \
  "ldr r8, [r10], #4\n\t"                                                                   \
  "sxtb16 r9, r8, ror #8\n\t"                                                               \
  "sxtb16 r8, r8\n\t"                                                                       \
  "ldmia.w r11!, {r0, r1, r2, r3}\n\t"                                                      \
  "smlad r4, r8, r0, r4\n\t"                                                                \
  "smlad r4, r9, r1, r4\n\t"                                                                \
  "smlad r5, r8, r2, r5\n\t"                                                                \
  "smlad r5, r9, r3, r5\n\t"                                                                \
  "ldmia.w r11!, {r0, r1, r2, r3}\n\t"                                                      \
  "smlad r6, r8, r0, r6\n\t"                                                                \
  "smlad r6, r9, r1, r6\n\t"                                                                \
  "smlad r7, r8, r2, r7\n\t"                                                                \
  "smlad r7, r9, r3, r7\n\t"
#define MT_REQUANT(acc)                                                                    \
  ".if %c[twice]\n\t"                                                                       \
  "smmlar r3, " acc ", r0, r2\n\t"                                                          \
  ".else\n\t"                                                                               \
  "lsl r3, " acc ", #1\n\t"                                                                 \
  "smmlar r3, r3, r0, r2\n\t"                                                               \
  ".endif\n\t"                                                                              \
  "add r3, r3, " acc ", asr #31\n\t"                                                        \
  "asr r3, r3, r1\n\t"                                                                      \
  "ssat " acc ", #8, r3\n\t"
  asm volatile(
      "ldr.w r10, [r12, #32]\n\t"
      "ldr.w lr, [r12, #36]\n\t"
      "adr.w r0, 2f\n\t"
      "ldr.w r1, [r12, #40]\n\t"
      "add r0, r0, r1\n\t"
      "orr r0, r0, #1\n\t"
      "str.w r0, [r12, #24]\n"
      "1:\n\t"  // a channel
      "ldr.w r11, [r12, #4]\n\t"
      ".if %c[table_bias]\n\t"
      "ldr.w r4, [lr], #4\n\t"
      ".else\n\t"
      "ldr.w r0, [r12, #0]\n\t"
      "ldr.w r4, [r0], #4\n\t"
      "str.w r0, [r12, #0]\n\t"
      ".endif\n\t"
      ".if %c[twice]\n\t"
      "lsl r4, r4, #1\n\t"
      ".endif\n\t"
      "mov r5, r4\n\t"
      "mov r6, r4\n\t"
      "mov r7, r4\n\t"
      "ldr.w r0, [r12, #24]\n\t"
      "bx r0\n"
      "2:\n\t"  // four groups
      MT_GROUP
      "3:\n\t"
      ".if (3b - 2b) - %c[group_bytes]\n\t"
      ".error \"a group's code is not kGroupCodeBytes long\"\n\t"
      ".endif\n\t"
      MT_GROUP MT_GROUP MT_GROUP
      ".if %c[loop]\n\t"
      "ldr.w r0, [r12, #20]\n\t"
      "cmp r11, r0\n\t"
      "bne 2b\n\t"
      ".endif\n\t"
      ".if %c[back]\n\t"
      "ldr.w r0, [r12, #28]\n\t"
      "sub r10, r10, r0\n\t"
      ".endif\n\t"
      "ldmia lr!, {r0, r1, r2}\n\t"  // multiplier, right shift, constant
      MT_REQUANT("r4") MT_REQUANT("r5") MT_REQUANT("r6") MT_REQUANT("r7")
      "ldr.w r0, [r12, #8]\n\t"
      "ldr.w r1, [r12, #12]\n\t"
      "strb r4, [r0]\n\t"
      "strb r5, [r0, r1]\n\t"
      "add r2, r0, r1, lsl #1\n\t"
      "strb r6, [r2]\n\t"
      "strb r7, [r2, r1]\n\t"
      "add r0, r0, #1\n\t"
      "str.w r0, [r12, #8]\n\t"
      "ldr.w r1, [r12, #16]\n\t"
      "cmp r0, r1\n\t"
      "bne 1b"
      : "+r"(j)
      : [group_bytes] "i"(kGroupCodeBytes), [loop] "i"(kLoop ? 1 : 0), [back] "i"(kBack ? 1 : 0),
        [twice] "i"(kTwice ? 1 : 0), [table_bias] "i"(kTableBias ? 1 : 0)
      : "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "lr", "cc",
        "memory");
#undef MT_REQUANT
#undef MT_GROUP
}

// SaturateRows for the job's shape: a tail (partial last word) and more than four groups.
template <bool kTwice, bool kTableBias>
void RunSaturateRows(SaturateJob* job, bool tail, bool loop) {
  if (tail) {
    if (loop) {
      SaturateRows<true, true, kTwice, kTableBias>(job);
    } else {
      SaturateRows<true, false, kTwice, kTableBias>(job);
    }
  } else if (loop) {
    SaturateRows<false, true, kTwice, kTableBias>(job);
  } else {
    SaturateRows<false, false, kTwice, kTableBias>(job);
  }
}
#endif

// Output channels [oc_begin, oc_end) of the block's pixels, whose outputs are out, out + step,
// out + 2 step, out + 3 step (a block past the last pixel repeats it: step 0 for the copies is
// not possible, so kFull == false stores only the first `valid` pixels). Weights from rows,
// which are contiguous: each row's walk ends where the next begins. kTwice: the columns are
// doubled (DoubleColumns; only with every channel on the short form).
template <Requant kMode, bool kFull, bool kBias, bool kTwice>
void Channels(const OutputStage& stage, const Columns& c, const int8_t* rows,
              const int32_t* bias, const uint32_t* columns, int8_t* out, int32_t step,
              int32_t valid, int32_t oc_begin, int32_t oc_end) {
  // Locals, not loads through the references: an int8 store may alias them.
  const OutputStage s = stage;
  const int32_t groups = c.body / 4;
  const int32_t tail = c.depth - c.body;
  const int8_t* w = rows + oc_begin * c.depth;
  int32_t oc = oc_begin;
#if MT_HAVE_DSP
  if constexpr (kMode == Requant::kSaturate && kFull && kBias) {
    // With a tail the filter's last row stays below: SaturateRows reads a word past it.
    const int32_t last = tail != 0 ? oc_end - 1 : oc_end;
    if (last > oc) {
      SaturateJob job{bias + oc,
                      columns,
                      out + oc,
                      step,
                      out + last,
                      columns + c.groups * kPixels * 2,
                      0,
                      tail != 0 ? 4 - tail : 0,
                      w,
                      s.table + s.stride * oc - (s.stride == 4 ? 1 : 0),
                      (3 - (c.groups - 1) % 4) * kGroupCodeBytes};
      if (s.stride == 4) {
        RunSaturateRows<kTwice, true>(&job, tail != 0, c.groups > 4);
      } else {
        RunSaturateRows<kTwice, false>(&job, tail != 0, c.groups > 4);
      }
      w += (last - oc) * c.depth;
      oc = last;
    }
  }
#endif
  for (; oc < oc_end; ++oc) {
    const int32_t start = kBias ? (kTwice ? bias[oc] * 2 : bias[oc]) : 0;
    Block k{start, start, start, start};
    const uint32_t* x = Body(w, columns, groups, k);
    if (tail != 0) {
      k.Group(TailWord(w, tail), x);
      w += tail;
    }
    // All four before any store: an int8 store may alias the multipliers, which would then be
    // loaded again for every pixel.
    int8_t y0, y1, y2, y3;
    if constexpr (kMode == Requant::kChecked) {
      static_assert(!kTwice, "doubled columns only with the short form");
      y0 = Requantize<kMode>(s, k.a0, oc);
      y1 = Requantize<kMode>(s, k.a1, oc);
      y2 = Requantize<kMode>(s, k.a2, oc);
      y3 = Requantize<kMode>(s, k.a3, oc);
    } else {
      const ShortForm f = ShortFormOf(s, oc);
      y0 = RequantizeShort<kMode, kTwice>(s, f, k.a0);
      y1 = RequantizeShort<kMode, kTwice>(s, f, k.a1);
      y2 = RequantizeShort<kMode, kTwice>(s, f, k.a2);
      y3 = RequantizeShort<kMode, kTwice>(s, f, k.a3);
    }
    // One pointer stepped between the pixels: left to itself, GCC keeps four output pointers
    // (one per pixel) and spills them, which costs more than the three adds.
    int32_t opaque_step = step;
    __asm__("" : "+r"(opaque_step));
    int8_t* o = out + oc;
    o[0] = y0;
    o += opaque_step;
    if (kFull || valid > 1) o[0] = y1;
    o += opaque_step;
    if (kFull || valid > 2) o[0] = y2;
    o += opaque_step;
    if (kFull) o[0] = y3;
  }
}

// Channels with the block shape and bias presence as compile-time constants.
template <Requant kMode, bool kTwice = false>
void BlockChannels(const OutputStage& s, const Columns& c, const int8_t* rows,
                   const int32_t* bias, const uint32_t* columns, int8_t* out, int32_t step,
                   int32_t valid, int32_t oc_begin, int32_t oc_end) {
  if (oc_begin >= oc_end) return;
  if (valid == kPixels) {
    if (bias != nullptr) {
      Channels<kMode, true, true, kTwice>(s, c, rows, bias, columns, out, step, valid, oc_begin,
                                          oc_end);
    } else {
      Channels<kMode, true, false, kTwice>(s, c, rows, bias, columns, out, step, valid,
                                           oc_begin, oc_end);
    }
  } else if (bias != nullptr) {
    Channels<kMode, false, true, kTwice>(s, c, rows, bias, columns, out, step, valid, oc_begin,
                                         oc_end);
  } else {
    Channels<kMode, false, false, kTwice>(s, c, rows, bias, columns, out, step, valid,
                                          oc_begin, oc_end);
  }
}

// Every value of the block's columns twice (one SADD16 a word): exact, as |x + offset| <= 255.
void DoubleColumns(uint32_t* words, int32_t n) {
#pragma GCC unroll 8
  for (int32_t i = 0; i < n; ++i) words[i] = dsp::Add16(words[i], words[i]);
}

// ---- depth 8, sixteen pixels a pass (Conv2dNarrow) ----

// What NarrowRows reads, by the offsets its assembly names.
struct NarrowJob {
  const int8_t* w;          // +0: the next channel's weight row
  const int32_t* unused;    // +4
  const int32_t* table;     // +8: the next channel's row: bias, then short-form constants
  int8_t* out;              // +12: the next channel's output of the pass's first pixel
  int8_t* out_end;          // +16: out past the last channel
  const uint32_t* columns;  // +20: the pass's doubled columns, four words a pixel
  int32_t step;             // +24: bytes from one pixel's outputs to the next's
};

#if MT_HAVE_DSP
// Per channel: its two weight words unpacked into four registers, its bias (doubled) and its
// constants in one LDM of its table row, then per pixel two LDRD of columns, four SMLAD, the short form without its
// doubling (kTwice), one SSAT and a store: 12 instructions for 8 MACs, and ~22 a channel for
// sixteen pixels. All fourteen registers are in use in the pixels, so the job waits on the stack.
[[gnu::noinline]] void NarrowRows(NarrowJob* job) {
  register NarrowJob* j asm("r12") = job;
#define MT_PIXEL(k)                                                                        \
  "ldrd r11, r12, [r8, #" #k " * 16]\n\t"                                                  \
  "smlad lr, r0, r11, r4\n\t"                                                               \
  "smlad lr, r1, r12, lr\n\t"                                                               \
  "ldrd r11, r12, [r8, #" #k " * 16 + 8]\n\t"                                              \
  "smlad lr, r2, r11, lr\n\t"                                                               \
  "smlad lr, r3, r12, lr\n\t"                                                               \
  "smmlar r11, lr, r5, r7\n\t"                                                              \
  "add r11, r11, lr, asr #31\n\t"                                                           \
  "asr r11, r11, r6\n\t"                                                                    \
  "ssat r11, #8, r11\n\t"                                                                   \
  "strb r11, [r9]\n\t"                                                                      \
  "add r9, r9, r10\n\t"
  static_assert(kConvNarrowPixels == 16, "NarrowRows unrolls sixteen pixels");
  asm volatile(
      "str r12, [sp, #-8]!\n"
      "1:\n\t"  // a channel
      "ldr lr, [r12, #0]\n\t"
      "ldr r0, [lr], #4\n\t"
      "ldr r2, [lr], #4\n\t"
      "str lr, [r12, #0]\n\t"
      "sxtb16 r1, r0, ror #8\n\t"
      "sxtb16 r0, r0\n\t"
      "sxtb16 r3, r2, ror #8\n\t"
      "sxtb16 r2, r2\n\t"
      "ldr lr, [r12, #8]\n\t"
      "ldmia lr!, {r4, r5, r6, r7}\n\t"  // bias, multiplier, right shift, constant
      "str lr, [r12, #8]\n\t"
      "lsl r4, r4, #1\n\t"
      "ldr r9, [r12, #12]\n\t"
      "add lr, r9, #1\n\t"
      "str lr, [r12, #12]\n\t"
      "ldr r8, [r12, #20]\n\t"
      "ldr r10, [r12, #24]\n\t"
      MT_PIXEL(0) MT_PIXEL(1) MT_PIXEL(2) MT_PIXEL(3) MT_PIXEL(4) MT_PIXEL(5) MT_PIXEL(6)
      MT_PIXEL(7) MT_PIXEL(8) MT_PIXEL(9) MT_PIXEL(10) MT_PIXEL(11) MT_PIXEL(12)
      MT_PIXEL(13) MT_PIXEL(14) MT_PIXEL(15)
      "ldr r12, [sp]\n\t"
      "ldr r0, [r12, #12]\n\t"
      "ldr r1, [r12, #16]\n\t"
      "cmp r0, r1\n\t"
      "bne 1b\n\t"
      "add sp, sp, #8"
      : "+r"(j)
      :
      : "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "lr", "cc",
        "memory");
#undef MT_PIXEL
}
#else
// The same sums in plain C++ (the host build).
void NarrowRows(NarrowJob* job) {
  const OutputStage none{nullptr, nullptr, 0, -128, 127, nullptr};
  for (; job->out != job->out_end; ++job->out, job->w += 8, job->table += 4) {
    const uint32_t w0 = dsp::Load4(job->w);
    const uint32_t w1 = dsp::Load4(job->w + 4);
    const int32_t bias = job->table[0];
    const ShortForm f{job->table[1], job->table[2], job->table[3]};
    const uint32_t* x = job->columns;
    int8_t* o = job->out;
    for (int32_t k = 0; k < kConvNarrowPixels; ++k, x += 4, o += job->step) {
      int32_t acc = dsp::Dot2(dsp::ExtendEven(w0), x[0], bias * 2);
      acc = dsp::Dot2(dsp::ExtendOdd(w0), x[1], acc);
      acc = dsp::Dot2(dsp::ExtendEven(w1), x[2], acc);
      acc = dsp::Dot2(dsp::ExtendOdd(w1), x[3], acc);
      *o = RequantizeShort<Requant::kSaturate, true>(none, f, acc);
    }
  }
}
#endif

// The pixels of [0, pixels) in whole passes of sixteen, every channel; returns how many it did.
// Frozen weights, a bias in the table's rows and the short form with one SSAT (the caller
// checks); `columns` has Conv2dNarrowScratchBytes(p).
int32_t NarrowPointwise(const Conv2dParams& p, const int8_t* input, const int8_t* filter,
                        int8_t* output, const int32_t* table, int32_t pixels,
                        uint32_t* columns) {
  const uint32_t offset2 = dsp::Splat16(p.input_offset);
  const int32_t done = pixels / kConvNarrowPixels * kConvNarrowPixels;
  for (int32_t i = 0; i < done; i += kConvNarrowPixels) {
    const int8_t* in = input + i * 8;
    for (int32_t k = 0; k < kConvNarrowPixels; ++k, in += 8) {
      const uint32_t x0 = dsp::Load4(in);
      const uint32_t x1 = dsp::Load4(in + 4);
      const uint32_t words[4] = {dsp::ExtendEvenAdd(x0, offset2), dsp::ExtendOddAdd(x0, offset2),
                                 dsp::ExtendEvenAdd(x1, offset2), dsp::ExtendOddAdd(x1, offset2)};
      for (int32_t j = 0; j < 4; ++j) columns[4 * k + j] = dsp::Add16(words[j], words[j]);
    }
    int8_t* const out = output + i * p.output_c;
    NarrowJob job{filter, nullptr, table, out, out + p.output_c, columns, p.output_c};
    NarrowRows(&job);
  }
  return done;
}

}  // namespace

void conv2d_s8(const Conv2dParams& p, const int8_t* input, const int8_t* filter,
               const int32_t* bias, int8_t* output, const int32_t* requant, bool bias_in_table,
               int8_t* scratch, int32_t scratch_bytes) {
  if (p.filter_c != p.input_c || scratch_bytes < Conv2dScratchBytes(p) ||
      (reinterpret_cast<uintptr_t>(scratch) & 3) != 0) {
    ref::conv2d_s8(p, input, filter, bias, output);
    return;
  }
  const int32_t depth = p.filter_h * p.filter_w * p.filter_c;
  const Columns c{depth, depth & ~3, (depth + 3) / 4};
  auto* columns = reinterpret_cast<uint32_t*>(scratch);
  // With the bias leading each row, the short-form constants start one word in.
  const int32_t stride = bias_in_table ? 4 : 3;
  const int32_t* const rows =
      requant != nullptr && bias_in_table ? requant + 1 : requant;
  const OutputStage s{p.multiplier, p.shift, p.output_offset, p.act_min, p.act_max, rows, stride};
  const RequantPlan plan =
      PlanRequant(requant, p.output_c, bias, p.act_min, p.act_max, stride);
  const int32_t pixels = p.batches * p.output_h * p.output_w;
  const int32_t per_image = p.output_h * p.output_w;
  const bool pointwise = p.filter_h == 1 && p.filter_w == 1 && p.pad_h == 0 && p.pad_w == 0 &&
                         (p.filter_c & 3) == 0;
  // Output pixel j reads input pixel j.
  const bool unit_stride = p.stride_h == 1 && p.stride_w == 1 && p.input_h == p.output_h &&
                           p.input_w == p.output_w;
  const uint32_t offset2 = dsp::Splat16(p.input_offset);
  // Doubled columns where the doublings they save (one per output) outweigh the pass over the
  // block's words (about three instructions a word): every channel frozen and on the short
  // form, and more than eight output channels per group of four column values.
  const bool twice = p.n_train == 0 && plan.mode != Requant::kChecked && p.output_c > 8 * c.groups;
  // Depth 8 with the room: whole passes of sixteen pixels, the rest below.
  int32_t first = 0;
  if (twice && bias_in_table && Conv2dNarrow(p) && unit_stride &&
      plan.mode == Requant::kSaturate && scratch_bytes >= Conv2dNarrowScratchBytes(p)) {
    first = NarrowPointwise(p, input, filter, output, requant, pixels, columns);
  }
  // Pixels four at a time in output order; past the last pixel, the block repeats it.
  for (int32_t i = first; i < pixels; i += kPixels) {
    const int32_t valid = pixels - i < kPixels ? pixels - i : kPixels;
    if (pointwise) {
      const int8_t* in[kPixels];
      for (int32_t k = 0; k < kPixels; ++k) {
        const int32_t j = k < valid ? i + k : pixels - 1;
        const int32_t pixel =
            unit_stride ? j
                        : (j / per_image * p.input_h + j % per_image / p.output_w * p.stride_h) *
                                  p.input_w +
                              j % p.output_w * p.stride_w;
        in[k] = input + pixel * p.input_c;
      }
      PointwiseColumns(in, c.groups, offset2, columns);
    } else {
      for (int32_t k = 0; k < kPixels; ++k) {
        const int32_t j = k < valid ? i + k : pixels - 1;
        Im2col(p, c, input, j / per_image, j % per_image / p.output_w, j % p.output_w, k,
               columns);
      }
    }
    if (twice) DoubleColumns(columns, c.groups * kPixels * 2);
    int8_t* out = output + i * p.output_c;
    // The trained prefix's weights change on the device: it takes the short form only where
    // the host bounded it for any int8 weights.
    if (plan.trained_short) {
      WithRequant(plan.mode, [&](auto mode_tag) {
        BlockChannels<decltype(mode_tag)::value>(s, c, p.train_filter, bias, columns, out,
                                                 p.output_c, valid, 0, p.n_train);
      });
    } else {
      BlockChannels<Requant::kChecked>(s, c, p.train_filter, bias, columns, out, p.output_c,
                                       valid, 0, p.n_train);
    }
    WithRequant(plan.mode, [&](auto mode_tag) {
      constexpr Requant kMode = decltype(mode_tag)::value;
      if constexpr (kMode != Requant::kChecked) {
        if (twice) {
          BlockChannels<kMode, true>(s, c, filter, bias, columns, out, p.output_c, valid,
                                     p.n_train, p.output_c);
          return;
        }
      }
      BlockChannels<kMode>(s, c, filter, bias, columns, out, p.output_c, valid, p.n_train,
                           p.output_c);
    });
  }
}

// ---- backward ----

namespace {

// Four channels' sums of a_c * g_a + b_c * g_b: words a, b hold channels c..c+3 of two rows,
// g the int16 pair (g_a, g_b).
struct PairedQuad {
  int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;

  void Add(uint32_t a, uint32_t b, uint32_t g) {
    const uint32_t low = dsp::LowHalves(a, b);    // a0 a1 b0 b1
    const uint32_t high = dsp::HighHalves(a, b);  // a2 a3 b2 b3
    s0 = dsp::Dot2(g, dsp::ExtendEven(low), s0);
    s1 = dsp::Dot2(g, dsp::ExtendOdd(low), s1);
    s2 = dsp::Dot2(g, dsp::ExtendEven(high), s2);
    s3 = dsp::Dot2(g, dsp::ExtendOdd(high), s3);
  }
};

// Output channels [lo, hi) of one folded output-gradient row g (int16, the pair of lo first)
// against input channels ic0..ic0+3 of tap t of their weight rows in `rows` (one weight
// source per call): adds sum over oc of g[oc - lo] * w[oc, t, ic0 + j] to q.s_j. An odd last
// channel pairs with itself; g's padding lane is 0, so it adds nothing.
void DotRows(const Conv2dParams& p, const int8_t* rows, int32_t lo, int32_t hi, int32_t t,
             int32_t ic0, const int16_t* g, PairedQuad& q) {
  if (lo >= hi) return;  // an empty range (rows may then be null)
  const int32_t stride = p.filter_h * p.filter_w * p.filter_c;
  const int8_t* w = rows + lo * stride + t * p.filter_c + ic0;
  PairedQuad sums = q;  // a local copy stays in registers (q may alias what the loop loads)
  int32_t oc = lo;
  for (; oc + 1 < hi; oc += 2, w += 2 * stride, g += 2) {
    sums.Add(dsp::Load4(w), dsp::Load4(w + stride), dsp::Load4(g));
  }
  if (oc < hi) {
    const uint32_t a = dsp::Load4(w);
    sums.Add(a, a, dsp::Load4(g));
  }
  q = sums;
}

// The same for one input channel ic (the 1-3 channels past the last group of four).
int32_t DotRowsScalar(const Conv2dParams& p, const int8_t* rows, int32_t lo, int32_t hi,
                      int32_t t, int32_t ic, const int16_t* g) {
  if (lo >= hi) return 0;
  const int32_t stride = p.filter_h * p.filter_w * p.filter_c;
  const int8_t* w = rows + lo * stride + t * p.filter_c + ic;
  int32_t acc = 0;
  for (int32_t oc = lo; oc < hi; ++oc, w += stride, ++g) acc += *g * *w;
  return acc;
}

// Output channels [lo, hi) of pixel `pixel` of dy folded as int16 lane pairs, the pair of
// channels lo + 2j, lo + 2j + 1 at g[j * pair_stride] (an odd last channel's partner lane 0).
void FoldRange(const GradView& dy, const float* ratio, int32_t pixel, int32_t lo, int32_t hi,
               int32_t pair_stride, int16_t* g) {
  for (int32_t oc = lo; oc < hi; oc += 2, g += pair_stride) {
    g[0] = static_cast<int16_t>(FoldGrad(dy.At(pixel, oc), ratio, oc));
    g[1] = oc + 1 < hi ? static_cast<int16_t>(FoldGrad(dy.At(pixel, oc + 1), ratio, oc + 1)) : 0;
  }
}

// Output pixel `pixel` of dy folded: the trained range's channels, then the frozen range's
// from trained_pad on (each range padded to even with a 0), as lane pairs pair_stride values
// apart (2: one plain row).
void FoldPixel(const Conv2dParams& p, const GradView& dy, const float* ratio, int32_t pixel,
               int32_t trained_pad, int16_t* g, int32_t pair_stride = 2) {
  FoldRange(dy, ratio, pixel, 0, p.n_train, pair_stride, g);
  FoldRange(dy, ratio, pixel, p.n_train, p.output_c, pair_stride,
            g + trained_pad / 2 * pair_stride);
}

// Pointwise and 1-D blocks: one input channel's sums for kConvGradPixels pixels (four
// accumulators, so the loop keeps everything in registers).
struct PixelSums {
  int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
};

// Output channels [lo, hi) of tap t of their weight rows against input channel ic, for four
// folded pixels interleaved per channel pair (g: the four pixels' words of one pair, the next
// pair's g_stride words on): two output channels' weights are two byte loads and a PKHBT, then
// each pixel is one SMLAD.
template <bool kBlock>  // g_stride == kConvGradPixels: the pointwise path's interleaved block
void DotPixels(const Conv2dParams& p, const int8_t* rows, int32_t lo, int32_t hi, int32_t t,
               int32_t ic, const uint32_t* g, int32_t g_stride, PixelSums& q) {
  if (lo >= hi) return;
  const int32_t stride = p.filter_h * p.filter_w * p.filter_c;
  const int8_t* w = rows + lo * stride + t * p.filter_c + ic;
  PixelSums a = q;
  const int8_t* const pairs_end = w + (hi - lo) / 2 * 2 * stride;
#if MT_HAVE_DSP
  // GCC keeps the strides and the sums on the stack here and builds the weight pair
  // (w_oc, w_oc+1) with two instructions (26 per pair); written out, everything stays in
  // registers: 10 a pair in the pointwise block, 13 with the 1-D window's run-time g stride.
  uint32_t wa;
  if (kBlock && w != pairs_end) {
    // The four pixels' words of a pair in one LDM (r0-r3 by name: LDM fills registers in
    // number order, and r0 also takes the second weight), two pairs a loop: 10 a pair.
#define MT_BLOCK_PAIR                          \
  "ldrsb %[wa], [%[w]]\n\t"                    \
  "ldrsb r0, [%[w], %[stride]]\n\t"            \
  "add %[w], %[w], %[stride], lsl #1\n\t"      \
  "pkhbt %[wa], %[wa], r0, lsl #16\n\t"        \
  "ldmia %[g]!, {r0, r1, r2, r3}\n\t"          \
  "smlad %[s0], r0, %[wa], %[s0]\n\t"          \
  "smlad %[s1], r1, %[wa], %[s1]\n\t"          \
  "smlad %[s2], r2, %[wa], %[s2]\n\t"          \
  "smlad %[s3], r3, %[wa], %[s3]\n\t"
#define MT_BLOCK_SUMS                                                                     \
  [w] "+r"(w), [g] "+r"(g), [s0] "+r"(a.s0), [s1] "+r"(a.s1), [s2] "+r"(a.s2),          \
      [s3] "+r"(a.s3), [wa] "=&r"(wa)
    if ((((hi - lo) / 2) & 1) != 0) {
      asm volatile(MT_BLOCK_PAIR : MT_BLOCK_SUMS : [stride] "r"(stride)
                   : "r0", "r1", "r2", "r3", "memory");
    }
    if (w != pairs_end) {
      asm volatile("1:\n\t" MT_BLOCK_PAIR MT_BLOCK_PAIR
                   "cmp %[w], %[end]\n\t"
                   "bne 1b"
                   : MT_BLOCK_SUMS
                   : [stride] "r"(stride), [end] "r"(pairs_end)
                   : "r0", "r1", "r2", "r3", "cc", "memory");
    }
#undef MT_BLOCK_PAIR
#undef MT_BLOCK_SUMS
  } else if (w != pairs_end) {
    const int32_t g_bytes = g_stride * 4;
    uint32_t wb, g0, g1;
    asm volatile("1:\n\t"
                 "ldrsb %[wa], [%[w]]\n\t"
                 "ldrsb %[wb], [%[w], %[stride]]\n\t"
                 "add %[w], %[w], %[stride], lsl #1\n\t"
                 "pkhbt %[wa], %[wa], %[wb], lsl #16\n\t"
                 "ldrd %[g0], %[g1], [%[g]]\n\t"
                 "smlad %[s0], %[g0], %[wa], %[s0]\n\t"
                 "smlad %[s1], %[g1], %[wa], %[s1]\n\t"
                 "ldrd %[g0], %[g1], [%[g], #8]\n\t"
                 "add %[g], %[g], %[g_bytes]\n\t"
                 "smlad %[s2], %[g0], %[wa], %[s2]\n\t"
                 "smlad %[s3], %[g1], %[wa], %[s3]\n\t"
                 "cmp %[w], %[end]\n\t"
                 "bne 1b"
                 : [w] "+r"(w), [g] "+r"(g), [s0] "+r"(a.s0), [s1] "+r"(a.s1),
                   [s2] "+r"(a.s2), [s3] "+r"(a.s3), [wa] "=&r"(wa), [wb] "=&r"(wb),
                   [g0] "=&r"(g0), [g1] "=&r"(g1)
                 : [stride] "r"(stride), [end] "r"(pairs_end), [g_bytes] "r"(g_bytes)
                 : "cc", "memory");
  }
#endif
  const auto pixels = [&](uint32_t ws) {
    a.s0 = dsp::Dot2(g[0], ws, a.s0);
    a.s1 = dsp::Dot2(g[1], ws, a.s1);
    a.s2 = dsp::Dot2(g[2], ws, a.s2);
    a.s3 = dsp::Dot2(g[3], ws, a.s3);
  };
#if !MT_HAVE_DSP
  for (; w != pairs_end; w += 2 * stride, g += g_stride) pixels(dsp::Pack(w[0], w[stride]));
#endif
  if (((hi - lo) & 1) != 0) pixels(dsp::Pack(w[0], 0));  // an odd last channel: g's partner is 0
  q = a;
}

// The pointwise (1x1, stride 1, no padding) input gradient, four pixels at a time: sink(i, acc)
// for every input value. `rows`: Conv2dPointwiseInputGradRowsBytes(p).
template <typename Sink>
void PointwiseGather(const Conv2dParams& p, const int8_t* filter, const GradView& dy,
                     const float* ratio, int16_t* rows, const Sink& sink) {
  const Sink local = sink;  // (train_math.h, the sinks)
  const int32_t pixels = p.batches * p.input_h * p.input_w;
  const int32_t trained_pad = (p.n_train + 1) / 2 * 2;
  const uint32_t* g = reinterpret_cast<const uint32_t*>(rows);
  const uint32_t* g_frozen = g + trained_pad / 2 * kConvGradPixels;
  for (int32_t px0 = 0; px0 < pixels; px0 += kConvGradPixels) {
    const int32_t valid = pixels - px0 < kConvGradPixels ? pixels - px0 : kConvGradPixels;
    // Past the last pixel the block repeats it; its sums are not sunk.
    for (int32_t k = 0; k < kConvGradPixels; ++k) {
      FoldPixel(p, dy, ratio, px0 + (k < valid ? k : valid - 1), trained_pad, rows + 2 * k,
                2 * kConvGradPixels);
    }
    const int32_t first = px0 * p.input_c;
    const auto put = [&](int32_t ic, int32_t k, int32_t acc) {
      if (k < valid) local(first + k * p.input_c + ic, acc);
    };
    for (int32_t ic = 0; ic < p.input_c; ++ic) {
      PixelSums q;
      DotPixels<true>(p, p.train_filter, 0, p.n_train, 0, ic, g, kConvGradPixels, q);
      DotPixels<true>(p, filter, p.n_train, p.output_c, 0, ic, g_frozen, kConvGradPixels, q);
      put(ic, 0, q.s0);
      put(ic, 1, q.s1);
      put(ic, 2, q.s2);
      put(ic, 3, q.s3);
    }
  }
  sink.Absorb(local);
}

// A 1-D layer (a single column or row, stride 1, no dilation, more than one tap): a window of
// the folded output gradient, one word per position per channel pair, each pair a line of
// Conv2dLineLength(p) positions (zeros where no output exists), so that for any tap four
// consecutive input positions read four consecutive words. The window slides by four positions
// a block.

// Output position o (or zeros past the ends) into word w of every pair's line.
void FoldPosition(const Conv2dParams& p, const GradView& dy, const float* ratio, int32_t b,
                  int32_t o, int32_t outputs, int32_t trained_pad, int32_t pairs, int32_t w,
                  int16_t* line) {
  const int32_t length = Conv2dLineLength(p);
  if (o >= 0 && o < outputs) {
    FoldPixel(p, dy, ratio, b * outputs + o, trained_pad, line + 2 * w, 2 * length);
    return;
  }
  for (int32_t j = 0; j < pairs; ++j) {
    line[2 * (j * length + w)] = 0;
    line[2 * (j * length + w) + 1] = 0;
  }
}

// Input channel ic's sums of one 1-D block, every tap of both weight ranges. One call for all
// of them, the tap calls inlined: a call per tap and range cost ~60 instructions of its own.
[[gnu::flatten]] void LineTaps(const Conv2dParams& p, const int8_t* filter, int32_t ic,
                               const uint32_t* words, const uint32_t* g_frozen, int32_t length,
                               PixelSums& q) {
  const int32_t taps = p.filter_h * p.filter_w;
  for (int32_t t = 0; t < taps; ++t) {
    // Input position i reads output i + pad - t through tap t: word taps - 1 - t on.
    const int32_t at = taps - 1 - t;
    DotPixels<false>(p, p.train_filter, 0, p.n_train, t, ic, words + at, length, q);
    DotPixels<false>(p, filter, p.n_train, p.output_c, t, ic, g_frozen + at, length, q);
  }
}

// The 1-D input gradient, four input positions at a time: sink(i, acc) for every input value.
// `line`: Conv2dLineInputGradRowsBytes(p) / 2 int16.
template <typename Sink>
void LineGather(const Conv2dParams& p, const int8_t* filter, const GradView& dy,
                const float* ratio, int16_t* line, const Sink& sink) {
  const Sink local = sink;  // (train_math.h, the sinks)
  const bool down = p.input_w == 1;  // positions along the height, else along the width
  const int32_t n = p.input_h * p.input_w, outputs = p.output_h * p.output_w;
  const int32_t taps = p.filter_h * p.filter_w, pad = down ? p.pad_h : p.pad_w;
  const int32_t length = Conv2dLineLength(p);
  const int32_t trained_pad = (p.n_train + 1) / 2 * 2;
  const int32_t pairs = trained_pad / 2 + (p.output_c - p.n_train + 1) / 2;
  // Block i0's window starts at output position i0 + first, the one its last tap reads first.
  const int32_t first = pad - (taps - 1);
  uint32_t* const words = reinterpret_cast<uint32_t*>(line);
  const uint32_t* g_frozen = words + trained_pad / 2 * length;
  for (int32_t b = 0; b < p.batches; ++b) {
    for (int32_t i0 = 0; i0 < n; i0 += kConvGradPixels) {
      const int32_t start = i0 + first;
      int32_t fresh = 0;  // the window's first position not carried over from the last block
      if (i0 > 0) {
        for (int32_t j = 0; j < pairs; ++j) {
          uint32_t* l = words + j * length;
          for (int32_t w = 0; w + kConvGradPixels < length; ++w) l[w] = l[w + kConvGradPixels];
        }
        fresh = length - kConvGradPixels;
      }
      for (int32_t w = fresh; w < length; ++w) {
        FoldPosition(p, dy, ratio, b, start + w, outputs, trained_pad, pairs, w, line);
      }
      const int32_t valid = n - i0 < kConvGradPixels ? n - i0 : kConvGradPixels;
      const int32_t base = (b * n + i0) * p.input_c;
      for (int32_t ic = 0; ic < p.input_c; ++ic) {
        PixelSums q;
        LineTaps(p, filter, ic, words, g_frozen, length, q);
        local(base + ic, q.s0);
        if (valid > 1) local(base + p.input_c + ic, q.s1);
        if (valid > 2) local(base + 2 * p.input_c + ic, q.s2);
        if (valid > 3) local(base + 3 * p.input_c + ic, q.s3);
      }
    }
  }
  sink.Absorb(local);
}

}  // namespace

float conv2d_input_grad(const Conv2dParams& p, const int8_t* filter, const GradView& dy,
                        const float* ratio, float acc_scale, int16_t* dx, int8_t* scratch,
                        int32_t scratch_bytes) {
  const int32_t taps = p.filter_h * p.filter_w;
  if (p.filter_c != p.input_c || taps > kConvGradMaxTaps ||
      scratch_bytes < Conv2dInputGradScratchBytes(p)) {
    return ref::conv2d_input_grad(p, filter, dy, ratio, acc_scale, dx);
  }
  const int32_t trained_pad = (p.n_train + 1) / 2 * 2;
  const int32_t row = Conv2dGradRowValues(p);
  int16_t* rows = reinterpret_cast<int16_t*>(scratch);
  const int32_t body = p.input_c & ~3;
  // Without dilation the output pixels one input pixel reads differ in (oy mod filter_h,
  // ox mod filter_w), so that pair names a slot each keeps until another pixel needs it: along
  // a 1-D model every output-gradient row is folded once per pass, along a 2-D row once per
  // input row that reads it. With dilation the slots are simply the reading taps in order.
  const bool ring = p.dilation_h == 1 && p.dilation_w == 1;
  // Gather form, one input pixel at a time: sum each input channel over the taps that read it
  // and the output channels.
  const auto gather = [&](const auto& sink) {
    const auto local = sink;  // (train_math.h, the sinks)
    int32_t held[kConvGradMaxTaps];  // the output pixel whose folded row each slot holds
    for (int32_t s = 0; s < taps; ++s) held[s] = -1;
    for (int32_t b = 0; b < p.batches; ++b) {
      for (int32_t iy = 0; iy < p.input_h; ++iy) {
        for (int32_t ix = 0; ix < p.input_w; ++ix) {
          int32_t tap_of[kConvGradMaxTaps];
          const int16_t* row_of[kConvGradMaxTaps];
          int32_t live = 0;
          for (int32_t fy = 0; fy < p.filter_h; ++fy) {
            int32_t oy = 0;
            if (!TapOrigin(iy, fy, p.pad_h, p.dilation_h, p.stride_h, p.output_h, &oy)) continue;
            for (int32_t fx = 0; fx < p.filter_w; ++fx) {
              int32_t ox = 0;
              if (!TapOrigin(ix, fx, p.pad_w, p.dilation_w, p.stride_w, p.output_w, &ox)) {
                continue;
              }
              const int32_t pixel = (b * p.output_h + oy) * p.output_w + ox;
              const int32_t slot = ring ? oy % p.filter_h * p.filter_w + ox % p.filter_w : live;
              int16_t* g = rows + slot * row;
              if (held[slot] != pixel) {
                FoldPixel(p, dy, ratio, pixel, trained_pad, g);
                held[slot] = pixel;
              }
              row_of[live] = g;
              tap_of[live++] = fy * p.filter_w + fx;
            }
          }
          const int32_t first = ((b * p.input_h + iy) * p.input_w + ix) * p.input_c;
          for (int32_t ic0 = 0; ic0 < body; ic0 += 4) {
            PairedQuad q;
            for (int32_t k = 0; k < live; ++k) {
              const int16_t* g = row_of[k];
              DotRows(p, p.train_filter, 0, p.n_train, tap_of[k], ic0, g, q);
              DotRows(p, filter, p.n_train, p.output_c, tap_of[k], ic0, g + trained_pad, q);
            }
            local(first + ic0, q.s0);
            local(first + ic0 + 1, q.s1);
            local(first + ic0 + 2, q.s2);
            local(first + ic0 + 3, q.s3);
          }
          for (int32_t ic = body; ic < p.input_c; ++ic) {
            int32_t acc = 0;
            for (int32_t k = 0; k < live; ++k) {
              const int16_t* g = row_of[k];
              acc += DotRowsScalar(p, p.train_filter, 0, p.n_train, tap_of[k], ic, g);
              acc += DotRowsScalar(p, filter, p.n_train, p.output_c, tap_of[k], ic,
                                   g + trained_pad);
            }
            local(first + ic, acc);
          }
        }
      }
    }
    sink.Absorb(local);
  };
  const int32_t n = p.batches * p.input_h * p.input_w * p.input_c;
  if (Conv2dPointwiseGrad(p) && scratch_bytes >= Conv2dPointwiseInputGradScratchBytes(p)) {
    const auto pointwise = [&](const auto& sink) {
      PointwiseGather(p, filter, dy, ratio, rows, sink);
    };
    int16_t* high = rows + Conv2dPointwiseInputGradRowsBytes(p) / 2;
    return GatherRequantizeStaged(n, pointwise, acc_scale, dx, high);
  }
  if (Conv2dLineGrad(p) && scratch_bytes >= Conv2dLineInputGradScratchBytes(p)) {
    const auto line = [&](const auto& sink) { LineGather(p, filter, dy, ratio, rows, sink); };
    int16_t* high = rows + Conv2dLineInputGradRowsBytes(p) / 2;
    return GatherRequantizeStaged(n, line, acc_scale, dx, high);
  }
  if (scratch_bytes >= Conv2dStagedInputGradScratchBytes(p)) {
    int16_t* high = rows + Conv2dInputGradScratchBytes(p) / 2;
    return GatherRequantizeStaged(n, gather, acc_scale, dx, high);
  }
  return GatherRequantize(n, gather, acc_scale, dx);
}

float conv2d_input_grad(const Conv2dParams& p, const int8_t* filter, const int16_t* dy,
                        const float* ratio, float acc_scale, int16_t* dx, int8_t* scratch,
                        int32_t scratch_bytes) {
  return conv2d_input_grad(p, filter, GradView{dy, p.output_c, nullptr, p.output_c}, ratio,
                           acc_scale, dx, scratch, scratch_bytes);
}

void conv2d_bias_update(const Conv2dParams& p, const GradView& dy, float lr_dy,
                        const float* bias_coef, int32_t* bias, int8_t*, int32_t) {
  const int32_t rows = p.batches * p.output_h * p.output_w;
  if (dy.pixel_stride != 0 || rows > kInt32SumRows) {
    ref::conv2d_bias_update(p, dy, lr_dy, bias_coef, bias);
    return;
  }
  // A broadcast (a spatial MEAN's gradient): every pixel holds data[c], so the column sum is
  // data[c] times the pixels the mask keeps, counted a bit at a time instead of read.
  for (int32_t c = 0; c < p.output_c; ++c) {
    int32_t kept = rows;
    if (dy.mask != nullptr) {
      kept = 0;
      for (int32_t i = c; i < rows * dy.channels; i += dy.channels) {
        kept += (dy.mask[i >> 3] >> (i & 7)) & 1;
      }
    }
    UpdateBiasValue(&bias[c], static_cast<int64_t>(dy.data[c]) * kept, lr_dy, bias_coef[c]);
  }
}

void conv2d_bias_update(const Conv2dParams& p, const int16_t* dy, float lr_dy,
                        const float* bias_coef, int32_t* bias, int8_t*, int32_t) {
  UpdateBiasRows(p.batches * p.output_h * p.output_w, p.output_c, dy, lr_dy, bias_coef, bias);
}

namespace {

// SMLAD pairs whose sums stay within int32: |dy| <= 8191 and |x| <= 128, so 2 * 1023 pixels.
constexpr int32_t kWeightGradPairs = 1023;

// The output positions o in [0, out) whose tap k reads inside the input (a contiguous range).
void ValidRange(int32_t out, int32_t in, int32_t k, int32_t pad, int32_t dilation,
                int32_t stride, int32_t* first, int32_t* end) {
  int32_t o = 0;
  while (o < out && o * stride - pad + k * dilation < 0) ++o;
  *first = o;
  while (o < out && o * stride - pad + k * dilation < in) ++o;
  *end = o;
}

// One tap's outputs as lines of consecutive positions, each a run of the dy column (step 1)
// and of the input (step x_step): along the output row, or down the column of a one-pixel-wide
// (1-D) output, so a 1-D model's pixels pair as well as a 2-D row's. Lines that continue each
// other in both (whole rows of a 1x1 stride-1 filter, say) are merged into one.
struct TapWalk {
  int32_t batches, lines, length;  // lines per batch, positions per line
  int32_t x_step;                  // input bytes from one position to the next
  const int8_t* x_first;           // batch 0, line 0, position 0
  int32_t dy_first;                // its pixel in the dy column
  int32_t line_dy, line_x, batch_dy, batch_x;  // steps from one line / batch to the next

  // fn(x, g) for every line: its first input byte and first dy value.
  template <typename Fn>
  void ForEachLine(const int16_t* column, const Fn& fn) const {
    for (int32_t b = 0; b < batches; ++b) {
      const int8_t* x = x_first + b * batch_x;
      const int16_t* g = column + dy_first + b * batch_dy;
      for (int32_t l = 0; l < lines; ++l, x += line_x, g += line_dy) fn(x, g);
    }
  }
};

TapWalk WalkTap(const Conv2dParams& p, const int8_t* input, int32_t fy, int32_t fx) {
  int32_t oy0 = 0, oy1 = 0, ox0 = 0, ox1 = 0;
  ValidRange(p.output_h, p.input_h, fy, p.pad_h, p.dilation_h, p.stride_h, &oy0, &oy1);
  ValidRange(p.output_w, p.input_w, fx, p.pad_w, p.dilation_w, p.stride_w, &ox0, &ox1);
  const int32_t c = p.input_c;
  TapWalk w{};
  w.x_first = input + ((oy0 * p.stride_h - p.pad_h + fy * p.dilation_h) * p.input_w +
                       ox0 * p.stride_w - p.pad_w + fx * p.dilation_w) * c;
  w.dy_first = oy0 * p.output_w + ox0;
  w.batches = p.batches;
  w.batch_dy = p.output_h * p.output_w;
  w.batch_x = p.input_h * p.input_w * c;
  if (oy1 <= oy0 || ox1 <= ox0) {  // the tap reads only padding
    w.batches = 0;
    return w;
  }
  if (p.output_w == 1) {  // 1-D along the rows: a line is a whole column
    w.lines = 1;
    w.length = oy1 - oy0;
    w.x_step = p.stride_h * p.input_w * c;
  } else {
    w.lines = oy1 - oy0;
    w.length = ox1 - ox0;
    w.x_step = p.stride_w * c;
    w.line_dy = p.output_w;
    w.line_x = p.stride_h * p.input_w * c;
    if (w.line_dy == w.length && w.line_x == w.length * w.x_step) {
      w.length *= w.lines;
      w.lines = 1;
    }
  }
  if (w.lines == 1 && w.batch_dy == w.length && w.batch_x == w.length * w.x_step) {
    w.length *= w.batches;
    w.batches = 1;
  }
  return w;
}

// `pairs` pairs of positions (x, x + step), (x + 2 step, x + 3 step), ... against the dy pairs
// at g: q.s_j += sum of dy * x[j]; x and g advance past them.
void SumPairs(const int8_t*& x, int32_t step, const int16_t*& g, int32_t pairs,
              PairedQuad& q) {
  if (pairs <= 0) return;
#if MT_HAVE_DSP
  // As PairedQuad::Add per pair; GCC spills the pointers here (20 instructions a pair), written
  // out a pair is 16 with everything in registers.
  uint32_t a, b, d, high;
  asm volatile(
      "1:\n\t"
      "ldr %[a], [%[x]]\n\t"
      "ldr %[b], [%[x], %[step]]\n\t"
      "add %[x], %[x], %[step], lsl #1\n\t"
      "ldr %[d], [%[g]], #4\n\t"
      "pkhtb %[high], %[b], %[a], asr #16\n\t"
      "pkhbt %[a], %[a], %[b], lsl #16\n\t"
      "sxtb16 %[b], %[a]\n\t"
      "smlad %[s0], %[d], %[b], %[s0]\n\t"
      "sxtb16 %[b], %[a], ror #8\n\t"
      "smlad %[s1], %[d], %[b], %[s1]\n\t"
      "sxtb16 %[b], %[high]\n\t"
      "smlad %[s2], %[d], %[b], %[s2]\n\t"
      "sxtb16 %[b], %[high], ror #8\n\t"
      "smlad %[s3], %[d], %[b], %[s3]\n\t"
      "subs %[n], %[n], #1\n\t"
      "bne 1b"
      : [x] "+r"(x), [g] "+r"(g), [n] "+r"(pairs), [s0] "+r"(q.s0), [s1] "+r"(q.s1),
        [s2] "+r"(q.s2), [s3] "+r"(q.s3), [a] "=&r"(a), [b] "=&r"(b), [d] "=&r"(d),
        [high] "=&r"(high)
      : [step] "r"(step)
      : "cc", "memory");
#else
  for (; pairs > 0; --pairs, x += 2 * step, g += 2) {
    q.Add(dsp::Load4(x), dsp::Load4(x + step), dsp::Load4(g));
  }
#endif
}

// Input channels ic0..ic0+3 of one tap: adds the sum over its positions of dy * x to gw.
void TapSums(const TapWalk& w, const int16_t* column, int32_t ic0, int64_t gw[4]) {
  w.ForEachLine(column, [&](const int8_t* x, const int16_t* g) {
    x += ic0;
    int32_t left = w.length;
    while (left > 0) {
      PairedQuad q;
      const int32_t pairs = left / 2 < kWeightGradPairs ? left / 2 : kWeightGradPairs;
      left -= 2 * pairs;
      SumPairs(x, w.x_step, g, pairs, q);
      if (left == 1) {  // an odd last position: its pair's second lane is masked off
        const uint32_t a = dsp::Load4(x);
        q.Add(a, a, dsp::Load4(g) & 0xFFFFu);
        left = 0;
      }
      gw[0] += q.s0;
      gw[1] += q.s1;
      gw[2] += q.s2;
      gw[3] += q.s3;
    }
  });
}

// The same for one input channel (past the last group of four).
int64_t TapSum(const TapWalk& w, const int16_t* column, int32_t ic) {
  int64_t gw = 0;
  w.ForEachLine(column, [&](const int8_t* x, const int16_t* g) {
    x += ic;
    for (int32_t k = 0; k < w.length; ++k, x += w.x_step) gw += g[k] * *x;
  });
  return gw;
}

// Sum of the dy column over one tap's positions.
int64_t TapDySum(const TapWalk& w, const int16_t* column) {
  int64_t sum = 0;
  w.ForEachLine(column, [&](const int8_t*, const int16_t* g) {
    for (int32_t k = 0; k < w.length; ++k) sum += g[k];
  });
  return sum;
}

// Output channel o's dy over `pixels` positions (masks and broadcast views applied), then a 0:
// the pair read at the last position.
void GatherColumn(const GradView& dy, int32_t o, int32_t pixels, int16_t* column) {
  for (int32_t px = 0; px < pixels; ++px) column[px] = dy.At(px, o);
  column[pixels] = 0;
}

// The int32 sums over `pairs` position pairs of the dy run g against four rows (x, x + row,
// ...) of the transposed input, added to s.
[[gnu::noinline]] void TransposedSums(const int16_t* g, const int16_t* x, int32_t row,
                                     int32_t pairs, int32_t s[4]) {
  const int16_t* x1 = x + row;
  const int16_t* x2 = x1 + row;
  const int16_t* x3 = x2 + row;
  int32_t s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  const int16_t* const end = g + 2 * pairs;
#if MT_HAVE_DSP
  // Inlined, GCC spills two of the row pointers (17 instructions a pair; here 11).
  if (g != end) {
    uint32_t d, a;
    asm volatile(
        "1:\n\t"
        "ldr %[d], [%[g]], #4\n\t"
        "ldr %[a], [%[x0]], #4\n\t"
        "smlad %[s0], %[d], %[a], %[s0]\n\t"
        "ldr %[a], [%[x1]], #4\n\t"
        "smlad %[s1], %[d], %[a], %[s1]\n\t"
        "ldr %[a], [%[x2]], #4\n\t"
        "smlad %[s2], %[d], %[a], %[s2]\n\t"
        "ldr %[a], [%[x3]], #4\n\t"
        "smlad %[s3], %[d], %[a], %[s3]\n\t"
        "cmp %[g], %[end]\n\t"
        "bne 1b"
        : [g] "+r"(g), [x0] "+r"(x), [x1] "+r"(x1), [x2] "+r"(x2), [x3] "+r"(x3),
          [s0] "+r"(s0), [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3), [d] "=&r"(d),
          [a] "=&r"(a)
        : [end] "r"(end)
        : "cc", "memory");
  }
#else
  for (; g != end; g += 2, x += 2, x1 += 2, x2 += 2, x3 += 2) {
    const uint32_t d = dsp::Load4(g);
    s0 = dsp::Dot2(d, dsp::Load4(x), s0);
    s1 = dsp::Dot2(d, dsp::Load4(x1), s1);
    s2 = dsp::Dot2(d, dsp::Load4(x2), s2);
    s3 = dsp::Dot2(d, dsp::Load4(x3), s3);
  }
#endif
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
}

// conv2d_weight_update of a Conv2dTransposedWeightGrad layer: output position o's tap t reads
// input position o + t - pad (the one axis of a 1-D layer; every pixel of a pointwise one).
// The sums fit int32: Conv2dTransposedWeightGrad caps the positions (kTransposedMaxPositions).
template <Rounding kRounding>
void TransposedWeightUpdate(const Conv2dParams& p, const int8_t* input, const GradView& dy,
                            float coef, const float* w_coef, uint32_t* prng, int8_t* weights,
                            int8_t* scratch) {
  const int32_t n_in = p.input_h * p.input_w, n_out = p.output_h * p.output_w;
  const int32_t c = p.input_c, body = c & ~3;
  const int32_t taps = p.filter_h * p.filter_w;
  const int32_t pad = p.input_w == 1 ? p.pad_h : p.pad_w;  // 0 for a pointwise layer
  const int32_t row = Conv2dTransposedRowValues(p);
  int16_t* column = reinterpret_cast<int16_t*>(scratch);
  int16_t* xt = reinterpret_cast<int16_t*>(scratch + Conv2dWeightUpdateScratchBytes(p));
  for (int32_t ic = 0; ic < c; ++ic) {
    int16_t* r = xt + ic * row;
    const int8_t* x = input + ic;
    for (int32_t i = 0; i < n_in; ++i, x += c) r[i] = static_cast<int16_t>(*x + p.input_offset);
    for (int32_t i = n_in; i < row; ++i) r[i] = 0;
  }
  uint32_t state = *prng;
  int8_t* w = weights;
  for (int32_t o = 0; o < p.n_train; ++o) {
    GatherColumn(dy, o, n_out, column);
    const float coef_o = coef * w_coef[o];
    for (int32_t t = 0; t < taps; ++t, w += c) {
      // Outputs [o0, o1) read inside the input through tap t.
      const int32_t o0 = pad - t > 0 ? pad - t : 0;
      const int32_t o1 = n_in + pad - t < n_out ? n_in + pad - t : n_out;
      const int32_t length = o1 > o0 ? o1 - o0 : 0;
      const int16_t* const g0 = column + o0;
      const int16_t* const x0 = xt + (o0 + t - pad);
      for (int32_t ic0 = 0; ic0 < body; ic0 += 4) {
        // An odd run's last pair reads one past its end, where a 0 waits: the dy column's
        // trailing 0 if the run ends at the last output, else the row's past the last input.
        int32_t gw[4] = {0, 0, 0, 0};
        TransposedSums(g0, x0 + ic0 * row, row, (length + 1) / 2, gw);
        for (int32_t j = 0; j < 4; ++j) {
          UpdateWeightFast<kRounding>(&w[ic0 + j], gw[j], coef_o, state);
        }
      }
      for (int32_t ic = body; ic < c; ++ic) {
        const int16_t* x = x0 + ic * row;
        int32_t gw = 0;
        for (int32_t k = 0; k < length; ++k) gw += g0[k] * x[k];
        UpdateWeightFast<kRounding>(&w[ic], gw, coef_o, state);
      }
    }
  }
  *prng = state;
}

}  // namespace

void conv2d_weight_update(const Conv2dParams& p, const int8_t* input, const GradView& dy,
                          float coef, const float* w_coef, Rounding rounding, uint32_t* prng,
                          int8_t* weights, int8_t* scratch, int32_t scratch_bytes) {
  if (p.filter_c != p.input_c || scratch_bytes < Conv2dWeightUpdateScratchBytes(p)) {
    ref::conv2d_weight_update(p, input, dy, coef, w_coef, rounding, prng, weights);
    return;
  }
  if (Conv2dTransposedWeightGrad(p) &&
      scratch_bytes >= Conv2dTransposedWeightUpdateScratchBytes(p)) {
    WithRounding(rounding, [&](auto rounding_tag) {
      TransposedWeightUpdate<decltype(rounding_tag)::value>(p, input, dy, coef, w_coef, prng,
                                                            weights, scratch);
    });
    return;
  }
  // GW[o, t, ic] = sum over tap t's output positions of dy[pos, o] * (x[pos, t, ic] + zx)
  //              = (sum of dy * x) + input_offset * (sum of dy), two positions per SMLAD;
  // updated in memory order (o, t, ic), one PRNG draw per weight as in the reference.
  const int32_t pixels = p.batches * p.output_h * p.output_w;
  const int32_t c = p.input_c;
  const int32_t body = c & ~3;
  int16_t* column = reinterpret_cast<int16_t*>(scratch);
  int8_t* w = weights;
  for (int32_t o = 0; o < p.n_train; ++o) {
    GatherColumn(dy, o, pixels, column);
    const float coef_o = coef * w_coef[o];
    for (int32_t fy = 0; fy < p.filter_h; ++fy) {
      for (int32_t fx = 0; fx < p.filter_w; ++fx, w += c) {
        const TapWalk walk = WalkTap(p, input, fy, fx);
        const int64_t offset_term = static_cast<int64_t>(p.input_offset) * TapDySum(walk, column);
        for (int32_t ic0 = 0; ic0 < body; ic0 += 4) {
          int64_t gw[4] = {offset_term, offset_term, offset_term, offset_term};
          TapSums(walk, column, ic0, gw);
          for (int32_t j = 0; j < 4; ++j) UpdateWeight(&w[ic0 + j], gw[j], coef_o, rounding, prng);
        }
        for (int32_t ic = body; ic < c; ++ic) {
          UpdateWeight(&w[ic], offset_term + TapSum(walk, column, ic), coef_o, rounding, prng);
        }
      }
    }
  }
}

void conv2d_weight_update(const Conv2dParams& p, const int8_t* input, const int16_t* dy,
                          float coef, const float* w_coef, Rounding rounding, uint32_t* prng,
                          int8_t* weights, int8_t* scratch, int32_t scratch_bytes) {
  conv2d_weight_update(p, input, GradView{dy, p.output_c, nullptr, p.output_c}, coef, w_coef,
                       rounding, prng, weights, scratch, scratch_bytes);
}

}  // namespace mt::m7
