// Board statistics beyond the fixed board API (board.h): what the firmware can report about its
// own resource use. Implemented by every board.
#pragma once

#include <cstdint>

namespace mt::board {

// Deepest stack use since reset, in bytes. The start-up code paints the stack region with a known
// pattern before main(); this scans for the lowest word that was overwritten. Cost: one pass over
// the untouched part of the stack, so call it between requests, not in a timed section.
uint32_t stack_high_water_bytes();

// Size of the stack region the linker script reserves (symbol __stack_size__), in bytes.
uint32_t stack_size_bytes();

}  // namespace mt::board
