// ARM semihosting calls used on the emulated board (QEMU runs with
// -semihosting-config enable=on,target=native). On real hardware without a debugger attached the
// BKPT would fault, which is why only the QEMU board uses this.
#pragma once

#include <cstdint>

namespace mt::board::qemu {

// Semihosting operation numbers and the exit reason from the ARM semihosting specification.
constexpr uint32_t kSysExitExtended = 0x20;
constexpr uint32_t kAdpStoppedApplicationExit = 0x20026;

inline uint32_t semihosting_call(uint32_t op, const void* arg) {
  register uint32_t r0 __asm("r0") = op;
  register const void* r1 __asm("r1") = arg;
  __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

// Ends QEMU with `status` as its process exit code.
[[noreturn]] inline void semihosting_exit(int status) {
  const uint32_t block[2] = {kAdpStoppedApplicationExit, static_cast<uint32_t>(status)};
  semihosting_call(kSysExitExtended, block);
  for (;;) {
  }
}

}  // namespace mt::board::qemu
