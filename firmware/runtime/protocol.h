// Serial protocol between the host tool (python/mcutrain/host/protocol.py mirrors this file) and the
// firmware.
//
// Line format. Every frame is COBS-encoded and has a 0x00 delimiter BEFORE and AFTER it:
//   00 <COBS(frame)> 00
// The leading delimiter ends whatever partial frame came before (a cut-off frame, line noise), so
// the next frame always parses; two delimiters in a row are an idle line and ignored.
//
// Decoded frame (all integers little-endian):
//   offset 0  u8  version       kProtocolVersion (1)
//   offset 1  u8  type          request type, reply type = request | 0x80, error reply = 0x7F
//   offset 2  u16 seq           chosen by the host, echoed in the reply
//   offset 4  u32 payload_len
//   offset 8  payload_len bytes of payload
//   then      u32 crc32         IEEE CRC-32 (zlib.crc32) of every byte before it
//
// Requests and replies (payloads):
//   0x01 INFO   request: empty.  reply 0x81: see "INFO reply" below.
//   0x02 INFER  request: the model input tensor, kModel.input.bytes of int8.
//               reply 0x82: kModel.output.bytes of output tensor, then u64 counter delta of the
//               inference (instructions on QEMU, cycles on hardware; see board::counter_unit()).
//   0x03 TRAIN  request: kModel.input.bytes of int8 input, then kTrain.label_bytes of label
//               (u16 class, or f32 targets for regression).
//               reply 0x83: f32 loss | u16 prediction | u64 counter delta of the step.
//   0x04 EVAL   as TRAIN, but nothing is updated (forward pass and loss only). reply 0x84.
//   0x05 RESET  request: empty. Trainable parameters, PRNG and learning rate back to the flashed
//               defaults. reply 0x85: empty.
//   0x06 SET_LR request: f32 learning rate (finite, >= 0). reply 0x86: f32 rate now in effect.
//   0x07 READ_PARAMS request: u32 offset | u32 length. reply 0x87: that slice of the trainable
//               state block (kTrain.state_bytes), kBadLength when it does not lie inside it.
//   0x08 ROWS   only while the firmware pulls its input (INFO input_pulled = 1): INFER then
//               carries no payload and TRAIN/EVAL only the label; while the model runs the
//               firmware sends 0x88 NEED_ROWS (same seq as the request): u32 first_row |
//               u32 rows, and the host answers ROWS (same seq): exactly rows * width *
//               channels bytes of input. A refused, corrupt, late (5 s) or mismatched answer
//               ends the request with an ERROR reply and changes nothing. Outside a pull ROWS
//               is refused (kUnknownRequest).
//   Requests 0x03..0x07 answer kUnknownRequest with an explanation when the firmware was built
//   without a training scheme; their INFO request_mask bits are clear then.
//   0x7F ERROR  reply to any request that is not served: u16 status (mt::Status), then a short
//               ASCII message (no terminator).
//
// INFO reply payload (version 1):
//   u8 protocol_version | u8 counter_unit (0 cycles, 1 instructions) | u16 max_small_payload |
//   u32 request_mask (bit t set when request type t is served) |
//   u8 n, n bytes board name | u8 n, n bytes model name | 32 bytes model SHA-256 |
//   u32 arena_bytes | u32 weight_bytes | u64 macs | tensor input | tensor output |
//   u32 stack_used_bytes (deepest stack use so far) | u32 stack_size_bytes (0 = not measured) |
//   training: u8 enabled | u8 loss (mt::LossKind) | u16 num_classes | u32 label_bytes |
//   f32 default_lr | f32 current_lr | u32 seed | u32 state_bytes | u64 backward_macs |
//   u8 input_pulled (1: the input comes in ROWS answers, see 0x08)
//   where tensor = u8 dtype (mt::DType) | u8 rank | rank x i32 dims | f32 scale |
//                  i32 zero_point | u32 bytes
//
// Error handling on the firmware, checked in this order when a frame's closing delimiter arrives:
//   COBS broken (delimiter inside a block) or fewer than 12 bytes -> kBadFrame
//   version != 1                                                  -> kBadVersion
//   decoded length != 8 + payload_len + 4                         -> kBadLength
//   CRC mismatch                                                  -> kBadCrc
//   type not in the dispatch table                                -> kUnknownRequest
//   payload refused by the request's sink (kTooLong, kBadShape, ...)
//   request refused by its run function (kBadLabel, kNotFinite, kBadLength, ...)
// A frame that stops arriving for kInterByteTimeoutUs gets kTimeout; the reader then drops bytes
// until the next delimiter. Error replies echo the request's seq when its header arrived, else 0.
// No request is executed unless its frame passed every check.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cobs.h"
#include "status.h"

