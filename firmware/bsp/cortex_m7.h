// Cortex-M7 core registers and start-up steps shared by the board folders (header only, so each
// board's build_src_filter stays "its own folder"). Addresses are the ARMv7-M architecture's
// System Control Space, identical on every Cortex-M7.
#pragma once

#include <cstdint>

namespace mt::cm7 {

inline volatile uint32_t& reg(uint32_t address) {
  return *reinterpret_cast<volatile uint32_t*>(address);
}

// System Control Block.
constexpr uint32_t kIcsr = 0xE000ED04;    // bit 26 PENDSTSET: SysTick exception pending
constexpr uint32_t kVtor = 0xE000ED08;
constexpr uint32_t kCcr = 0xE000ED14;     // bit 16 DC, bit 17 IC: cache enables
constexpr uint32_t kShpr3 = 0xE000ED20;   // bits 31:24 SysTick priority
constexpr uint32_t kCcsidr = 0xE000ED80;  // cache geometry of the level selected in CSSELR
constexpr uint32_t kCsselr = 0xE000ED84;
constexpr uint32_t kCpacr = 0xE000ED88;   // bits 23:20 CP10/CP11 access = FPU
constexpr uint32_t kDemcr = 0xE000EDFC;   // bit 24 TRCENA: enables DWT
constexpr uint32_t kIcialLu = 0xE000EF50;  // invalidate whole I-cache
constexpr uint32_t kDcisw = 0xE000EF60;    // invalidate D-cache line by set/way

constexpr uint32_t kIcsrPendStSet = 1u << 26;
constexpr uint32_t kCcrDc = 1u << 16;
constexpr uint32_t kCcrIc = 1u << 17;

// SysTick (24-bit down counter).
constexpr uint32_t kSystCsr = 0xE000E010;  // bit0 ENABLE, bit1 TICKINT, bit2 CLKSOURCE=CPU clock
constexpr uint32_t kSystRvr = 0xE000E014;
constexpr uint32_t kSystCvr = 0xE000E018;
constexpr uint32_t kSysTickMax = 0x00FFFFFF;

// Data Watchpoint and Trace unit: 32-bit cycle counter.
constexpr uint32_t kDwtCtrl = 0xE0001000;    // bit0 CYCCNTENA
constexpr uint32_t kDwtCyccnt = 0xE0001004;
constexpr uint32_t kDwtLar = 0xE0001FB0;     // lock access: some M7 parts need the unlock key
constexpr uint32_t kDwtLarKey = 0xC5ACCE55;

inline void dsb() { __asm volatile("dsb 0xF" ::: "memory"); }
inline void isb() { __asm volatile("isb 0xF" ::: "memory"); }

// Interrupt mask save/restore, for reads that must not be split by the counter interrupt.
inline uint32_t irq_save() {
  uint32_t primask;
  __asm volatile("mrs %0, primask\n cpsid i" : "=r"(primask)::"memory");
  return primask;
}
inline void irq_restore(uint32_t primask) {
  __asm volatile("msr primask, %0" ::"r"(primask) : "memory");
}

// Grant full access to CP10/CP11. Must run before any floating-point instruction, which the
// compiler may emit for plain copies under -mfloat-abi=hard.
inline void enable_fpu() {
  reg(kCpacr) |= 0xFu << 20;
  dsb();
  isb();
}

inline void enable_icache() {
  dsb();
  isb();
  reg(kIcialLu) = 0;
  dsb();
  isb();
  reg(kCcr) |= kCcrIc;
  dsb();
  isb();
}

// The D-cache holds garbage after reset and must be invalidated line by line before enabling.
inline void enable_dcache() {
  reg(kCsselr) = 0;  // level 1 data cache
  dsb();
  const uint32_t ccsidr = reg(kCcsidr);
  const uint32_t sets = ((ccsidr >> 13) & 0x7FFF) + 1;
  const uint32_t ways = ((ccsidr >> 3) & 0x3FF) + 1;
  const uint32_t line_shift = (ccsidr & 0x7) + 4;  // log2(line bytes)
  const uint32_t way_shift = static_cast<uint32_t>(__builtin_clz(ways - 1));
  for (uint32_t set = 0; set < sets; ++set) {
    for (uint32_t way = 0; way < ways; ++way) {
      reg(kDcisw) = (set << line_shift) | (way << way_shift);
    }
  }
  dsb();
  reg(kCcr) |= kCcrDc;
  dsb();
  isb();
}

// Stack painting for high-water measurement (see board_stats.h).
constexpr uint32_t kStackPaint = 0xC0FFEE55u;

// Fills [bottom, current SP) with the paint word. Runs at reset, before anything deep is called;
// the words between SP and the top belong to the caller's frame and stay untouched.
inline void paint_stack(uint32_t* bottom) {
  uint32_t* sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  for (volatile uint32_t* p = bottom; p < sp; ++p) *p = kStackPaint;
}

inline uint32_t stack_high_water(const uint32_t* bottom, const uint32_t* top) {
  const uint32_t* p = bottom;
  while (p < top && *p == kStackPaint) ++p;
  return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(top) - reinterpret_cast<uintptr_t>(p));
}

}  // namespace mt::cm7

// Symbols defined by each board's linker.ld.
extern "C" {
extern uint32_t __data_load__[];
extern uint32_t __data_start__[];
extern uint32_t __data_end__[];
extern uint32_t __bss_start__[];
extern uint32_t __bss_end__[];
extern uint32_t __stack_limit__[];
extern uint32_t __stack_top__[];
extern uint32_t __stack_size__[];
using InitFn = void (*)();
extern InitFn __preinit_array_start[];
extern InitFn __preinit_array_end[];
extern InitFn __init_array_start[];
extern InitFn __init_array_end[];
}

namespace mt::cm7 {

// The C/C++ run-time set-up every board's Reset_Handler performs after enabling the FPU:
// paint the stack, copy .data from flash, zero .bss, run static constructors.
inline void init_c_runtime() {
  paint_stack(__stack_limit__);
  for (uint32_t *src = __data_load__, *dst = __data_start__; dst < __data_end__;) *dst++ = *src++;
  for (uint32_t* dst = __bss_start__; dst < __bss_end__;) *dst++ = 0;
  for (InitFn* fn = __preinit_array_start; fn < __preinit_array_end; ++fn) (*fn)();
  for (InitFn* fn = __init_array_start; fn < __init_array_end; ++fn) (*fn)();
}

}  // namespace mt::cm7
