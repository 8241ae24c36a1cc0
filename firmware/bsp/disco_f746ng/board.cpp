// Board support for the STM32F746G-DISCO, bare metal (no HAL, no CMSIS headers).
//
// Clocks: 25 MHz HSE crystal -> PLL (M=25, N=432, P=2) = 216 MHz SYSCLK with the regulator in
// over-drive and 7 flash wait states; AHB 216 MHz, APB1 54 MHz (/4), APB2 108 MHz (/2).
// Serial: USART1 on PA9 (TX) / PB7 (RX), AF7, 115200 8N1, wired to the ST-LINK virtual COM port.
// Counter: the DWT cycle counter (32 bits, wraps every 19.9 s) extended to 64 bits in software;
// SysTick fires every 2^24 cycles (78 ms) only to keep that extension up to date.
// Register addresses and bit positions: STM32F74x reference manual (RM0385).
#include <cstddef>
#include <cstdint>

#include "bsp/board.h"
#include "bsp/board_stats.h"
#include "bsp/cortex_m7.h"

namespace mt::board {
namespace {

using mt::cm7::reg;

constexpr uint32_t kHseHz = 25'000'000;
constexpr uint32_t kSysClockHz = 216'000'000;
constexpr uint32_t kApb2Hz = kSysClockHz / 2;
constexpr uint32_t kBaud = 115200;
constexpr uint32_t kPllM = kHseHz / 1'000'000;  // 1 MHz PLL input
constexpr uint32_t kPllN = 432;                 // 432 MHz VCO
constexpr uint32_t kPllQ = 9;                   // 48 MHz for USB/SDMMC, unused here
// PLLP field value 0 means divide by 2: 432 / 2 = 216 MHz.

// RCC
constexpr uint32_t kRcc = 0x40023800;
constexpr uint32_t kRccCr = kRcc + 0x00;
constexpr uint32_t kRccPllcfgr = kRcc + 0x04;
constexpr uint32_t kRccCfgr = kRcc + 0x08;
constexpr uint32_t kRccAhb1enr = kRcc + 0x30;
constexpr uint32_t kRccApb1enr = kRcc + 0x40;
constexpr uint32_t kRccApb2enr = kRcc + 0x44;
constexpr uint32_t kRccDckcfgr2 = kRcc + 0x90;
constexpr uint32_t kCrHseOn = 1u << 16;
constexpr uint32_t kCrHseRdy = 1u << 17;
constexpr uint32_t kCrPllOn = 1u << 24;
constexpr uint32_t kCrPllRdy = 1u << 25;
constexpr uint32_t kPllcfgrFields = 0x3Fu | (0x1FFu << 6) | (0x3u << 16) | (1u << 22) | (0xFu << 24);
constexpr uint32_t kPllcfgrSrcHse = 1u << 22;
constexpr uint32_t kCfgrSwMask = 0x3u;
constexpr uint32_t kCfgrSwPll = 0x2u;
constexpr uint32_t kCfgrSwsMask = 0x3u << 2;
constexpr uint32_t kCfgrSwsPll = 0x2u << 2;
constexpr uint32_t kCfgrPrescalerMask = (0xFu << 4) | (0x7u << 10) | (0x7u << 13);
constexpr uint32_t kCfgrPpre1Div4 = 0x5u << 10;
constexpr uint32_t kCfgrPpre2Div2 = 0x4u << 13;
constexpr uint32_t kAhb1GpioA = 1u << 0;
constexpr uint32_t kAhb1GpioB = 1u << 1;
constexpr uint32_t kApb1Pwr = 1u << 28;
constexpr uint32_t kApb2Usart1 = 1u << 4;

// PWR: voltage scale 1 and over-drive are required above 180 MHz.
constexpr uint32_t kPwr = 0x40007000;
constexpr uint32_t kPwrCr1 = kPwr + 0x00;
constexpr uint32_t kPwrCsr1 = kPwr + 0x04;
constexpr uint32_t kPwrCr1VosScale1 = 0x3u << 14;
constexpr uint32_t kPwrCr1Oden = 1u << 16;
constexpr uint32_t kPwrCr1Odswen = 1u << 17;
constexpr uint32_t kPwrCsr1Odrdy = 1u << 16;
constexpr uint32_t kPwrCsr1Odswrdy = 1u << 17;

// FLASH: 7 wait states at 216 MHz / 2.7-3.6 V, ART accelerator and prefetch on.
constexpr uint32_t kFlashAcr = 0x40023C00;
constexpr uint32_t kFlashLatency = 7;
constexpr uint32_t kFlashAcrPrften = 1u << 8;
constexpr uint32_t kFlashAcrArten = 1u << 9;

// GPIO
constexpr uint32_t kGpioA = 0x40020000;
constexpr uint32_t kGpioB = 0x40020400;
constexpr uint32_t kGpioModer = 0x00;
constexpr uint32_t kGpioOspeedr = 0x08;
constexpr uint32_t kGpioPupdr = 0x0C;
constexpr uint32_t kGpioAfrl = 0x20;
constexpr uint32_t kGpioAfrh = 0x24;
constexpr uint32_t kModeAlternate = 0x2;
constexpr uint32_t kAfUsart1 = 7;

// USART1 (APB2)
constexpr uint32_t kUsart1 = 0x40011000;
constexpr uint32_t kUsartCr1 = kUsart1 + 0x00;
constexpr uint32_t kUsartBrr = kUsart1 + 0x0C;
constexpr uint32_t kUsartIsr = kUsart1 + 0x1C;
constexpr uint32_t kUsartIcr = kUsart1 + 0x20;
constexpr uint32_t kUsartRdr = kUsart1 + 0x24;
constexpr uint32_t kUsartTdr = kUsart1 + 0x28;
constexpr uint32_t kCr1Ue = 1u << 0;
constexpr uint32_t kCr1Re = 1u << 2;
constexpr uint32_t kCr1Te = 1u << 3;
constexpr uint32_t kIsrOre = 1u << 3;
constexpr uint32_t kIsrRxne = 1u << 5;
constexpr uint32_t kIsrTxe = 1u << 7;

// 64-bit extension of DWT CYCCNT; touched only with interrupts masked.
uint32_t g_cycles_high = 0;
uint32_t g_cycles_last = 0;

// A dummy read: an enable bit in RCC takes effect only after a bus cycle (RM0385 errata note).
void read_back(uint32_t address) {
  const uint32_t value = reg(address);
  (void)value;
}

void wait_set(uint32_t address, uint32_t mask) {
  while ((reg(address) & mask) != mask) {
  }
}

void configure_clocks() {
  reg(kRccApb1enr) |= kApb1Pwr;
  read_back(kRccApb1enr);
  reg(kPwrCr1) = (reg(kPwrCr1) & ~(0x3u << 14)) | kPwrCr1VosScale1;

  reg(kRccCr) |= kCrHseOn;
  wait_set(kRccCr, kCrHseRdy);

  reg(kRccPllcfgr) = (reg(kRccPllcfgr) & ~kPllcfgrFields) | kPllM | (kPllN << 6) |
                     kPllcfgrSrcHse | (kPllQ << 24);
  reg(kRccCr) |= kCrPllOn;
  wait_set(kRccCr, kCrPllRdy);

  reg(kPwrCr1) |= kPwrCr1Oden;
  wait_set(kPwrCsr1, kPwrCsr1Odrdy);
  reg(kPwrCr1) |= kPwrCr1Odswen;
  wait_set(kPwrCsr1, kPwrCsr1Odswrdy);

  // Wait states before the clock goes up, and confirmed by reading back.
  reg(kFlashAcr) = kFlashLatency | kFlashAcrPrften | kFlashAcrArten;
  while ((reg(kFlashAcr) & 0xFu) != kFlashLatency) {
  }

  reg(kRccCfgr) = (reg(kRccCfgr) & ~kCfgrPrescalerMask) | kCfgrPpre1Div4 | kCfgrPpre2Div2;
  reg(kRccCfgr) = (reg(kRccCfgr) & ~kCfgrSwMask) | kCfgrSwPll;
  while ((reg(kRccCfgr) & kCfgrSwsMask) != kCfgrSwsPll) {
  }
}

void set_pin_alternate(uint32_t port, uint32_t pin, uint32_t af) {
  reg(port + kGpioModer) = (reg(port + kGpioModer) & ~(0x3u << (2 * pin))) |
                           (kModeAlternate << (2 * pin));
  reg(port + kGpioOspeedr) |= 0x3u << (2 * pin);  // very high speed
  const uint32_t afr = pin < 8 ? port + kGpioAfrl : port + kGpioAfrh;
  const uint32_t shift = 4 * (pin % 8);
  reg(afr) = (reg(afr) & ~(0xFu << shift)) | (af << shift);
}

void configure_usart1() {
  reg(kRccAhb1enr) |= kAhb1GpioA | kAhb1GpioB;
  reg(kRccApb2enr) |= kApb2Usart1;
  read_back(kRccApb2enr);
  reg(kRccDckcfgr2) &= ~0x3u;  // USART1 kernel clock = PCLK2 (108 MHz)

  set_pin_alternate(kGpioA, 9, kAfUsart1);  // TX
  set_pin_alternate(kGpioB, 7, kAfUsart1);  // RX
  reg(kGpioB + kGpioPupdr) = (reg(kGpioB + kGpioPupdr) & ~(0x3u << 14)) | (0x1u << 14);  // pull-up

  reg(kUsartCr1) = 0;
  reg(kUsartBrr) = (kApb2Hz + kBaud / 2) / kBaud;  // oversampling by 16
  reg(kUsartCr1) = kCr1Ue | kCr1Re | kCr1Te;
}

void configure_counter() {
  reg(mt::cm7::kDemcr) |= 1u << 24;  // TRCENA
  reg(mt::cm7::kDwtLar) = mt::cm7::kDwtLarKey;
  reg(mt::cm7::kDwtCyccnt) = 0;
  reg(mt::cm7::kDwtCtrl) |= 1u;  // CYCCNTENA

  reg(mt::cm7::kSystRvr) = mt::cm7::kSysTickMax;
  reg(mt::cm7::kSystCvr) = 0;
  reg(mt::cm7::kSystCsr) = 0x7;  // processor clock, interrupt, enable
}

}  // namespace

namespace disco {

void systick_handler() { (void)counter_now(); }

void uart_write_text(const char* text) {
  size_t len = 0;
  while (text[len] != '\0') ++len;
  serial_write(reinterpret_cast<const uint8_t*>(text), len);
}

}  // namespace disco

void init() {
  configure_clocks();
  mt::cm7::enable_icache();
  mt::cm7::enable_dcache();
  configure_usart1();
  configure_counter();
}

bool serial_read_byte(uint8_t* byte) {
  const uint32_t isr = reg(kUsartIsr);
  if ((isr & kIsrOre) != 0) reg(kUsartIcr) = kIsrOre;  // a lost byte must not stall reception
  if ((isr & kIsrRxne) == 0) return false;
  *byte = static_cast<uint8_t>(reg(kUsartRdr));
  return true;
}

void serial_write(const uint8_t* data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    while ((reg(kUsartIsr) & kIsrTxe) == 0) {
    }
    reg(kUsartTdr) = data[i];
  }
}

uint64_t counter_now() {
  const uint32_t primask = mt::cm7::irq_save();
  const uint32_t now = reg(mt::cm7::kDwtCyccnt);
  if (now < g_cycles_last) g_cycles_high += 1;
  g_cycles_last = now;
  const uint64_t result = (uint64_t{g_cycles_high} << 32) | now;
  mt::cm7::irq_restore(primask);
  return result;
}

CounterUnit counter_unit() { return CounterUnit::kCycles; }

uint64_t micros() { return counter_now() / (kSysClockHz / 1'000'000); }

const char* name() { return "stm32f746g-disco"; }

uint32_t stack_high_water_bytes() {
  return mt::cm7::stack_high_water(__stack_limit__, __stack_top__);
}

uint32_t stack_size_bytes() {
  return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(__stack_size__));
}

}  // namespace mt::board
