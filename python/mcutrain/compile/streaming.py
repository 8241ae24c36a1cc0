"""Row-streamed execution: run a chain of operators band by band so its tensors never exist whole.

Layer-by-layer execution keeps every tensor whole: MobileNetV2's 64x64x48 expansion (192 KB)
and its input exist at once, whatever the planner does. A stream runs schedule steps
[first, last] interleaved instead: in iteration t the last step computes output row t, and every
earlier step computes just the rows its consumers need for that (found backwards through the
chain from each operator's RowGeometry). A tensor made and used inside the stream then needs only
a window of rows (runtime/row_window.h): its capacity is the most rows between the oldest row a
consumer will still read and the newest row written, found by simulating the schedule. This is
MCUNetV2's patch-based inference with one difference: bands are full-width and windows keep the
rows the next band shares with this one, so no row is computed twice (patches recompute their
halos).

What it needs: every step of the stream has a RowRule (ops/base.py) whose geometry is defined
for its prepared params, and every tensor made inside the stream except the last step's output
(the stream's sink, kept whole) is read only inside it. Inputs from outside stay whole.

The compiler plans with and without streams and keeps what needs the smaller arena
(compile/compiler.py); this module only finds the candidates and their schedules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..frontend.graph import Graph
from ..ops.base import RowGeometry


@dataclass(frozen=True)
class Stream:
    """Schedule steps [first, last] run as one row-streamed loop.

    rows[t][k]: rows step first + k has computed after iteration t (the firmware's table).
    windows: tensor id -> rows its window holds, for tensors made and read inside the stream.
    pulled: the model input when the stream pulls it from the host a few rows at a time
      (with_pulled_input) instead of reading it whole; its window is windows[pulled] rows and
      input_rows[t] the rows pulled by the start of iteration t's bands.
    """

    first: int
    last: int
    rows: tuple[tuple[int, ...], ...]
    windows: dict[int, int]
    pulled: int | None = None
    input_rows: tuple[int, ...] = ()

    @property
    def steps(self) -> range:
        return range(self.first, self.last + 1)

    def contains(self, step: int) -> bool:
        return self.first <= step <= self.last


def pulls_input(streams: Sequence[Stream]) -> bool:
    """Whether one of `streams` pulls the model input from the host row by row."""
    return any(s.pulled is not None for s in streams)


def row_bytes(graph: Graph, tensor_id: int) -> int:
    """Bytes of one row (axis 1) of an NHWC int8 tensor."""
    _, _, w, c = graph.tensors[tensor_id].shape
    return int(w * c)


def geometries(ops: Sequence[Any]) -> list[list[RowGeometry] | None]:
    """Each step's input row geometries, None where the step cannot run by rows."""
    found: list[list[RowGeometry] | None] = []
    for p in ops:
        rule = p.opdef.rows
        found.append(None if rule is None else rule.geometry(p.params))
    return found


def runs(ops: Sequence[Any], geoms: Sequence[list[RowGeometry] | None]) -> list[range]:
    """Maximal ranges of consecutive steps that can all run by rows."""
    found, start = [], None
    for step, g in enumerate([*geoms, None]):
        if g is not None and start is None:
            start = step
        elif g is None and start is not None:
            found.append(range(start, step))
            start = None
    return found


def candidates(graph: Graph, ops: Sequence[Any]) -> list[Stream]:
    """Every valid stream of two or more steps inside a run of row-capable steps, each with the
    plain schedule (whole targets per sink row; `refine` makes its windows smaller)."""
    geoms = geometries(ops)
    readers = _readers(graph, ops)
    found = []
    for run in runs(ops, geoms):
        for last in run:
            if graph.tensors[ops[last].output].shape[1] < 2:
                continue
            # The targets of steps >= first do not depend on first: compute them once.
            targets = _targets(ops, geoms, run.start, last)
            for first in range(run.start, last):
                if not _valid(ops, readers, first, last):
                    continue
                rows = tuple(tuple(t[first - run.start:]) for t in targets)
                windows = _capacities(ops, geoms, readers, first, last, rows)
                found.append(Stream(first=first, last=last, rows=rows, windows=windows))
    return found


def plan_stream(graph: Graph, ops: Sequence[Any], first: int, last: int) -> Stream | None:
    """The stream of steps [first, last] with its refined schedule, None if it is not valid."""
    geoms = geometries(ops)
    if any(g is None for g in geoms[first:last + 1]) or last <= first:
        return None
    readers = _readers(graph, ops)
    if not _valid(ops, readers, first, last) or graph.tensors[ops[last].output].shape[1] < 2:
        return None
    rows = tuple(tuple(t) for t in _targets(ops, geoms, first, last))
    lazy = Stream(first=first, last=last, rows=rows,
                  windows=_capacities(ops, geoms, readers, first, last, rows))
    return refine(graph, ops, lazy)


def avoiding(graph: Graph, ops: Sequence[Any], streams: Sequence[Stream],
             steps: set[int]) -> tuple[Stream, ...]:
    """`streams` cut short before the first of `steps` each contains (a training step must
    keep those steps' tensors whole), dropping any that cannot stream then."""
    kept = []
    for stream in streams:
        inside = [s for s in stream.steps if s in steps]
        if not inside:
            kept.append(stream)
            continue
        for last in range(min(inside) - 1, stream.first, -1):
            cut = plan_stream(graph, ops, stream.first, last)
            if cut is not None and stream.pulled is not None:
                cut = with_pulled_input(graph, ops, cut, stream.pulled)
            if cut is not None:
                kept.append(cut)
                break
    return tuple(kept)


def with_pulled_input(graph: Graph, ops: Sequence[Any], stream: Stream,
                      tensor_id: int) -> Stream | None:
    """`stream` pulling `tensor_id` (the model input) from the host row by row: at the start of
    each iteration the rows its bands will read are pulled into a window. None when something
    outside the stream reads that tensor, or it is not an NHWC tensor of one batch."""
    shape = graph.tensors[tensor_id].shape
    readers = _readers(graph, ops).get(tensor_id, [])
    if len(shape) != 4 or shape[0] != 1 or not readers:
        return None
    if any(not stream.contains(r) for r, _ in readers):
        return None
    geoms = geometries(ops)
    need = [max(geoms[r][i].end_row(target[r - stream.first]) for r, i in readers)
            for target in stream.rows]
    final = stream.rows[-1]
    done = [0] * len(stream.steps)
    pulled = capacity = 0
    for target, rows in zip(stream.rows, need, strict=True):
        if rows > pulled:
            oldest = min((geoms[r][i].first_row(done[r - stream.first]) for r, i in readers
                          if done[r - stream.first] < final[r - stream.first]), default=rows)
            capacity = max(capacity, rows - min(oldest, pulled))
            pulled = rows
        done = list(target)
    return Stream(first=stream.first, last=stream.last, rows=stream.rows,
                  windows={**stream.windows, tensor_id: capacity}, pulled=tensor_id,
                  input_rows=tuple(need))


def spans(n_steps: int, streams: Sequence[Stream]) -> list[tuple[int, int]]:
    """Each step's [first, last] of steps its buffers are live during: its own step, or its
    stream's (a stream's steps all run in one loop)."""
    found = [(step, step) for step in range(n_steps)]
    for s in streams:
        for step in s.steps:
            found[step] = (s.first, s.last)
    return found


def window_bytes(graph: Graph, streams: Sequence[Stream]) -> dict[int, int]:
    """Tensor id -> bytes of its window, for every windowed tensor of `streams`."""
    return {tid: rows * row_bytes(graph, tid) for s in streams for tid, rows in s.windows.items()}


def refine(graph: Graph, ops: Sequence[Any], stream: Stream) -> Stream:
    """`stream` with each target reached in sweeps that advance every step by at most one row
    whose inputs are ready, so no step computes a burst of rows ahead of its readers (a burst
    would have to be held in a window)."""
    geoms = geometries(ops)
    first, last = stream.first, stream.last
    made = {ops[s].output: s for s in stream.steps}
    table: list[tuple[int, ...]] = []
    done = [0] * (last - first + 1)
    for target in stream.rows:
        while tuple(done) != target:
            for s in range(first, last + 1):
                k = s - first
                if done[k] < target[k] and _ready(ops, geoms, made, first, done, s):
                    done[k] += 1
            table.append(tuple(done))
    rows = tuple(table)
    windows = _capacities(ops, geoms, _readers(graph, ops), first, last, rows)
    return Stream(first=first, last=last, rows=rows, windows=windows)


def _readers(graph: Graph, ops: Sequence[Any]) -> dict[int, list[tuple[int, int]]]:
    """tensor id -> (step, input index) of every step reading it; graph outputs read at
    step len(ops)."""
    readers: dict[int, list[tuple[int, int]]] = {}
    for step, p in enumerate(ops):
        for i, tid in enumerate(p.inputs):
            readers.setdefault(tid, []).append((step, i))
    for tid in graph.outputs:
        readers.setdefault(tid, []).append((len(ops), 0))
    return readers


def _valid(ops: Sequence[Any], readers: dict[int, list[tuple[int, int]]], first: int,
           last: int) -> bool:
    """Whether every tensor made by steps [first, last) is read only inside [first, last]."""
    return all(first <= r <= last for s in range(first, last)
               for r, _ in readers.get(ops[s].output, []))


def _targets(ops: Sequence[Any], geoms: Sequence[list[RowGeometry] | None], first: int,
             last: int) -> list[list[int]]:
    """For each sink row t: the rows each step in [first, last] must have computed for sink rows
    [0, t + 1), found backwards through the chain."""
    made = {ops[s].output for s in range(first, last + 1)}
    found = []
    for t in range(geoms[last][0].out_h if geoms[last] else 0):
        need: dict[int, int] = {ops[last].output: t + 1}
        done = [0] * (last - first + 1)
        for s in range(last, first - 1, -1):
            done[s - first] = need.get(ops[s].output, 0)
            for tid, g in zip(ops[s].inputs, geoms[s] or [], strict=True):
                if tid in made:
                    need[tid] = max(need.get(tid, 0), g.end_row(done[s - first]))
        found.append(done)
    return found


def _ready(ops: Sequence[Any], geoms: Sequence[list[RowGeometry] | None], made: dict[int, int],
           first: int, done: list[int], step: int) -> bool:
    """Whether every input row that row done[step] of `step` reads has been computed (`made`:
    tensor -> the step of the stream making it)."""
    y = done[step - first] + 1
    for tid, g in zip(ops[step].inputs, geoms[step] or [], strict=True):
        maker = made.get(tid)
        if maker is not None and g.end_row(y) > done[maker - first]:
            return False
    return True


def _capacities(ops: Sequence[Any], geoms: Sequence[list[RowGeometry] | None],
                readers: dict[int, list[tuple[int, int]]], first: int, last: int,
                rows: tuple[tuple[int, ...], ...]) -> dict[int, int]:
    """Run the schedule and record, for each windowed tensor, the most rows it must hold: from
    the oldest row a reader has still to read to the newest row written."""
    final = rows[-1]
    done = [0] * (last - first + 1)
    capacity: dict[int, int] = {}
    for target in rows:
        for s in range(first, last + 1):
            k = s - first
            if target[k] <= done[k]:
                continue
            tid = ops[s].output
            if s != last:
                oldest = min((geoms[r][i].first_row(done[r - first])
                              for r, i in readers[tid] if done[r - first] < final[r - first]),
                             default=target[k])
                capacity[tid] = max(capacity.get(tid, 0), target[k] - min(oldest, done[k]))
            done[k] = target[k]
    return capacity


def check_schedule(graph: Graph, ops: Sequence[Any], stream: Stream) -> None:
    """Replay `stream` the way the firmware does (appends drop the oldest rows past capacity)
    and raise AssertionError if any band reads a row its window does not hold. An independent
    check of _capacities, used by tests and by the compiler before it emits a stream."""
    geoms = geometries(ops)
    held: dict[int, tuple[int, int]] = {}  # tensor -> (first, count) of its window
    for s in stream.steps:
        for tid in ops[s].inputs:
            if tid not in held and tid not in stream.windows:
                held[tid] = (0, graph.tensors[tid].shape[1])  # whole, from outside
    sink = ops[stream.last].output
    held[sink] = (0, 0)
    for tid in stream.windows:
        held[tid] = (0, 0)
    done = [0] * len(stream.steps)
    for t, target in enumerate(stream.rows):
        if stream.pulled is not None:
            start, count = held[stream.pulled]
            rows = stream.input_rows[t] - (start + count)
            cap = stream.windows[stream.pulled]
            if rows > cap:
                raise AssertionError(f"iteration {t} pulls {rows} input rows into a window of "
                                     f"{cap}")
            over = max(0, count + rows - cap)
            held[stream.pulled] = (start + over, count - over + rows)
        for k, s in enumerate(stream.steps):
            y0, y1 = done[k], target[k]
            if y1 <= y0:
                continue
            for tid, g in zip(ops[s].inputs, geoms[s] or [], strict=True):
                lo, hi = g.first_row(y0), g.end_row(y1)
                start, count = held[tid]
                if hi > lo and not (start <= lo and hi <= start + count):
                    raise AssertionError(f"step {s} rows [{y0}, {y1}) read rows [{lo}, {hi}) of "
                                         f"tensor {tid}, window holds [{start}, {start + count})")
            tid = ops[s].output
            cap = stream.windows.get(tid, graph.tensors[tid].shape[1])
            start, count = held[tid]
            if start + count != y0:
                raise AssertionError(f"step {s} appends row {y0} after row {start + count - 1}")
            if y1 - y0 > cap:
                raise AssertionError(f"step {s} appends {y1 - y0} rows to a window of {cap}")
            over = max(0, count + (y1 - y0) - cap)
            held[tid] = (start + over, count - over + (y1 - y0))
        done = list(target)
    if done[-1] != graph.tensors[sink].shape[1]:
        raise AssertionError(f"the stream's sink got {done[-1]} rows of "
                             f"{graph.tensors[sink].shape[1]}")
