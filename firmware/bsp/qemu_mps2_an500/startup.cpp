// Start-up code for the emulated Cortex-M7 (QEMU mps2-an500): vector table at address 0 and the
// reset handler. Faults print a line on UART0 and end QEMU through semihosting, so a crashing
// firmware fails a test at once instead of hanging it.
#include <cstdint>

#include "bsp/cortex_m7.h"
#include "bsp/qemu_mps2_an500/semihosting.h"

extern "C" int main();

namespace mt::board::qemu {
void uart_write_text(const char* text);
void systick_handler();
}  // namespace mt::board::qemu

namespace {

[[noreturn]] void fault(const char* what) {
  mt::board::qemu::uart_write_text(what);
  mt::board::qemu::semihosting_exit(1);
}

}  // namespace

extern "C" {

[[noreturn]] void Reset_Handler() {
  mt::cm7::enable_fpu();
  mt::cm7::init_c_runtime();
  const int status = main();
  // main() never returns in the real firmware; a test image that returns ends QEMU cleanly.
  mt::board::qemu::semihosting_exit(status);
}

void NMI_Handler() { fault("\r\n*** NMI\r\n"); }
void HardFault_Handler() { fault("\r\n*** HardFault\r\n"); }
void MemManage_Handler() { fault("\r\n*** MemManage fault\r\n"); }
void BusFault_Handler() { fault("\r\n*** BusFault\r\n"); }
void UsageFault_Handler() { fault("\r\n*** UsageFault\r\n"); }
void Unexpected_Handler() { fault("\r\n*** unexpected interrupt\r\n"); }
void SysTick_Handler() { mt::board::qemu::systick_handler(); }

using Vector = void (*)();

// Core exceptions only: this firmware enables no peripheral interrupt (the UART is polled).
__attribute__((section(".isr_vector"), used)) const Vector kVectors[16] = {
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
};

}  // extern "C"
