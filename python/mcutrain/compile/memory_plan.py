"""Static arena planning from buffer lifetimes (no allocator on the device).

Three calls, like TFLite Micro's planner but run on the host: add a buffer with its size and the
first and last step that use it, then read back each offset and the arena size. Every strategy
of plan_strategies.py places the buffers (greedy by size, the original; greedy best-fit; greedy
in schedule order; an exact search capped at EXACT_NODE_BUDGET nodes) and the smallest arena
wins, ties going to the earlier strategy, so a plan only changes where it gets smaller. Steps are
operator positions in the schedule; a model input is alive from step -1 (written before the
first operator) and a model output until the step after the last operator (read after the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .plan_strategies import HEURISTICS, ExactResult, Problem, Request, arena_units, exact

# Search nodes the exact planner may visit per plan: enough to close the small gaps the
# heuristics leave on graphs of a few dozen buffers, small enough to keep a build in seconds.
EXACT_NODE_BUDGET = 3000
# Each search node costs time quadratic in the buffer count (0.2 s per plan at 200 buffers):
# bigger plans keep the best heuristic.
EXACT_MAX_BUFFERS = 256


@dataclass(frozen=True)
class Placement:
    name: str
    size: int
    first: int
    last: int
    offset: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    def lives_with(self, first: int, last: int) -> bool:
        return self.first <= last and first <= self.last


class ArenaPlanner:
    def __init__(self, alignment: int = 16) -> None:
        self.alignment = alignment
        self._requests: list[tuple[str, int, int, int]] = []
        self._placements: dict[str, Placement] | None = None
        self._choice: dict[str, Any] = {}

    def add_buffer(self, name: str, size: int, first: int, last: int) -> None:
        if size <= 0 or last < first:
            raise ValueError(f"buffer {name}: size {size}, lifetime [{first}, {last}]")
        if any(r[0] == name for r in self._requests):
            raise ValueError(f"buffer {name} added twice")
        self._requests.append((name, size, first, last))
        self._placements = None

    def offset_of(self, name: str) -> int:
        return self.placements()[name].offset

    def arena_bytes(self) -> int:
        ends = [p.end for p in self.placements().values()]
        return self._align(max(ends)) if ends else 0

    def placements(self) -> dict[str, Placement]:
        if self._placements is None:
            self._placements = self._place()
        return self._placements

    def choice(self) -> dict[str, Any]:
        """Which strategy won, its arena, and every candidate's arena (for report.json)."""
        self.placements()
        return self._choice

    def widen(self, name: str, size: int) -> bool:
        """Grows a placed buffer to `size` bytes where the arena already has the room, every
        other placement and the arena size unchanged: it moves to the lowest gap free through
        its lifetime (its own place counts as free). False, nothing changed, when none is big
        enough."""
        placements = self.placements()
        old = placements[name]
        if size <= old.size:
            return True
        limit = self.arena_bytes()
        others = sorted((p for p in placements.values()
                         if p.name != name and p.lives_with(old.first, old.last)),
                        key=lambda p: p.offset)
        offset = 0
        for p in [*others, Placement("", 0, 0, 0, limit)]:
            if p.offset - offset >= size:
                break
            offset = max(offset, self._align(p.end))
        else:
            return False
        if offset + size > limit:
            return False
        placements[name] = Placement(name, size, old.first, old.last, offset)
        self._requests = [(n, size if n == name else s, f, la)
                          for n, s, f, la in self._requests]
        return True

    def widen_to_first(self, name: str, sizes: tuple[int, ...]) -> None:
        """Grows a placed buffer to the first of `sizes` (fastest first) that widen finds room
        for; none, and it keeps its size."""
        for size in sizes:
            if self.widen(name, size):
                return

    def live_at(self, step: int) -> list[Placement]:
        return [p for p in self.placements().values() if p.first <= step <= p.last]

    def peak_step(self) -> int:
        """The step whose live buffers add up to the most bytes (what dominates a too-big model)."""
        steps = {s for r in self._requests for s in (r[2], r[3])}
        return max(steps, key=lambda s: sum(p.size for p in self.live_at(s)), default=0)

    def _align(self, n: int) -> int:
        return (n + self.alignment - 1) // self.alignment * self.alignment

    def _place(self) -> dict[str, Placement]:
        requests = [Request(*r) for r in self._requests]
        problem = Problem.of(requests, self.alignment)
        winner, offsets, self._choice = choose_plan(problem, self.alignment)
        placed = [Placement(r.name, r.size, r.first, r.last, o * self.alignment)
                  for r, o in zip(requests, offsets, strict=True)]
        return {p.name: p for p in sorted(placed, key=lambda p: (p.offset, p.first))}


def choose_plan(problem: Problem, alignment: int) -> tuple[str, list[int], dict[str, Any]]:
    """The winning strategy, its offsets (units) and the report of the choice: the heuristics
    first, then the exact search when none reached the lower bound and the plan is small."""
    candidates = {name: place(problem) for name, place in HEURISTICS.items()}
    arenas = {name: arena_units(problem, o) for name, o in candidates.items()}
    winner = min(arenas, key=lambda name: arenas[name])  # first of equals: dict order
    lower = problem.lower_bound()
    n = len(problem.requests)
    if arenas[winner] <= lower:
        state = "not needed: a heuristic reached the lower bound"
    elif n > EXACT_MAX_BUFFERS:
        state = f"skipped: {n} buffers > {EXACT_MAX_BUFFERS}"
    else:
        found = exact(problem, arenas[winner], EXACT_NODE_BUDGET)
        state = _exact_state(found)
        if found.offsets is not None:
            candidates["exact"], winner = found.offsets, "exact"
            arenas["exact"] = arena_units(problem, found.offsets)
    report = {"planner": winner, "arena_bytes": arenas[winner] * alignment,
              "candidates": {name: u * alignment for name, u in arenas.items()},
              "lower_bound_bytes": lower * alignment, "exact": state}
    return winner, candidates[winner], report


def _exact_state(found: ExactResult) -> str:
    if found.offsets is not None:
        return "optimal" if found.proven else "best within budget"
    return "no smaller arena exists" if found.proven else "no smaller arena found within budget"