namespace mt {

constexpr uint8_t kProtocolVersion = 1;
constexpr uint32_t kHeaderBytes = 8;
constexpr uint32_t kCrcBytes = 4;
constexpr uint8_t kReplyFlag = 0x80;
constexpr uint8_t kErrorReply = 0x7F;
// Largest payload of requests that carry parameters rather than tensors.
constexpr uint32_t kMaxSmallPayload = 64;
// A frame whose next byte takes longer than this (board time) is abandoned. Generous on purpose:
// QEMU's emulated UART can pause for a few hundred milliseconds on a loaded host in the middle of
// a 49 KB input, and a spurious timeout costs a whole request, while a real stall only delays
// the error reply.
constexpr uint64_t kInterByteTimeoutUs = 2000000;

enum class RequestType : uint8_t {
  kInfo = 0x01,
  kInfer = 0x02,
  kTrain = 0x03,
  kEval = 0x04,
  kReset = 0x05,
  kSetLr = 0x06,
  kReadParams = 0x07,
  kRows = 0x08,
  kProfile = 0x09,
};

struct FrameHeader {
  uint8_t version;
  uint8_t type;
  uint16_t seq;
  uint32_t payload_len;
};

// Where a request's payload is stored: the first head_bytes bytes at head, the rest at tail.
// Two places because TRAIN carries two things that live apart: the input tensor (in the arena)
// and the label (in the small buffer).
struct PayloadDest {
  uint8_t* head = nullptr;
  uint32_t head_bytes = 0;
  uint8_t* tail = nullptr;  // may be nullptr when the payload is head_bytes long
};

struct Request {
  FrameHeader header;
  const uint8_t* payload;  // the first head_bytes of the payload, wherever the sink put them
  const uint8_t* tail;     // the rest (nullptr when there is none)
};

// Why a sink refused a payload: the status for the error reply, the limit that was exceeded
// (printed in the message), or a fixed message that says it all.
struct Refusal {
  Status status;
  uint32_t limit;
  const char* message = nullptr;
};

// Minimal string building for error messages: no printf on the firmware.
class Text {
 public:
  Text(char* buf, size_t size);
  Text& operator<<(const char* s);
  Text& operator<<(uint32_t v);
  bool empty() const { return len_ == 0; }

 private:
  void put(char c);
  char* buf_;
  size_t size_;
  size_t len_ = 0;
};

// Streams a reply frame: begin() with the exact payload length, write() the payload in pieces,
// end(). The CRC and COBS encoding are computed on the fly, so nothing is buffered but one COBS
// block.
class ReplyWriter {
 public:
  explicit ReplyWriter(CobsEncoder::Sink sink) : encoder_(sink) {}

  void begin(uint8_t type, uint16_t seq, uint32_t payload_len);
  void write(const uint8_t* data, size_t len);
  void write_u8(uint8_t v) { write(&v, 1); }
  void write_u16(uint16_t v);
  void write_u32(uint32_t v);
  void write_u64(uint64_t v);
  void write_f32(float v);
  void end();

