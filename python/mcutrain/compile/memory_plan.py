"""Static arena planning from buffer lifetimes (no allocator on the device).

Three calls, like TFLite Micro's planner but run on the host: add a buffer with its size and the
first and last step that use it, then read back each offset and the arena size. Placement is
greedy: biggest buffers first, each at the lowest aligned offset that does not collide with a
buffer already placed whose lifetime overlaps. Steps are operator positions in the schedule; a
model input is alive from step -1 (written before the first operator) and a model output until
the step after the last operator (read after the run).
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def live_at(self, step: int) -> list[Placement]:
        return [p for p in self.placements().values() if p.first <= step <= p.last]

    def peak_step(self) -> int:
        """The step whose live buffers add up to the most bytes (what dominates a too-big model)."""
        steps = {s for r in self._requests for s in (r[2], r[3])}
        return max(steps, key=lambda s: sum(p.size for p in self.live_at(s)), default=0)

    def _align(self, n: int) -> int:
        return (n + self.alignment - 1) // self.alignment * self.alignment

    def _place(self) -> dict[str, Placement]:
        placed: list[Placement] = []
        order = sorted(self._requests, key=lambda r: (-r[1], r[2], r[0]))
        for name, size, first, last in order:
            offset = 0
            for other in sorted((p for p in placed if p.lives_with(first, last)),
                                key=lambda p: p.offset):
                if offset + size <= other.offset:
                    break
                offset = max(offset, self._align(other.end))
            placed.append(Placement(name, size, first, last, offset))
        return {p.name: p for p in sorted(placed, key=lambda p: (p.offset, p.first))}
