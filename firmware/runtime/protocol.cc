#include "protocol.h"

#include <cstring>

#include "crc32.h"

namespace mt {
namespace {

uint8_t g_small_payload[kMaxSmallPayload];

uint32_t ReadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

}  // namespace

// ---- Text ----

Text::Text(char* buf, size_t size) : buf_(buf), size_(size) {
  if (size_ != 0) buf_[0] = '\0';
}

Text& Text::operator<<(const char* s) {
  while (*s != '\0') put(*s++);
  return *this;
}

Text& Text::operator<<(uint32_t v) {
  char digits[10];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0) put(digits[--n]);
  return *this;
}

void Text::put(char c) {
  if (len_ + 1 >= size_) return;
  buf_[len_++] = c;
  buf_[len_] = '\0';
}

// ---- standard sinks ----

uint8_t* small_payload_buffer() { return g_small_payload; }

bool small_payload_sink(uint32_t payload_len, PayloadDest* dest, Refusal* why) {
  if (payload_len > kMaxSmallPayload) {
    *why = {Status::kTooLong, kMaxSmallPayload};
    return false;
  }
  *dest = {g_small_payload, payload_len, nullptr};
  return true;
}

bool empty_payload_sink(uint32_t payload_len, PayloadDest* dest, Refusal* why) {
  if (payload_len != 0) {
    *why = {Status::kTooLong, 0};
    return false;
  }
  *dest = {g_small_payload, 0, nullptr};
  return true;
}

// ---- ReplyWriter ----

void ReplyWriter::begin(uint8_t type, uint16_t seq, uint32_t payload_len) {
  encoder_.begin();
  crc_state_ = kCrc32Init;
  write_u8(kProtocolVersion);
  write_u8(type);
  write_u16(seq);
  write_u32(payload_len);
}

void ReplyWriter::write(const uint8_t* data, size_t len) {
  crc_state_ = crc32_update(crc_state_, data, len);
  for (size_t i = 0; i < len; ++i) encoder_.put(data[i]);
}

void ReplyWriter::write_u16(uint16_t v) {
  const uint8_t b[2] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8)};
  write(b, sizeof(b));
}

void ReplyWriter::write_u32(uint32_t v) {
  const uint8_t b[4] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                        static_cast<uint8_t>(v >> 16), static_cast<uint8_t>(v >> 24)};
  write(b, sizeof(b));
}

void ReplyWriter::write_u64(uint64_t v) {
  write_u32(static_cast<uint32_t>(v));
  write_u32(static_cast<uint32_t>(v >> 32));
}

void ReplyWriter::write_f32(float v) {
  uint32_t bits;
  static_assert(sizeof(bits) == sizeof(v), "float must be IEEE binary32");
  std::memcpy(&bits, &v, sizeof(bits));
  write_u32(bits);
}

void ReplyWriter::end() {
  const uint32_t crc = crc32_final(crc_state_);
  for (int i = 0; i < 4; ++i) encoder_.put(static_cast<uint8_t>(crc >> (8 * i)));
  encoder_.end();
}

void ReplyWriter::error(uint16_t seq, Status status, const char* message) {
  const size_t len = std::strlen(message);
  begin(kErrorReply, seq, static_cast<uint32_t>(2 + len));
  write_u16(static_cast<uint16_t>(status));
  write(reinterpret_cast<const uint8_t*>(message), len);
  end();
}

// ---- FrameReader ----

uint32_t FrameReader::request_mask() const {
  uint32_t mask = 0;
  for (size_t i = 0; i < handler_count_; ++i) {
    if (handlers_[i].type < 32) mask |= 1u << handlers_[i].type;
  }
  return mask;
}

FrameResult FrameReader::feed(uint8_t byte, uint64_t now_us) {
  last_byte_us_ = now_us;
  if (resync_) {
    if (byte == 0) {
      resync_ = false;
      cobs_.reset();
      start_frame();
    }
    return {};
  }
  uint8_t decoded = 0;
  switch (cobs_.feed(byte, &decoded)) {
    case CobsDecoder::Event::kNone:
      return {};
    case CobsDecoder::Event::kByte:
      take(decoded);
      return {};
    case CobsDecoder::Event::kEmpty:
      start_frame();
      return {};
    case CobsDecoder::Event::kEnd:
      return finish(false);
    case CobsDecoder::Event::kBroken:
      return finish(true);
  }
  return {};
}

FrameResult FrameReader::poll(uint64_t now_us) {
  if (resync_ || !cobs_.in_frame()) return {};
  if (now_us - last_byte_us_ < kInterByteTimeoutUs) return {};
  FrameResult result = error(Status::kTimeout, count_, 0);
  cobs_.reset();
  start_frame();
  resync_ = true;
  return result;
}

void FrameReader::start_frame() {
  count_ = 0;
  header_ = {};
  handler_ = nullptr;
  accepted_ = false;
  dest_ = {};
  refusal_ = {Status::kOk, 0};
  crc_state_ = kCrc32Init;
}

