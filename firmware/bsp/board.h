// Board support interface: the only thing the runtime and kernels know about the hardware.
//
// Each board lives in its own folder under firmware/bsp/<board>/ and implements exactly these
// functions (plus its start-up code and linker script). Adding a Cortex-M7 board means adding a
// board JSON in boards/, a folder here, and an env in platformio.ini; nothing else changes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mt::board {

// What counter_now() counts. The emulated board counts retired instructions (QEMU -icount makes
// SysTick tick once per fixed number of instructions); a real chip counts CPU cycles (DWT).
enum class CounterUnit : uint8_t { kCycles = 0, kInstructions = 1 };

// Clocks, caches, serial port and the counter. Called once from main() before anything else.
void init();

// Non-blocking read of one byte from the host serial link. Returns true and stores the byte when
// one was waiting, false otherwise. Never blocks, so the runtime can apply its own timeouts.
bool serial_read_byte(uint8_t* byte);

// Blocking write of `len` bytes to the host serial link.
void serial_write(const uint8_t* data, size_t len);

// Monotonic 64-bit count in counter_unit() units, extended in software past the hardware width.
uint64_t counter_now();
CounterUnit counter_unit();

// Monotonic microseconds since init(), for protocol timeouts. On the emulated board this is
// QEMU's virtual time, which advances with executed instructions.
uint64_t micros();

// Short board name reported by the INFO request, e.g. "qemu-mps2-an500".
const char* name();

}  // namespace mt::board
