// A window of consecutive rows of an NHWC tensor, for row-streamed execution.
//
// The compiler (python/mcutrain/compile/streaming.py) runs a chain of operators band by band:
// each computes a few more rows of its output, appended to that tensor's window, and reads its
// inputs from theirs. A window holds at most `capacity` rows; appending past that drops the
// oldest rows. The compiler sizes every capacity so that no row is dropped before the last
// band that reads it, and it checks that by simulating the schedule the firmware runs.
// Whole tensors are windows whose capacity is their height (nothing is ever dropped).
#pragma once

#include <cstdint>
#include <cstring>

namespace mt {

struct RowWindow {
  int8_t* base;       // capacity * row_bytes bytes of the arena
  int32_t row_bytes;  // width * channels
  int32_t capacity;   // rows the buffer holds
  int32_t first;      // tensor row held at base
  int32_t count;      // rows held: tensor rows [first, first + count)
};

// Room for `rows` more rows at the window's end; returns where they go. Drops the oldest rows
// when the buffer would overflow (memmove: the kept rows move to the front, so every kernel
// reads a window as plain contiguous rows).
inline int8_t* RowWindowAppend(RowWindow& w, int32_t rows) {
  const int32_t over = w.count + rows - w.capacity;
  if (over > 0) {
    std::memmove(w.base, w.base + over * w.row_bytes,
                 static_cast<size_t>(w.count - over) * static_cast<size_t>(w.row_bytes));
    w.first += over;
    w.count -= over;
  }
  int8_t* end = w.base + w.count * w.row_bytes;
  w.count += rows;
  return end;
}

}  // namespace mt