void FrameReader::take(uint8_t byte) {
  const uint32_t index = count_;
  if (count_ != UINT32_MAX) ++count_;
  if (index < kHeaderBytes) {
    header_bytes_[index] = byte;
    crc_state_ = crc32_update_byte(crc_state_, byte);
    if (index + 1 == kHeaderBytes) parse_header();
    return;
  }
  // 64-bit so a payload_len near 4 GB cannot wrap the bounds below.
  const uint64_t payload_end = uint64_t{kHeaderBytes} + header_.payload_len;
  if (index < payload_end) {
    crc_state_ = crc32_update_byte(crc_state_, byte);
    if (accepted_) {
      const uint32_t offset = index - kHeaderBytes;
      if (offset < dest_.head_bytes) {
        dest_.head[offset] = byte;
      } else {
        dest_.tail[offset - dest_.head_bytes] = byte;
      }
    }
  } else if (index < payload_end + kCrcBytes) {
    crc_bytes_[index - payload_end] = byte;
  }
  // Bytes past the CRC are only counted; finish() reports kBadLength.
}

void FrameReader::parse_header() {
  header_.version = header_bytes_[0];
  header_.type = header_bytes_[1];
  header_.seq = static_cast<uint16_t>(header_bytes_[2] | (header_bytes_[3] << 8));
  header_.payload_len = ReadU32(header_bytes_ + 4);
  if (header_.version != kProtocolVersion) return;  // reported by finish()
  for (size_t i = 0; i < handler_count_; ++i) {
    if (handlers_[i].type == header_.type) handler_ = &handlers_[i];
  }
  if (handler_ == nullptr) return;
  Refusal why{Status::kInternal, 0};
  PayloadDest dest;
  accepted_ = handler_->sink(header_.payload_len, &dest, &why);
  // A sink that accepts must have room for every byte: a tail is required past head_bytes.
  if (accepted_ && dest.tail == nullptr && header_.payload_len > dest.head_bytes) {
    accepted_ = false;
    why = {Status::kInternal, 0};
  }
  if (accepted_) {
    dest_ = dest;
  } else {
    refusal_ = why;
  }
}

FrameResult FrameReader::error(Status status, uint32_t expected, uint32_t got) const {
  FrameResult result;
  result.kind = FrameResult::Kind::kError;
  result.seq = count_ >= kHeaderBytes ? header_.seq : 0;
  result.status = status;
  result.expected = expected;
  result.got = got;
  return result;
}

FrameResult FrameReader::finish(bool cobs_broken) {
  FrameResult result;
  const uint64_t wanted = uint64_t{kHeaderBytes} + header_.payload_len + kCrcBytes;
  if (cobs_broken) {
    result = error(Status::kBadFrame, 0, count_);  // expected 0 marks "cut inside a block"
  } else if (count_ < kHeaderBytes + kCrcBytes) {
    result = error(Status::kBadFrame, kHeaderBytes + kCrcBytes, count_);
  } else if (header_.version != kProtocolVersion) {
    result = error(Status::kBadVersion, kProtocolVersion, header_.version);
  } else if (count_ != wanted) {
    const uint32_t got_payload = count_ - kHeaderBytes - kCrcBytes;
    result = error(Status::kBadLength, header_.payload_len, got_payload);
  } else if (crc32_final(crc_state_) != ReadU32(crc_bytes_)) {
    result = error(Status::kBadCrc, crc32_final(crc_state_), ReadU32(crc_bytes_));
  } else if (handler_ == nullptr) {
    result = error(Status::kUnknownRequest, 0, header_.type);
  } else if (!accepted_) {
    result = error(refusal_.status, refusal_.limit, header_.payload_len);
    result.message = refusal_.message;
  } else {
    result.kind = FrameResult::Kind::kRequest;
    result.request = {header_, dest_.head, dest_.tail};
    result.handler = handler_;
  }
  start_frame();
  return result;
}

void describe_error(const FrameResult& r, char* buf, size_t size) {
  Text t(buf, size);
  if (r.message != nullptr) {
    t << r.message;
    return;
  }
  switch (r.status) {
    case Status::kBadFrame:
      if (r.expected == 0) {
        t << "frame cut off inside a COBS block after " << r.got << " bytes";
      } else {
        t << "frame of " << r.got << " bytes, header and CRC need " << r.expected;
      }
      break;
    case Status::kBadVersion:
      t << "protocol version " << r.got << ", firmware speaks " << r.expected;
      break;
    case Status::kBadLength:
      t << "payload_len says " << r.expected << " bytes, frame carries " << r.got;
      break;
    case Status::kBadCrc:
      t << "CRC mismatch";
      break;
    case Status::kUnknownRequest:
      t << "unknown request type " << r.got;
      break;
    case Status::kTooLong:
      t << "payload of " << r.got << " bytes exceeds " << r.expected;
      break;
    case Status::kBadShape:
      t << "payload of " << r.got << " bytes, the request needs " << r.expected;
      break;
    case Status::kTimeout:
      t << "frame stalled after " << r.expected << " bytes";
      break;
    case Status::kInternal:
      t << "internal error while running the request";
      break;
    case Status::kBadLabel:
      t << "label refused";
      break;
    case Status::kNotFinite:
      t << "value is NaN, infinite or out of range";
      break;
    default:
      t << "request failed";
      break;
  }
}

}  // namespace mt
