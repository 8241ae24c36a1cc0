// One small status enum shared by the runtime, the protocol and the generated model code.
// The numeric values travel over the wire in ERROR replies: never renumber, only append.
#pragma once

#include <cstdint>

namespace mt {

enum class Status : uint16_t {
  kOk = 0,
  kBadFrame = 1,        // COBS decoding failed or the frame is shorter than a header
  kBadCrc = 2,          // CRC-32 of the frame does not match
  kBadVersion = 3,      // protocol version differs from kProtocolVersion
  kBadLength = 4,       // declared payload length disagrees with the bytes received
  kTooLong = 5,         // frame exceeds what the firmware can buffer
  kUnknownRequest = 6,  // request type not implemented by this firmware
  kBadShape = 7,        // payload size does not match the model tensor it is meant for
  kBadLabel = 8,        // label outside [0, num_classes)
  kTimeout = 9,         // a frame stopped arriving half-way
  kNotFinite = 10,      // a value that would reach a weight is NaN or infinite
  kInternal = 11,       // a kernel reported an inconsistency (a bug, never the host's fault)
};

}  // namespace mt
