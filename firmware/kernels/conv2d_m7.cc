// Cortex-M7 CONV_2D: im2col to int16, then 2x2-blocked SMLAD dot products (conv2d_m7.h).
#include "kernels/conv2d_m7.h"

#include "kernels/dsp.h"
#include "kernels/fixed_point.h"
#include "kernels/requantize_m7.h"

namespace mt::m7 {

namespace {

// A column holds `depth` int16 values in groups of four stored as (k0, k2, k1, k3), the last
// group zero-padded.
struct Columns {
  int32_t depth;  // filter_h * filter_w * filter_c
  int32_t body;   // depth & ~3: values covered by whole weight words
  int32_t words;  // uint32 words per column (depth rounded up to 4, halved)
};

inline int32_t Permuted(int32_t k) { return (k & ~3) | ((k & 1) << 1) | ((k >> 1) & 1); }

// The receptive field of output pixel (b, oy, ox) plus the input offset, as one column.
void Im2col(const Conv2dParams& p, const Columns& c, const int8_t* input, int32_t b, int32_t oy,
            int32_t ox, uint32_t* column) {
  auto* col = reinterpret_cast<int16_t*>(column);
  const int32_t in_y0 = oy * p.stride_h - p.pad_h;
  const int32_t in_x0 = ox * p.stride_w - p.pad_w;
  const bool by_words = (p.filter_c & 3) == 0;
  const uint32_t offset2 = dsp::Splat16(p.input_offset);
  int32_t k = 0;
  for (int32_t fy = 0; fy < p.filter_h; ++fy) {
    const int32_t iy = in_y0 + fy * p.dilation_h;
    for (int32_t fx = 0; fx < p.filter_w; ++fx, k += p.filter_c) {
      const int32_t ix = in_x0 + fx * p.dilation_w;
      const bool inside = iy >= 0 && iy < p.input_h && ix >= 0 && ix < p.input_w;
      const int8_t* in = input + ((b * p.input_h + iy) * p.input_w + ix) * p.input_c;
      if (by_words) {
        // Every tap starts a weight word: unpack four bytes per step, already permuted.
        uint32_t* out = column + k / 2;
        uint32_t* const end = out + p.filter_c / 2;
        if (!inside) {
          for (; out != end; out += 2) out[0] = out[1] = 0;
          continue;
        }
        for (; out != end; out += 2, in += 4) {
          const uint32_t x = dsp::Load4(in);
          out[0] = dsp::Add16(dsp::ExtendEven(x), offset2);
          out[1] = dsp::Add16(dsp::ExtendOdd(x), offset2);
        }
        continue;
      }
      for (int32_t ic = 0; ic < p.filter_c; ++ic) {
        col[Permuted(k + ic)] =
            inside ? static_cast<int16_t>(in[ic] + p.input_offset) : int16_t{0};
      }
    }
  }
  // The last group's unused lanes meet TailWord's zero bytes; zero them so that no
  // uninitialised scratch is read.
  for (int32_t j = c.depth; j < 2 * c.words; ++j) col[Permuted(j)] = 0;
}

// The last depth - body (1 to 3) weights of a row as one word, zero-filled: the row may end
// the filter array, so no word is read past it.
inline uint32_t TailWord(const int8_t* w, int32_t n) {
  uint32_t v = static_cast<uint8_t>(w[0]);
  if (n > 1) v |= static_cast<uint32_t>(static_cast<uint8_t>(w[1])) << 8;
  if (n > 2) v |= static_cast<uint32_t>(static_cast<uint8_t>(w[2])) << 16;
  return v;
}

// The 2x2 block: weight rows a, b against columns 0, 1, a word of four weights at a time.
struct Block {
  int32_t a0, a1, b0, b1;

  void Group(uint32_t wa, uint32_t wb, const uint32_t*& c0, const uint32_t*& c1) {
    uint32_t c0_even, c0_odd, c1_even, c1_odd;
    dsp::LoadPair(c0, c0_even, c0_odd);
    dsp::LoadPair(c1, c1_even, c1_odd);
    Lanes(dsp::ExtendEven(wa), dsp::ExtendEven(wb), c0_even, c1_even);
    Lanes(dsp::ExtendOdd(wa), dsp::ExtendOdd(wb), c0_odd, c1_odd);
  }

