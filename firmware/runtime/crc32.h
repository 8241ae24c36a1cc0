// CRC-32 (IEEE 802.3, the one zlib.crc32 and Python compute): reflected polynomial 0xEDB88320,
// initial value 0xFFFFFFFF, final XOR 0xFFFFFFFF. The protocol checks every frame with it.
//
// The state is updated a byte at a time so the frame reader can checksum while bytes stream in,
// without holding the frame. Usage:
//   uint32_t s = kCrc32Init;  s = crc32_update(s, data, len);  ...  uint32_t crc = crc32_final(s);
#pragma once

#include <cstddef>
#include <cstdint>

namespace mt {

constexpr uint32_t kCrc32Init = 0xFFFFFFFFu;

// Folds `len` bytes into the running state `state` and returns the new state.
uint32_t crc32_update(uint32_t state, const uint8_t* data, size_t len);

// Folds one byte; the inner step of the streaming reader.
uint32_t crc32_update_byte(uint32_t state, uint8_t byte);

inline uint32_t crc32_final(uint32_t state) { return ~state; }

// One-shot CRC-32 of a buffer.
inline uint32_t crc32(const uint8_t* data, size_t len) {
  return crc32_final(crc32_update(kCrc32Init, data, len));
}

}  // namespace mt
