// Start-up code for the STM32F746NG: vector table (16 core exceptions + 98 peripheral interrupts,
// all but SysTick routed to a handler that reports and stops) and the reset handler.
#include <array>
#include <cstdint>

#include "bsp/cortex_m7.h"

extern "C" int main();

namespace mt::board::disco {
void uart_write_text(const char* text);
void systick_handler();
}  // namespace mt::board::disco

namespace {

constexpr int kPeripheralInterrupts = 98;  // STM32F74x/75x: IRQ 0..97

[[noreturn]] void fault(const char* what) {
  mt::board::disco::uart_write_text(what);
  for (;;) {
  }
}

}  // namespace

extern "C" {

[[noreturn]] void Reset_Handler();
void NMI_Handler() { fault("\r\n*** NMI\r\n"); }
void HardFault_Handler() { fault("\r\n*** HardFault\r\n"); }
void MemManage_Handler() { fault("\r\n*** MemManage fault\r\n"); }
void BusFault_Handler() { fault("\r\n*** BusFault\r\n"); }
void UsageFault_Handler() { fault("\r\n*** UsageFault\r\n"); }
void Unexpected_Handler() { fault("\r\n*** unexpected interrupt\r\n"); }
void SysTick_Handler() { mt::board::disco::systick_handler(); }

using Vector = void (*)();

struct VectorTable {
  Vector core[16];
  std::array<Vector, kPeripheralInterrupts> irq;
};

constexpr std::array<Vector, kPeripheralInterrupts> unexpected_irqs() {
  std::array<Vector, kPeripheralInterrupts> table{};
  for (auto& entry : table) entry = Unexpected_Handler;
  return table;
}

__attribute__((section(".isr_vector"), used)) const VectorTable kVectors = {
    {
        reinterpret_cast<Vector>(__stack_top__),  // initial SP: top of RAM
        Reset_Handler,
        NMI_Handler,
        HardFault_Handler,
        MemManage_Handler,
        BusFault_Handler,
        UsageFault_Handler,
        nullptr,  // reserved
        nullptr,
        nullptr,
        nullptr,
        Unexpected_Handler,  // SVCall
        Unexpected_Handler,  // DebugMonitor
        nullptr,             // reserved
        Unexpected_Handler,  // PendSV
        SysTick_Handler,
    },
    unexpected_irqs(),
};

void Reset_Handler() {
  mt::cm7::enable_fpu();
  // The chip boots through its ITCM flash alias; point exceptions at the table's AXIM address.
  mt::cm7::reg(mt::cm7::kVtor) = reinterpret_cast<uintptr_t>(&kVectors);
  mt::cm7::init_c_runtime();
  main();
  // main() never returns; if it does, there is nothing to return to.
  for (;;) {
  }
}

}  // extern "C"
