// Board support for the emulated Cortex-M7: QEMU `-M mps2-an500 -cpu cortex-m7 -icount shift=3`.
//
// Serial: CMSDK APB UART0, polled. Counter: SysTick clocked from the 25 MHz system clock. Under
// -icount shift=3 every instruction takes 8 ns of virtual time, so one 40 ns SysTick tick is
// exactly 5 retired instructions. counter_now() returns ticks * 5, a deterministic instruction
// count with a resolution of 5 (python/mcutrain/host/qemu.py: INSTRUCTIONS_PER_TICK).
#include <cstddef>
#include <cstdint>

#include "bsp/board.h"
#include "bsp/board_stats.h"
#include "bsp/cortex_m7.h"

namespace mt::board {
namespace {

using mt::cm7::reg;

// CMSDK APB UART0 (QEMU mps2-an500 memory map).
constexpr uint32_t kUartBase = 0x40004000;
constexpr uint32_t kUartData = kUartBase + 0x00;
constexpr uint32_t kUartState = kUartBase + 0x04;  // bit0 TX buffer full, bit1 RX buffer full
constexpr uint32_t kUartCtrl = kUartBase + 0x08;   // bit0 TX enable, bit1 RX enable
constexpr uint32_t kUartBauddiv = kUartBase + 0x10;
constexpr uint32_t kStateTxFull = 1u << 0;
constexpr uint32_t kStateRxFull = 1u << 1;

constexpr uint32_t kSysClockHz = 25'000'000;
constexpr uint32_t kTicksPerMicrosecond = kSysClockHz / 1'000'000;
constexpr uint32_t kBaud = 115200;
// Fixed by QEMU's -icount shift=3 (2^3 ns per instruction) and the 25 MHz SysTick clock.
constexpr uint64_t kInstructionsPerTick = 5;

// Completed SysTick periods, each kSysTickMax + 1 ticks long. Written only by the SysTick
// handler; readers mask interrupts (see counter_now).
volatile uint64_t g_systick_wraps = 0;

}  // namespace

namespace qemu {

void systick_handler() { g_systick_wraps = g_systick_wraps + 1; }

void uart_write_text(const char* text) {
  size_t len = 0;
  while (text[len] != '\0') ++len;
  serial_write(reinterpret_cast<const uint8_t*>(text), len);
}

}  // namespace qemu

void init() {
  // QEMU ignores the divider; it is set as on the FPGA image so the code stays honest.
  reg(kUartBauddiv) = kSysClockHz / kBaud;
  reg(kUartCtrl) = 0x3;

  reg(mt::cm7::kSystRvr) = mt::cm7::kSysTickMax;
  reg(mt::cm7::kSystCvr) = 0;
  // CLKSOURCE=1 (processor clock, 25 MHz), TICKINT=1, ENABLE=1.
  reg(mt::cm7::kSystCsr) = 0x7;
}

bool serial_read_byte(uint8_t* byte) {
  if ((reg(kUartState) & kStateRxFull) == 0) return false;
  *byte = static_cast<uint8_t>(reg(kUartData));
  return true;
}

void serial_write(const uint8_t* data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    while ((reg(kUartState) & kStateTxFull) != 0) {
    }
    reg(kUartData) = data[i];
  }
}

uint64_t counter_now() {
  // With interrupts masked the handler cannot run between the two reads; a wrap that happened
  // but is not yet counted shows as a pending SysTick, and CVR is re-read after it.
  const uint32_t primask = mt::cm7::irq_save();
  uint64_t wraps = g_systick_wraps;
  uint32_t current = reg(mt::cm7::kSystCvr);
  if ((reg(mt::cm7::kIcsr) & mt::cm7::kIcsrPendStSet) != 0) {
    wraps += 1;
    current = reg(mt::cm7::kSystCvr);
  }
  mt::cm7::irq_restore(primask);
  constexpr uint64_t kPeriod = uint64_t{mt::cm7::kSysTickMax} + 1;
  return (wraps * kPeriod + (mt::cm7::kSysTickMax - current)) * kInstructionsPerTick;
}

CounterUnit counter_unit() { return CounterUnit::kInstructions; }

uint64_t micros() { return counter_now() / (kInstructionsPerTick * kTicksPerMicrosecond); }

const char* name() { return "qemu-mps2-an500"; }

uint32_t stack_high_water_bytes() {
  return mt::cm7::stack_high_water(__stack_limit__, __stack_top__);
}

uint32_t stack_size_bytes() {
  return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(__stack_size__));
}

}  // namespace mt::board
