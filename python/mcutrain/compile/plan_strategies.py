"""Ways to place buffers with known lifetimes in one arena; memory_plan.py runs them all.

Every strategy works in alignment units: offsets are multiples of the alignment, so a buffer of
`size` bytes blocks ceil(size / alignment) units and the arena is the highest end in units. Each
returns one offset (in units) per request, in request order.

- greedy_by_size: biggest first, each at the lowest offset that fits (the original planner).
- greedy_by_size_best_fit: biggest first, each in the smallest gap between already-placed
  conflicting buffers that holds it (the offset-calculation idea of TFLite's GPU delegate), else
  on top.
- greedy_by_first_use: in schedule order (first use, then biggest), each at the lowest offset.
- exact: branch and bound over offsets, capped at a node budget so it always ends quickly and the
  same way; it only looks for arenas strictly smaller than the best heuristic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Request:
    name: str
    size: int  # bytes
    first: int
    last: int

    def lives_with(self, other: Request) -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass(frozen=True)
class Problem:
    """Requests in units of the alignment, with who conflicts with whom (lifetimes overlap)."""
    requests: tuple[Request, ...]
    units: tuple[int, ...]
    conflicts: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(requests: list[Request], alignment: int) -> Problem:
        units = tuple(-(-r.size // alignment) for r in requests)
        conflicts = tuple(tuple(j for j, b in enumerate(requests) if j != i and a.lives_with(b))
                          for i, a in enumerate(requests))
        return Problem(tuple(requests), units, conflicts)

    def lower_bound(self) -> int:
        """The most units alive at one step: no placement can use fewer."""
        steps = {s for r in self.requests for s in (r.first, r.last)}
        return max((sum(u for r, u in zip(self.requests, self.units, strict=True)
                        if r.first <= s <= r.last) for s in steps), default=0)


def arena_units(problem: Problem, offsets: list[int]) -> int:
    return max((o + u for o, u in zip(offsets, problem.units, strict=True)), default=0)


def _by_size(problem: Problem) -> list[int]:
    reqs = problem.requests
    return sorted(range(len(reqs)), key=lambda i: (-reqs[i].size, reqs[i].first, reqs[i].name))


def _gaps(problem: Problem, i: int, offsets: list[int | None]) -> list[tuple[int, int]]:
    """(start, length) of each free gap below the placed buffers that conflict with i, in offset
    order, then the open space on top as (start, -1)."""
    busy = sorted((o, o + problem.units[j]) for j in problem.conflicts[i]
                  if (o := offsets[j]) is not None)
    gaps, top = [], 0
    for start, end in busy:
        if start > top:
            gaps.append((top, start - top))
        top = max(top, end)
    return [*gaps, (top, -1)]


def _first_fit(problem: Problem, order: list[int]) -> list[int]:
    offsets: list[int | None] = [None] * len(problem.requests)
    for i in order:
        offsets[i] = next(s for s, n in _gaps(problem, i, offsets)
                          if n < 0 or n >= problem.units[i])
    return [o for o in offsets if o is not None]


def greedy_by_size(problem: Problem) -> list[int]:
    return _first_fit(problem, _by_size(problem))


def greedy_by_first_use(problem: Problem) -> list[int]:
    reqs = problem.requests
    order = sorted(range(len(reqs)), key=lambda i: (reqs[i].first, -reqs[i].size, reqs[i].name))
    return _first_fit(problem, order)


def greedy_by_size_best_fit(problem: Problem) -> list[int]:
    offsets: list[int | None] = [None] * len(problem.requests)
    for i in _by_size(problem):
        need = problem.units[i]
        fits = [(n, s) for s, n in _gaps(problem, i, offsets) if n >= need]
        offsets[i] = min(fits)[1] if fits else _gaps(problem, i, offsets)[-1][0]
    return [o for o in offsets if o is not None]


HEURISTICS: dict[str, Callable[[Problem], list[int]]] = {
    "greedy_by_size": greedy_by_size,
    "greedy_by_size_best_fit": greedy_by_size_best_fit,
    "greedy_by_first_use": greedy_by_first_use,
}


@dataclass
class ExactResult:
    offsets: list[int] | None  # None when nothing strictly below the bound was found
    proven: bool  # the search ran to its end: no arena below the bound (or the result) exists
    nodes: int


class _Search:
    """Buffers are placed in non-decreasing offset order (ties by index). Pushing every buffer
    down as far as it goes turns any plan into one where each offset is 0 or the end of a
    conflicting buffer with a lower offset, so trying exactly those offsets misses no optimum."""

    def __init__(self, problem: Problem, bound: int, budget: int) -> None:
        self.p = problem
        self.best = bound
        self.best_offsets: list[int] | None = None
        self.budget = budget
        self.nodes = 0
        steps = sorted({s for r in problem.requests for s in (r.first, r.last)})
        self.live = np.array([[r.first <= s <= r.last for s in steps] for r in problem.requests],
                             dtype=np.int64)
        self.unit_col = np.array(problem.units, dtype=np.int64)
        self.offsets: list[int | None] = [None] * len(problem.requests)
        self.lower_bound = problem.lower_bound()

    def run(self) -> ExactResult:
        n = len(self.p.requests)
        remaining = (self.unit_col[:, None] * self.live).sum(axis=0)
        top = np.zeros(self.live.shape[1], dtype=np.int64)
        finished = self._node(0, -1, 0, 0, remaining, top, n)
        return ExactResult(self.best_offsets, finished, self.nodes)

    def _node(self, floor: int, last: int, high: int, placed: int, remaining: np.ndarray,
              top: np.ndarray, n: int) -> bool:
        """Search below this node; False when the node budget ran out."""
        if placed == n:
            self.best, self.best_offsets = high, [o for o in self.offsets if o is not None]
            return True
        # Still-unplaced buffers sit at or above `floor`, and above any placed buffer alive at
        # the same step that reaches past the floor.
        if max(high, int((np.maximum(top, floor) + remaining).max())) >= self.best:
            return True
        for offset, i in self._children(floor, last):
            self.nodes += 1
            if self.nodes > self.budget:
                return False
            end = offset + self.p.units[i]
            self.offsets[i] = offset
            done = self._node(offset, i, max(high, end), placed + 1,
                              remaining - self.p.units[i] * self.live[i],
                              np.maximum(top, end * self.live[i]), n)
            self.offsets[i] = None
            if not done:
                return False
            if self.best <= self.lower_bound:
                return True
        return True

    def _children(self, floor: int, last: int) -> list[tuple[int, int]]:
        out = []
        for i, o in enumerate(self.offsets):
            if o is not None:
                continue
            units = self.p.units[i]
            placed = [(self.offsets[j], self.offsets[j] + self.p.units[j])
                      for j in self.p.conflicts[i] if self.offsets[j] is not None]
            for c in sorted({0, *(e for _, e in placed)}):
                if c < floor or (c == floor and i < last) or c + units >= self.best:
                    continue
                if all(e <= c or s >= c + units for s, e in placed):
                    out.append((c, i))
        return sorted(out)


def exact(problem: Problem, bound: int, budget: int) -> ExactResult:
    """The smallest arena strictly below `bound` units, if the search finds one in budget."""
    return _Search(problem, bound, budget).run()