  // Two int16 lanes of each weight row against the same two lanes of each column.
  void Lanes(uint32_t wa, uint32_t wb, uint32_t x0, uint32_t x1) {
    a0 = dsp::Dot2(wa, x0, a0);
    a1 = dsp::Dot2(wa, x1, a1);
    b0 = dsp::Dot2(wb, x0, b0);
    b1 = dsp::Dot2(wb, x1, b1);
  }
};

// Output channels [oc_begin, oc_end) of two pixels (outputs out0 and out1), weights from rows.
// An odd last channel runs as a pair with itself (its second result is dropped).
template <Requant kMode>
void Channels(const OutputStage& s, const Columns& c, const int8_t* rows, const int32_t* bias,
              const uint32_t* x0, const uint32_t* x1, int8_t* out0, int8_t* out1,
              int32_t oc_begin, int32_t oc_end) {
  const int32_t depth = c.depth;
  const int32_t tail = c.depth - c.body;
  const uint32_t* const x0_body_end = x0 + c.body / 2;
  for (int32_t oc = oc_begin; oc < oc_end; oc += 2) {
    const int32_t od = oc + 1 < oc_end ? oc + 1 : oc;
    const int8_t* wa_at = rows + oc * depth;
    const int8_t* wb_at = rows + od * depth;
    Block k{0, 0, 0, 0};
    if (bias != nullptr) {
      k.a0 = k.a1 = bias[oc];
      k.b0 = k.b1 = bias[od];
    }
    const uint32_t* c0 = x0;
    const uint32_t* c1 = x1;
    while (c0 != x0_body_end) {
      const uint32_t wa = dsp::Load4(wa_at);
      const uint32_t wb = dsp::Load4(wb_at);
      wa_at += 4;
      wb_at += 4;
      k.Group(wa, wb, c0, c1);
    }
    if (tail != 0) k.Group(TailWord(wa_at, tail), TailWord(wb_at, tail), c0, c1);
    // All four before any store: an int8 store may alias the multipliers, which would then be
    // loaded again for the second pixel.
    const int8_t ya0 = Requantize<kMode>(s, k.a0, oc);
    const int8_t ya1 = Requantize<kMode>(s, k.a1, oc);
    const int8_t yb0 = Requantize<kMode>(s, k.b0, od);
    const int8_t yb1 = Requantize<kMode>(s, k.b1, od);
    out0[oc] = ya0;
    out1[oc] = ya1;
    out0[od] = yb0;
    out1[od] = yb1;
  }
}

}  // namespace

void conv2d_s8(const Conv2dParams& p, const int8_t* input, const int8_t* filter,
               const int32_t* bias, int8_t* output, bool bounded, int8_t* scratch,
               int32_t scratch_bytes) {
  if (p.filter_c != p.input_c || scratch_bytes < Conv2dScratchBytes(p) ||
      (reinterpret_cast<uintptr_t>(scratch) & 3) != 0) {
    ref::conv2d_s8(p, input, filter, bias, output);
    return;
  }
  const int32_t depth = p.filter_h * p.filter_w * p.filter_c;
  const Columns c{depth, depth & ~3, (depth + 3) / 4 * 2};
  auto* x0 = reinterpret_cast<uint32_t*>(scratch);
  uint32_t* x1 = x0 + c.words;
  const OutputStage s{p.multiplier, p.shift, p.output_offset, p.act_min, p.act_max};
  const Requant mode = ChooseRequant(bounded, p.act_min, p.act_max);
  const int32_t pixels = p.batches * p.output_h * p.output_w;
  const int32_t per_image = p.output_h * p.output_w;
  // Pixels two at a time in output order; an odd last pixel is paired with itself.
  for (int32_t i = 0; i < pixels; i += 2) {
    const int32_t j = i + 1 < pixels ? i + 1 : i;
    Im2col(p, c, input, i / per_image, i % per_image / p.output_w, i % p.output_w, x0);
    Im2col(p, c, input, j / per_image, j % per_image / p.output_w, j % p.output_w, x1);
    int8_t* out0 = output + i * p.output_c;
    int8_t* out1 = output + j * p.output_c;
    // The trained prefix's weights change on the device: its requantization stays checked.
    Channels<Requant::kChecked>(s, c, p.train_filter, bias, x0, x1, out0, out1, 0, p.n_train);
    WithRequant(mode, [&](auto mode_tag) {
      Channels<decltype(mode_tag)::value>(s, c, filter, bias, x0, x1, out0, out1, p.n_train,
                                          p.output_c);
    });
  }
}

}  // namespace mt::m7
