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

constexpr const char kNoTraining[] =
    "firmware built without a training scheme: set custom_train / MCUTRAIN_TRAIN";

uint32_t ReadU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

float ReadF32(const uint8_t* p) {
  const uint32_t bits = ReadU32(p);
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// Bytes of the input that arrive with the request: all of it, or none when the model pulls it.
uint32_t InputPayloadBytes() { return kModel.input_pulled ? 0 : kModel.input.bytes; }

bool InputTensorSink(uint32_t payload_len, PayloadDest* dest, Refusal* why) {
  if (payload_len != InputPayloadBytes()) {
    *why = {Status::kBadShape, InputPayloadBytes(),
            kModel.input_pulled ? "this model pulls its input row by row: INFER carries no "
                                  "payload (docs/memory.md)" : nullptr};
    return false;
  }
  *dest = {reinterpret_cast<uint8_t*>(model_input()), payload_len, nullptr};
  return true;
}

// TRAIN / EVAL: the input streams straight into the arena like INFER's, the label into the small
// buffer, so no copy of the (possibly 50 KB) input is ever needed.
bool TrainSampleSink(uint32_t payload_len, PayloadDest* dest, Refusal* why) {
  if (!kTrain.enabled) {
    *why = {Status::kUnknownRequest, 0, kNoTraining};
    return false;
  }
  if (kTrain.label_bytes > kMaxSmallPayload) {
    *why = {Status::kTooLong, kMaxSmallPayload, "label larger than the firmware's small buffer"};
    return false;
  }
  const uint32_t wanted = InputPayloadBytes() + kTrain.label_bytes;
  if (payload_len != wanted) {
    *why = {Status::kBadShape, wanted};
    return false;
  }
  if (kModel.input_pulled) {
    *dest = {small_payload_buffer(), payload_len, nullptr};  // the label alone
  } else {
    *dest = {reinterpret_cast<uint8_t*>(model_input()), kModel.input.bytes,
             small_payload_buffer()};
  }
  return true;
}

// ---- input rows pulled while the model runs (ModelDesc::input_pulled) ----

// A pull waits this long for the host's ROWS frame to start; inside a frame FrameReader's
// inter-byte timeout applies.
constexpr uint64_t kPullIdleTimeoutUs = 5000000;

struct Pull {
  uint8_t* dst = nullptr;  // where the rows go; nullptr when no pull is waiting
  uint32_t bytes = 0;
};
Pull g_pull;
uint16_t g_request_seq = 0;  // seq of the request being run: a pull and its answer carry it

bool RowsSink(uint32_t payload_len, PayloadDest* dest, Refusal* why) {
  if (g_pull.dst == nullptr) {
    *why = {Status::kUnknownRequest, 0, "ROWS answers a row pull, and none is waiting"};
    return false;
  }
  if (payload_len != g_pull.bytes) {
    *why = {Status::kBadShape, g_pull.bytes};
    return false;
  }
  *dest = {g_pull.dst, payload_len, nullptr};
  return true;
}

Status RunRows(const Request&, ReplyWriter&, Text&) { return Status::kOk; }  // already stored

constexpr RequestHandler kRowsHandler[] = {
    {static_cast<uint8_t>(RequestType::kRows), RowsSink, RunRows},
};

// Reads frames until the host's ROWS answer (same seq) has landed at g_pull.dst.
Status AwaitRows() {
  FrameReader reader(kRowsHandler, 1);
  uint64_t idle_since = board::micros();
  for (;;) {
    uint8_t byte = 0;
    const bool got = board::serial_read_byte(&byte);
    const uint64_t now = board::micros();
    const FrameResult r = got ? reader.feed(byte, now) : reader.poll(now);
    if (got) idle_since = now;
    if (r.kind == FrameResult::Kind::kError) return r.status;
    if (r.kind == FrameResult::Kind::kRequest) {
      return r.request.header.seq == g_request_seq ? Status::kOk : Status::kBadFrame;
    }
    if (!got && now - idle_since > kPullIdleTimeoutUs) return Status::kTimeout;
  }
}

// Small fixed-size training requests (RESET, SET_LR, READ_PARAMS).
template <uint32_t kBytes>
bool TrainParamSink(uint32_t payload_len, PayloadDest* dest, Refusal* why) {
  static_assert(kBytes <= kMaxSmallPayload, "parameters must fit the small buffer");
  if (!kTrain.enabled) {
    *why = {Status::kUnknownRequest, 0, kNoTraining};
    return false;
  }
  if (payload_len != kBytes) {
    *why = {Status::kBadLength, kBytes,
            "wrong payload size (RESET takes 0 bytes, SET_LR 4, READ_PARAMS 8)"};
    return false;
  }
  *dest = {small_payload_buffer(), payload_len, nullptr};
  return true;
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

constexpr uint32_t kTrainInfoBytes = 1 + 1 + 2 + 4 + 4 + 4 + 4 + 4 + 8;

void WriteTrainInfo(ReplyWriter& out) {
  out.write_u8(kTrain.enabled ? 1 : 0);
  out.write_u8(static_cast<uint8_t>(kTrain.loss));
  out.write_u16(kTrain.num_classes);
  out.write_u32(kTrain.label_bytes);
  out.write_f32(kTrain.default_lr);
  out.write_f32(kTrain.enabled ? model_lr() : 0.0f);
  out.write_u32(kTrain.seed);
  out.write_u32(kTrain.state_bytes);
  out.write_u64(kTrain.backward_macs);
}

Status RunInfo(const Request& request, ReplyWriter& out, Text&) {
  const char* board_name = board::name();
  const uint8_t board_len = NameLength(board_name);
  const uint8_t model_len = NameLength(kModel.name);
  if (kModel.input.rank > kMaxRank || kModel.output.rank > kMaxRank) return Status::kInternal;
  const uint32_t len = 1 + 1 + 2 + 4 + (1 + board_len) + (1 + model_len) + 32 + 4 + 4 + 8 +
                       TensorDescBytes(kModel.input) + TensorDescBytes(kModel.output) + 4 + 4 +
                       kTrainInfoBytes + 1;
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
  WriteTrainInfo(out);
  out.write_u8(kModel.input_pulled ? 1 : 0);
  out.end();
  return Status::kOk;
}

Status RunInfer(const Request& request, ReplyWriter& out, Text&) {
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

// Explains a refused label; model_train_step() has already checked it and changed nothing.
void ExplainRefusedLabel(Status status, const uint8_t* label, Text& why) {
  if (status == Status::kBadLabel && kTrain.loss == LossKind::kCrossEntropy) {
    const uint32_t value = static_cast<uint32_t>(label[0]) | (static_cast<uint32_t>(label[1]) << 8);
    why << "label " << value << " outside [0, " << uint32_t{kTrain.num_classes} << ")";
  } else if (status == Status::kNotFinite) {
    why << "label holds NaN or infinity";
  }
}

Status RunTrainStep(const Request& request, ReplyWriter& out, Text& why, bool update,
                    RequestType type) {
  TrainResult result{};
  const uint8_t* label = kModel.input_pulled ? request.payload : request.tail;
  const uint64_t start = board::counter_now();
  const Status status = model_train_step(label, update, &result);
  const uint64_t elapsed = board::counter_now() - start;
  if (status != Status::kOk) {
    ExplainRefusedLabel(status, label, why);
    return status;
  }
  out.begin(static_cast<uint8_t>(type) | kReplyFlag, request.header.seq, 4 + 2 + 8);
  out.write_f32(result.loss);
  out.write_u16(result.prediction);
  out.write_u64(elapsed);
  out.end();
  return Status::kOk;
}

Status RunTrain(const Request& request, ReplyWriter& out, Text& why) {
  return RunTrainStep(request, out, why, true, RequestType::kTrain);
}

Status RunEval(const Request& request, ReplyWriter& out, Text& why) {
  return RunTrainStep(request, out, why, false, RequestType::kEval);
}

Status RunReset(const Request& request, ReplyWriter& out, Text&) {
  model_train_reset();
  out.begin(static_cast<uint8_t>(RequestType::kReset) | kReplyFlag, request.header.seq, 0);
  out.end();
  return Status::kOk;
}

Status RunSetLr(const Request& request, ReplyWriter& out, Text& why) {
  const Status status = model_set_lr(ReadF32(request.payload));
  if (status != Status::kOk) {
    if (status == Status::kNotFinite) why << "learning rate must be finite and >= 0";
    return status;
  }
  out.begin(static_cast<uint8_t>(RequestType::kSetLr) | kReplyFlag, request.header.seq, 4);
  out.write_f32(model_lr());
  out.end();
  return Status::kOk;
}

Status RunReadParams(const Request& request, ReplyWriter& out, Text& why) {
  const uint32_t offset = ReadU32(request.payload);
  const uint32_t length = ReadU32(request.payload + 4);
  // 64-bit sum: offset + length must not wrap past the bound.
  if (uint64_t{offset} + length > kTrain.state_bytes) {
    why << "slice " << offset << "+" << length << " outside the " << kTrain.state_bytes
        << "-byte state";
    return Status::kBadLength;
  }
  out.begin(static_cast<uint8_t>(RequestType::kReadParams) | kReplyFlag, request.header.seq,
            length);
  out.write(model_train_state() + offset, length);
  out.end();
  return Status::kOk;
}

// PROFILE: u32 steps | steps x u32 counter deltas of the last INFER or TRAIN (0 steps when the
// firmware was built without custom_profile).
Status RunProfile(const Request& request, ReplyWriter& out, Text&) {
  uint32_t steps = 0;
  const uint32_t* counts = model_profile(&steps);
  out.begin(static_cast<uint8_t>(RequestType::kProfile) | kReplyFlag, request.header.seq,
            4 + 4 * steps);
  out.write_u32(steps);
  for (uint32_t i = 0; i < steps; ++i) out.write_u32(counts[i]);
  out.end();
  return Status::kOk;
}

// The dispatch table: one row per served request type.
constexpr RequestHandler kHandlers[] = {
    {static_cast<uint8_t>(RequestType::kInfo), empty_payload_sink, RunInfo},
    {static_cast<uint8_t>(RequestType::kInfer), InputTensorSink, RunInfer},
    {static_cast<uint8_t>(RequestType::kTrain), TrainSampleSink, RunTrain},
    {static_cast<uint8_t>(RequestType::kEval), TrainSampleSink, RunEval},
    {static_cast<uint8_t>(RequestType::kReset), TrainParamSink<0>, RunReset},
    {static_cast<uint8_t>(RequestType::kSetLr), TrainParamSink<4>, RunSetLr},
    {static_cast<uint8_t>(RequestType::kReadParams), TrainParamSink<8>, RunReadParams},
    {static_cast<uint8_t>(RequestType::kProfile), empty_payload_sink, RunProfile},
};
constexpr size_t kHandlerCount = sizeof(kHandlers) / sizeof(kHandlers[0]);

FrameReader g_reader(kHandlers, kHandlerCount);

// Training requests stay in the table (so they can explain themselves) but are not advertised
// when the firmware has no training scheme.
constexpr uint32_t kTrainingRequests =
    (1u << static_cast<uint8_t>(RequestType::kTrain)) |
    (1u << static_cast<uint8_t>(RequestType::kEval)) |
    (1u << static_cast<uint8_t>(RequestType::kReset)) |
    (1u << static_cast<uint8_t>(RequestType::kSetLr)) |
    (1u << static_cast<uint8_t>(RequestType::kReadParams));

uint32_t RequestMask() {
  const uint32_t mask = g_reader.request_mask();
  return kTrain.enabled ? mask : mask & ~kTrainingRequests;
}

void Serve(const FrameResult& result) {
  char message[128];
  switch (result.kind) {
    case FrameResult::Kind::kNothing:
      return;
    case FrameResult::Kind::kError:
      describe_error(result, message, sizeof(message));
      g_reply.error(result.seq, result.status, message);
      return;
    case FrameResult::Kind::kRequest: {
      g_request_seq = result.request.header.seq;
      Text why(message, sizeof(message));
      const Status status = result.handler->run(result.request, g_reply, why);
      if (status != Status::kOk) {
        if (why.empty()) {
          FrameResult failed = result;
          failed.status = status;
          describe_error(failed, message, sizeof(message));
        }
        g_reply.error(result.request.header.seq, status, message);
      }
      return;
    }
  }
}

}  // namespace

Status model_pull_input_rows(int8_t* dst, int32_t first_row, int32_t rows) {
  const uint32_t row_bytes = static_cast<uint32_t>(kModel.input.dims[2] * kModel.input.dims[3]);
  g_reply.begin(static_cast<uint8_t>(RequestType::kRows) | kReplyFlag, g_request_seq, 8);
  g_reply.write_u32(static_cast<uint32_t>(first_row));
  g_reply.write_u32(static_cast<uint32_t>(rows));
  g_reply.end();
  g_pull = {reinterpret_cast<uint8_t*>(dst), static_cast<uint32_t>(rows) * row_bytes};
  const Status status = AwaitRows();
  g_pull = {};
  return status;
}

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
