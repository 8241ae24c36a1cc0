// Host-process board: the firmware runs as an ordinary Linux process, so the protocol and the
// kernels can be tested in milliseconds and under AddressSanitizer/UBSan.
//
//   serial  = stdin (read, binary) / stdout (write, binary). The host tool spawns the process and
//             talks over the pipes; end of file on stdin ends the process with exit code 0.
//   counter = CLOCK_MONOTONIC nanoseconds, reported as CounterUnit::kCycles (cycles of a 1 GHz
//             clock): wall time, useful for profiling, not deterministic.
//   micros  = CLOCK_MONOTONIC microseconds since init().
//
// The process uses the C library (heap included) for its own plumbing; the runtime it hosts does
// not, which is what matters for the firmware targets.
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include "bsp/board.h"
#include "bsp/board_stats.h"

namespace mt::board {
namespace {

uint64_t g_start_ns = 0;
uint8_t g_rx[4096];
size_t g_rx_len = 0;
size_t g_rx_pos = 0;

uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// Refills the receive buffer. Waits up to 1 ms for data so an idle firmware does not spin a CPU
// core; the runtime still sees a non-blocking read.
bool Refill() {
  pollfd pfd{STDIN_FILENO, POLLIN, 0};
  const int ready = poll(&pfd, 1, 1);
  if (ready <= 0) return false;
  const ssize_t n = read(STDIN_FILENO, g_rx, sizeof(g_rx));
  if (n == 0) _exit(0);  // host closed the link
  if (n < 0) {
    if (errno == EINTR || errno == EAGAIN) return false;
    _exit(3);
  }
  g_rx_len = static_cast<size_t>(n);
  g_rx_pos = 0;
  return true;
}

}  // namespace

void init() { g_start_ns = MonotonicNs(); }

bool serial_read_byte(uint8_t* byte) {
  if (g_rx_pos == g_rx_len && !Refill()) return false;
  *byte = g_rx[g_rx_pos++];
  return true;
}

void serial_write(const uint8_t* data, size_t len) {
  while (len > 0) {
    const ssize_t n = write(STDOUT_FILENO, data, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      _exit(4);  // host went away
    }
    data += n;
    len -= static_cast<size_t>(n);
  }
}

uint64_t counter_now() { return MonotonicNs(); }

CounterUnit counter_unit() { return CounterUnit::kCycles; }

uint64_t micros() { return (MonotonicNs() - g_start_ns) / 1000u; }

const char* name() { return "host"; }

// A process stack is neither painted nor bounded by a linker script: ASan is the tool for stack
// bugs here, so both figures read 0 ("not measured").
uint32_t stack_high_water_bytes() { return 0; }
uint32_t stack_size_bytes() { return 0; }

}  // namespace mt::board
