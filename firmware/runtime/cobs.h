// Streaming COBS (Consistent Overhead Byte Stuffing) for the serial link.
//
// COBS rewrites a frame so it contains no 0x00 byte; 0x00 then marks frame boundaries. The
// encoded form is a sequence of blocks: a code byte c (1..255) followed by c-1 data bytes; every
// block with c < 255 stands for its data followed by a 0x00, except that the zero implied by the
// final block is dropped. Both classes work one byte at a time with fixed storage, so frames of
// any length (a 50 KB input tensor) pass through without a frame buffer. The byte sequence they
// produce and accept is exactly that of the PyPI `cobs` package the host uses.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mt {

class CobsDecoder {
 public:
  enum class Event : uint8_t {
    kNone,    // byte consumed, nothing to report
    kByte,    // *out holds the next decoded byte
    kEmpty,   // delimiter with no encoded bytes since the previous one (idle line): ignore
    kEnd,     // delimiter ending a well-formed encoding
    kBroken,  // delimiter arrived inside a block: the frame was cut short
  };

  // Consumes one raw byte from the line.
  Event feed(uint8_t in, uint8_t* out);

  // Forgets the frame in progress; the next byte starts a new encoding.
  void reset();

  // True when encoded bytes arrived since the last delimiter.
  bool in_frame() const { return raw_count_ != 0; }

 private:
  uint32_t raw_count_ = 0;     // encoded bytes since the last delimiter (saturating)
  uint8_t block_left_ = 0;     // data bytes still expected in the current block
  bool zero_after_block_ = false;  // current block's code < 255: a zero follows its data
  bool zero_pending_ = false;  // a finished block owes a zero, emitted only if more blocks follow
};

class CobsEncoder {
 public:
  using Sink = void (*)(const uint8_t* data, size_t len);

  explicit CobsEncoder(Sink sink) : sink_(sink) {}

  // Writes the leading delimiter of a frame.
  void begin();
  // Encodes one byte of the frame.
  void put(uint8_t byte);
  // Flushes the last block and writes the trailing delimiter.
  void end();

 private:
  void flush_block();

  Sink sink_;
  // block_[0] is reserved for the code byte so each block leaves in a single sink call.
  uint8_t block_[255];
  uint8_t count_ = 0;  // data bytes in block_[1..]
};

}  // namespace mt
