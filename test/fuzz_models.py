"""Seeded mutants of real .tflite files for the reader's fuzz tests: bit flips, overwrites of
real fields with edge values, truncations and vtable corruption."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mcutrain.frontend.flatbuffer_check import layout

_EDGE_INTS = [0, 1, -1, 2, 3, 7, 127, 128, 255, 256, -128, -129, 2**15, 2**31 - 1, -(2**31),
              2**16 + 1, 1000, 10**6]
_EDGE_FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-40, 1e-30, 1e30,
                -1.0, 3.4e38, 1.0, 0.5, 2.0**-20]
KINDS = ("bitflip", "field", "truncate", "vtable")


@dataclass(frozen=True)
class Mutant:
    source: str
    kind: str
    seed: int
    data: bytes

    def label(self) -> str:
        return f"{self.source} {self.kind} seed {self.seed}"


def _field(rng: np.random.Generator, data: bytearray, pos: int, width: int) -> None:
    if width == 1:
        data[pos] = int(rng.choice([0, 1, 2, 3, 5, 6, 9, 17, 127, 128, 255, 0x7F, 0x80]))
    elif width == 2:
        struct.pack_into("<H", data, pos, int(rng.integers(0, 2**16)))
    elif width == 4:
        if rng.random() < 0.3:
            struct.pack_into("<f", data, pos, float(rng.choice(_EDGE_FLOATS)))
        else:
            value = int(rng.choice(_EDGE_INTS))
            struct.pack_into("<I", data, pos, value % 2**32)
    else:
        value = int(rng.choice(_EDGE_INTS + [2**40, -(2**40), 2**63 - 1]))
        struct.pack_into("<Q", data, pos, value % 2**64)


def mutate(source: str, original: bytes, kind: str, seed: int) -> Mutant:
    rng = np.random.default_rng(seed)
    data = bytearray(original)
    if kind == "bitflip":
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(0, len(data)))
            data[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == "field":
        fields = layout(original).scalars
        for _ in range(int(rng.integers(1, 3))):
            pos, width = fields[int(rng.integers(0, len(fields)))]
            _field(rng, data, pos, width)
    elif kind == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    else:
        vtables = layout(original).vtables
        vt = vtables[int(rng.integers(0, len(vtables)))]
        vsize = struct.unpack_from("<H", data, vt)[0]
        slot = int(rng.integers(0, max(vsize // 2, 2) + 2))
        value = int(rng.choice([0, 1, 2, 4, 6, 8, 12, 16, 40, 255, 0xFFFF, vsize + 2, vsize - 2]))
        if vt + 2 * slot + 2 <= len(data):
            struct.pack_into("<H", data, vt + 2 * slot, value % 2**16)
    return Mutant(source, kind, seed, bytes(data))


def mutants(models: dict[str, bytes], count: int, seed: int = 0) -> Iterator[Mutant]:
    """`count` mutants spread over the models and mutation kinds, reproducible from `seed`."""
    names = sorted(models)
    for i in range(count):
        name = names[i % len(names)]
        kind = KINDS[(i // len(names)) % len(KINDS)]
        yield mutate(name, models[name], kind, seed * 1_000_003 + i)
