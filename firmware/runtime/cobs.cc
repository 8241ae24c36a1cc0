#include "cobs.h"

namespace mt {

CobsDecoder::Event CobsDecoder::feed(uint8_t in, uint8_t* out) {
  if (in == 0) {
    const bool had_bytes = raw_count_ != 0;
    const bool cut_short = block_left_ != 0;
    reset();
    if (!had_bytes) return Event::kEmpty;
    return cut_short ? Event::kBroken : Event::kEnd;
  }
  if (raw_count_ != UINT32_MAX) ++raw_count_;
  if (block_left_ == 0) {
    // A code byte. The zero owed by the previous block is real now that another block follows.
    const bool emit_zero = zero_pending_;
    block_left_ = static_cast<uint8_t>(in - 1);
    zero_after_block_ = in != 0xFF;
    zero_pending_ = block_left_ == 0 && zero_after_block_;
    if (emit_zero) {
      *out = 0;
      return Event::kByte;
    }
    return Event::kNone;
  }
  --block_left_;
  zero_pending_ = block_left_ == 0 && zero_after_block_;
  *out = in;
  return Event::kByte;
}

void CobsDecoder::reset() {
  raw_count_ = 0;
  block_left_ = 0;
  zero_after_block_ = false;
  zero_pending_ = false;
}

void CobsEncoder::begin() {
  static const uint8_t kDelimiter = 0;
  count_ = 0;
  sink_(&kDelimiter, 1);
}

void CobsEncoder::put(uint8_t byte) {
  // A full block is flushed only when the next byte arrives: if the frame ends right after 254
  // non-zero bytes, the final 0xFF block needs no empty block after it (what `cobs` does).
  if (count_ == 254) flush_block();
  if (byte == 0) {
    flush_block();
  } else {
    block_[1 + count_] = byte;
    ++count_;
  }
}

void CobsEncoder::end() {
  static const uint8_t kDelimiter = 0;
  flush_block();
  sink_(&kDelimiter, 1);
}

void CobsEncoder::flush_block() {
  block_[0] = static_cast<uint8_t>(count_ + 1);
  sink_(block_, static_cast<size_t>(count_) + 1);
  count_ = 0;
}

}  // namespace mt