  // An ERROR reply (type 0x7F) with `status` and a message.
  void error(uint16_t seq, Status status, const char* message);

 private:
  CobsEncoder encoder_;
  uint32_t crc_state_ = 0;
};

// One request type the firmware serves. Adding a request = one run function (plus a sink if the
// payload goes somewhere new) and one row in the dispatch table.
struct RequestHandler {
  uint8_t type;
  // Called as soon as the header arrives: returns true and fills *dest with where the
  // payload_len bytes of payload should be stored, or returns false (and fills *why) to refuse
  // the request. The bytes are streamed there before the CRC is checked, so a sink must only
  // point at scratch memory.
  bool (*sink)(uint32_t payload_len, PayloadDest* dest, Refusal* why);
  // Runs a fully verified request. Either writes a whole reply and returns kOk, or writes nothing
  // and returns the status for an error reply, optionally explained in `why` (left empty, the
  // reply gets a generic message for the status).
  Status (*run)(const Request& request, ReplyWriter& reply, Text& why);
};

// Standard sink: the reader's own kMaxSmallPayload-byte buffer.
bool small_payload_sink(uint32_t payload_len, PayloadDest* dest, Refusal* why);
// Standard sink for requests without a payload.
bool empty_payload_sink(uint32_t payload_len, PayloadDest* dest, Refusal* why);
// The small buffer itself, for sinks that put part of a payload there (the TRAIN label).
uint8_t* small_payload_buffer();

// What FrameReader found when a frame ended (or timed out).
struct FrameResult {
  enum class Kind : uint8_t { kNothing, kRequest, kError } kind = Kind::kNothing;
  Request request{};                          // kRequest
  const RequestHandler* handler = nullptr;    // kRequest
  uint16_t seq = 0;                           // kError: seq to echo (0 when unknown)
  Status status = Status::kOk;                // kError
  uint32_t expected = 0;                      // kError: numbers for the message, per status
  uint32_t got = 0;
  const char* message = nullptr;              // kError: a sink's own message, if it gave one
};

// Allocation-free streaming request reader. Feed it every byte read from the line; it decodes
// COBS, parses the header as soon as 8 bytes are in, streams the payload into the handler's sink
// (or discards it when refused), checks the CRC on the fly and reports one FrameResult per frame.
class FrameReader {
 public:
  FrameReader(const RequestHandler* handlers, size_t handler_count)
      : handlers_(handlers), handler_count_(handler_count) {}

  // Consumes one raw line byte received at board time now_us.
  FrameResult feed(uint8_t byte, uint64_t now_us);
  // Call when no byte is waiting: reports kTimeout for a frame that stalled.
  FrameResult poll(uint64_t now_us);

  // Bitmask of served request types (bit t for type t < 32), for the INFO reply.
  uint32_t request_mask() const;

 private:
  void start_frame();
  void take(uint8_t byte);
  void parse_header();
  FrameResult finish(bool cobs_broken);
  FrameResult error(Status status, uint32_t expected, uint32_t got) const;

  const RequestHandler* handlers_;
  size_t handler_count_;
  CobsDecoder cobs_;
  bool resync_ = false;           // after a timeout: drop bytes until the next delimiter
  uint64_t last_byte_us_ = 0;
  uint32_t count_ = 0;            // decoded bytes in this frame (saturating)
  uint8_t header_bytes_[kHeaderBytes];
  FrameHeader header_{};
  const RequestHandler* handler_ = nullptr;
  bool accepted_ = false;         // false: the payload is discarded
  PayloadDest dest_{};
  Refusal refusal_{Status::kOk, 0};  // why the payload is discarded
  uint32_t crc_state_ = 0;
  uint8_t crc_bytes_[kCrcBytes];
};

// Formats the message of an ERROR reply into buf (NUL-terminated, truncated to fit).
void describe_error(const FrameResult& result, char* buf, size_t size);

}  // namespace mt
