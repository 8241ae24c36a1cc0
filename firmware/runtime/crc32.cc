#include "crc32.h"

namespace mt {
namespace {

struct Crc32Table {
  uint32_t entry[256];
};

// Built by the compiler, so the 1 KB table is a const object in flash and costs no start-up time
// or RAM.
constexpr Crc32Table MakeTable() {
  Crc32Table table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
    table.entry[i] = c;
  }
  return table;
}

constexpr Crc32Table kTable = MakeTable();

}  // namespace

uint32_t crc32_update_byte(uint32_t state, uint8_t byte) {
  return kTable.entry[(state ^ byte) & 0xFFu] ^ (state >> 8);
}

uint32_t crc32_update(uint32_t state, const uint8_t* data, size_t len) {
  for (size_t i = 0; i < len; ++i) state = crc32_update_byte(state, data[i]);
  return state;
}

}  // namespace mt
