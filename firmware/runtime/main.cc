// Firmware main loop: read bytes from the host link, let FrameReader turn them into verified
// requests, run them through the dispatch table, write one reply per request.
//
// The loop never blocks on the line (board::serial_read_byte is non-blocking), so a stalled frame
// is noticed by FrameReader::poll() and answered with kTimeout.
#include <cstring>

#include "bsp/board.h"
#include "bsp/board_stats.h"
#include "model.h"
#include "protocol.h"

namespace mt {
namespace {

void SerialSink(const uint8_t* data, size_t len) { board::serial_write(data, len); }

ReplyWriter g_reply(SerialSink);

// ---- payload sinks ----

uint8_t* InputTensorSink(uint32_t payload_len, Refusal* why) {
  if (payload_len != kModel.input.bytes) {
    *why = {Status::kBadShape, kModel.input.bytes};
    return nullptr;
  }
  return reinterpret_cast<uint8_t*>(model_input());
}

// ---- request handlers ----

uint32_t TensorDescBytes(const TensorDesc& t) { return 1 + 1 + 4u * t.rank + 4 + 4 + 4; }

void WriteTensorDesc(ReplyWriter& out, const TensorDesc& t) {
  out.write_u8(static_cast<uint8_t>(t.dtype));
  out.write_u8(t.rank);
  for (int i = 0; i < t.rank && i < kMaxRank; ++i) out.write_u32(static_cast<uint32_t>(t.dims[i]));
  out.write_f32(t.scale);
  out.write_u32(static_cast<uint32_t>(t.zero_point));
  out.write_u32(t.bytes);
}

// Names longer than 255 bytes are cut: the INFO layout gives each a u8 length.
uint8_t NameLength(const char* s) {
  const size_t n = std::strlen(s);
  return static_cast<uint8_t>(n > 255 ? 255 : n);
}

uint32_t RequestMask();

Status RunInfo(const Request& request, ReplyWriter& out) {
  const char* board_name = board::name();
  const uint8_t board_len = NameLength(board_name);
  const uint8_t model_len = NameLength(kModel.name);
  if (kModel.input.rank > kMaxRank || kModel.output.rank > kMaxRank) return Status::kInternal;
  const uint32_t len = 1 + 1 + 2 + 4 + (1 + board_len) + (1 + model_len) + 32 + 4 + 4 + 8 +
                       TensorDescBytes(kModel.input) + TensorDescBytes(kModel.output) + 4 + 4;
  out.begin(static_cast<uint8_t>(RequestType::kInfo) | kReplyFlag, request.header.seq, len);
  out.write_u8(kProtocolVersion);
  out.write_u8(static_cast<uint8_t>(board::counter_unit()));
  out.write_u16(static_cast<uint16_t>(kMaxSmallPayload));
  out.write_u32(RequestMask());
  out.write_u8(board_len);
  out.write(reinterpret_cast<const uint8_t*>(board_name), board_len);
  out.write_u8(model_len);
  out.write(reinterpret_cast<const uint8_t*>(kModel.name), model_len);
  out.write(kModel.hash, sizeof(kModel.hash));
  out.write_u32(kModel.arena_bytes);
  out.write_u32(kModel.weight_bytes);
  out.write_u64(kModel.macs);
  WriteTensorDesc(out, kModel.input);
  WriteTensorDesc(out, kModel.output);
  // Measured here because INFO runs between requests, never inside a timed section.
  out.write_u32(board::stack_high_water_bytes());
  out.write_u32(board::stack_size_bytes());
  out.end();
  return Status::kOk;
}

Status RunInfer(const Request& request, ReplyWriter& out) {
  const uint64_t start = board::counter_now();
  const Status status = model_invoke();
  const uint64_t elapsed = board::counter_now() - start;
  if (status != Status::kOk) return status;
  const uint32_t out_bytes = kModel.output.bytes;
  out.begin(static_cast<uint8_t>(RequestType::kInfer) | kReplyFlag, request.header.seq,
            out_bytes + 8);
  out.write(reinterpret_cast<const uint8_t*>(model_output()), out_bytes);
  out.write_u64(elapsed);
  out.end();
  return Status::kOk;
}

// The dispatch table: one row per served request type. TRAIN/EVAL/RESET/SET_LR slot in here.
constexpr RequestHandler kHandlers[] = {
    {static_cast<uint8_t>(RequestType::kInfo), empty_payload_sink, RunInfo},
    {static_cast<uint8_t>(RequestType::kInfer), InputTensorSink, RunInfer},
};
constexpr size_t kHandlerCount = sizeof(kHandlers) / sizeof(kHandlers[0]);

FrameReader g_reader(kHandlers, kHandlerCount);

uint32_t RequestMask() { return g_reader.request_mask(); }

void Serve(const FrameResult& result) {
  char message[80];
  switch (result.kind) {
    case FrameResult::Kind::kNothing:
      return;
    case FrameResult::Kind::kError:
      describe_error(result, message, sizeof(message));
      g_reply.error(result.seq, result.status, message);
      return;
    case FrameResult::Kind::kRequest: {
      const Status status = result.handler->run(result.request, g_reply);
      if (status != Status::kOk) {
        FrameResult failed = result;
        failed.status = status;
        describe_error(failed, message, sizeof(message));
        g_reply.error(result.request.header.seq, status, message);
      }
      return;
    }
  }
}

}  // namespace
}  // namespace mt

int main() {
  mt::board::init();
  for (;;) {
    uint8_t byte = 0;
    if (mt::board::serial_read_byte(&byte)) {
      mt::Serve(mt::g_reader.feed(byte, mt::board::micros()));
    } else {
      mt::Serve(mt::g_reader.poll(mt::board::micros()));
    }
  }
}
