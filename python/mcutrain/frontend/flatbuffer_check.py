"""Structural check of a .tflite flatbuffer before anything reads it.

Python's flatbuffers has no verifier, and its accessors happily read past a table or a vector
when offsets are corrupt. This walks the tables of TFLite's schema that a model carries, the way
TFLite's own verifier does before it builds an interpreter: every table's vtable lies inside the
file, has an even size and fields inside the table; every offset, vector and string lies inside
the file, aligned, strings NUL-terminated. Unions the reader does not interpret, and tables it
never reads, are checked as tables (header and field bounds) without descending further.

Raises FlatbufferError (a ValueError) naming the first defect; the reader turns it into a
ModelError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field


class FlatbufferError(ValueError):
    pass


# A field kind: a scalar size in bytes (1, 2, 4, 8), or one of the offset kinds below.
@dataclass(frozen=True)
class Vec:
    elem: int  # element size in bytes


@dataclass(frozen=True)
class Str:
    pass


@dataclass(frozen=True)
class Tab:
    spec: Spec | None  # None: check the table itself, not its fields' contents


@dataclass(frozen=True)
class VecTab:
    spec: Spec | None


@dataclass(frozen=True)
class Union:
    type_slot: int  # field id of the union's type byte
    specs: dict[int, Spec] = field(default_factory=dict)


Kind = int | Vec | Str | Tab | VecTab | Union
Spec = dict[int, Kind]  # field id -> kind; ids not listed are only bounds-checked

_I8, _I16, _I32, _I64 = 1, 2, 4, 8

CONV2D: Spec = {0: _I8, 1: _I32, 2: _I32, 3: _I8, 4: _I32, 5: _I32, 6: _I8}
DEPTHWISE: Spec = {0: _I8, 1: _I32, 2: _I32, 3: _I32, 4: _I8, 5: _I32, 6: _I32}
FULLY_CONNECTED: Spec = {0: _I8, 1: _I8, 2: _I8, 3: _I8, 4: _I8}
POOL2D: Spec = {0: _I8, 1: _I32, 2: _I32, 3: _I32, 4: _I32, 5: _I8}
ADD: Spec = {0: _I8, 1: _I8}
CONCATENATION: Spec = {0: _I32, 1: _I8}
RESHAPE: Spec = {0: Vec(4)}
SOFTMAX: Spec = {0: _I32}
REDUCER: Spec = {0: _I8}
# BuiltinOptions union type codes (schema.fbs) of the options the reader interprets.
# Field-less options (PAD, PADV2, DEQUANTIZE, QUANTIZE) are fully checked by the table check.
OPTIONS: dict[int, Spec] = {1: CONV2D, 2: DEPTHWISE, 5: POOL2D, 8: FULLY_CONNECTED,
                            9: SOFTMAX, 10: CONCATENATION, 11: ADD, 17: RESHAPE, 27: REDUCER,
                            22: {}, 43: {}, 38: {}, 89: {}}

QUANTIZATION: Spec = {0: Vec(4), 1: Vec(4), 2: Vec(4), 3: Vec(8), 4: _I8,
                      5: Union(4), 6: _I32}
TENSOR: Spec = {0: Vec(4), 1: _I8, 2: _I32, 3: Str(), 4: Tab(QUANTIZATION), 5: _I8,
                6: Tab(None), 7: Vec(4), 8: _I8, 9: VecTab(None)}
OPERATOR: Spec = {0: _I32, 1: Vec(4), 2: Vec(4), 3: _I8, 4: Union(3, OPTIONS), 5: Vec(1),
                  6: _I8, 7: Vec(1), 8: Vec(4), 9: _I64, 10: _I64, 11: _I8, 12: Union(11)}
SUBGRAPH: Spec = {0: VecTab(TENSOR), 1: Vec(4), 2: Vec(4), 3: VecTab(OPERATOR), 4: Str()}
OPERATOR_CODE: Spec = {0: _I8, 1: Str(), 2: _I32, 3: _I32}
BUFFER: Spec = {0: Vec(1), 1: _I64, 2: _I64}
METADATA: Spec = {0: Str(), 1: _I32}
TENSOR_MAP: Spec = {0: Str(), 1: _I32}
SIGNATURE: Spec = {0: VecTab(TENSOR_MAP), 1: VecTab(TENSOR_MAP), 2: Str(), 3: Str(), 4: _I32}
MODEL: Spec = {0: _I32, 1: VecTab(OPERATOR_CODE), 2: VecTab(SUBGRAPH), 3: Str(),
               4: VecTab(BUFFER), 5: Vec(4), 6: VecTab(METADATA), 7: VecTab(SIGNATURE)}


class _Checker:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        # Offsets may make many vectors share one table; a real model has at most one table per
        # four bytes, so more visits than that mean a crafted file (TFLite caps tables too).
        self.budget = len(data) // 4 + 16
        self.scalars: list[tuple[int, int]] = []  # (position, width) of each scalar checked
        self.vtables: list[int] = []

    def fail(self, what: str, pos: int) -> FlatbufferError:
        return FlatbufferError(f"{what} at byte {pos}")

    def u16(self, pos: int) -> int:
        return struct.unpack_from("<H", self.data, pos)[0]

    def u32(self, pos: int) -> int:
        return struct.unpack_from("<I", self.data, pos)[0]

    def within(self, pos: int, length: int, what: str, align: int = 1) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise self.fail(f"{what} runs past the end of the file", pos)
        if pos % align:
            raise self.fail(f"{what} is misaligned", pos)

    def follow(self, pos: int, what: str) -> int:
        """The target of the uoffset stored at `pos`."""
        self.within(pos, 4, what, 4)
        target = pos + self.u32(pos)
        self.within(target, 4, what, 4)
        return target

    def table(self, pos: int, spec: Spec | None, what: str) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise self.fail("too many tables for the file size", pos)
        self.within(pos, 4, what, 4)
        vtable = pos - struct.unpack_from("<i", self.data, pos)[0]
        self.within(vtable, 4, f"{what} vtable", 2)
        self.vtables.append(vtable)
        vsize, tsize = self.u16(vtable), self.u16(vtable + 2)
        if vsize < 4 or vsize % 2:
            raise self.fail(f"{what} vtable has size {vsize}", vtable)
        self.within(vtable, vsize, f"{what} vtable", 2)
        if tsize < 4:
            raise self.fail(f"{what} has size {tsize}", pos)
        self.within(pos, tsize, what)
        offsets = [self.u16(vtable + 4 + 2 * i) for i in range((vsize - 4) // 2)]
        for field_id, offset in enumerate(offsets):
            if offset == 0:
                continue
            kind = spec.get(field_id) if spec is not None else None
            width = kind if isinstance(kind, int) else (1 if kind is None else 4)
            if offset < 4 or offset + width > tsize:
                raise self.fail(f"{what} field {field_id} lies outside its table", pos)
            self.field(pos + offset, kind, offsets, pos, f"{what} field {field_id}")

    def field(self, pos: int, kind: Kind | None, offsets: list[int], table: int,
              what: str) -> None:
        if kind is None:
            return
        if isinstance(kind, int):
            self.within(pos, kind, what, kind)
            self.scalars.append((pos, kind))
        elif isinstance(kind, Str):
            start = self.follow(pos, what)
            length = self.u32(start)
            self.within(start + 4, length + 1, what)
            if self.data[start + 4 + length] != 0:
                raise self.fail(f"{what} (a string) has no terminating NUL", start)
        elif isinstance(kind, Vec):
            start = self.follow(pos, what)
            count = self.u32(start)
            self.within(start + 4, count * kind.elem, what, kind.elem)
            self.scalars.extend((start + 4 + i * kind.elem, kind.elem)
                                for i in range(min(count, 64)))
        elif isinstance(kind, Tab):
            self.table(self.follow(pos, what), kind.spec, what)
        elif isinstance(kind, VecTab):
            start = self.follow(pos, what)
            count = self.u32(start)
            self.within(start + 4, 4 * count, what, 4)
            for i in range(count):
                self.table(self.follow(start + 4 + 4 * i, what), kind.spec, f"{what}[{i}]")
        else:
            type_offset = offsets[kind.type_slot] if kind.type_slot < len(offsets) else 0
            union_type = self.data[table + type_offset] if type_offset else 0
            self.table(self.follow(pos, what), kind.specs.get(union_type), what)


def check_model(data: bytes) -> None:
    """Raise FlatbufferError unless `data` is a structurally sound TFLite model flatbuffer."""
    checker = _Checker(data)
    if len(data) >= 2**31:
        raise FlatbufferError("files of 2 GB or more are not supported")
    checker.table(checker.follow(0, "model root"), MODEL, "model")


@dataclass(frozen=True)
class Layout:
    """Where a sound model keeps its scalars and vtables (for mutation tests)."""

    scalars: list[tuple[int, int]]
    vtables: list[int]


def layout(data: bytes) -> Layout:
    checker = _Checker(data)
    checker.table(checker.follow(0, "model root"), MODEL, "model")
    return Layout(checker.scalars, sorted(set(checker.vtables)))
