"""Runs what the production emitters write for one operator or backward rule, compiled with the
host g++.

    out = run_op(opdef, params, [x], out_shape)
    dxs = run_backward(opcode, params, saved, dy, dx_sizes)

emit the C++ through OpDef.emit / BackwardDef.emit with the production ConstPool, laid out as
compile.codegen lays out a model (constants and a global g_arena in an anonymous namespace inside
mt, every tensor an offset into the arena), compile it with -Werror against the firmware kernels,
copy the inputs into the arena, run it and read the outputs back. The kernel parameters therefore
reach the kernel through the generated struct initialiser, not through a hand-written shim.
Libraries are cached by source digest under .pio/host-kernels, so a rerun compiles nothing.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from host_build import KERNELS, ROOT, host_compile

from mcutrain.ops.base import BACKWARD, REGISTRY, GradRef, OpDef
from mcutrain.ops.cxx import ConstPool
from mcutrain.ops.train_math import F32, QGrad
from mcutrain.train import grad_rules

CACHE = ROOT / ".pio" / "host-kernels"
_ENTRY = "mt_emitted_run"
_GARBAGE = 0x5A  # fills the arena before each run: emitted code must write every byte it owns


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:16]


def _cached_build(sources: list[Path], name: str, key: str) -> Path:
    """Compiles sources into CACHE/<name>-<key>.so unless it is there already; the rename makes
    a concurrent build by another test process harmless."""
    CACHE.mkdir(parents=True, exist_ok=True)
    lib = CACHE / f"{name}-{key}.so"
    if not lib.exists():
        partial = CACHE / f"{name}-{key}.{os.getpid()}.tmp.so"
        host_compile(sources, partial)
        os.replace(partial, lib)
    return lib


@functools.cache
def _kernels() -> ctypes.CDLL:
    """Every firmware kernel in one library, loaded RTLD_GLOBAL so the emitted libraries (which
    leave the kernels undefined) bind to it."""
    files = sorted(KERNELS.glob("*.cc")) + sorted(KERNELS.glob("*.h"))
    key = _digest(*(f.name.encode() + f.read_bytes() for f in files))
    lib = _cached_build(sorted(KERNELS.glob("*.cc")), "libmt-kernels", key)
    return ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)


class _Arena:
    """Byte offsets of the buffers one emitted function uses, 16-byte aligned like the planners'.
    The buffers live in a global g_arena, as in the generated firmware: emitted code may keep
    pointers into it in function-local statics, which stays correct only for global storage."""

    def __init__(self) -> None:
        self.size = 0
        self.scales = 0

    def take(self, nbytes: int) -> int:
        at = self.size
        self.size += (max(nbytes, 1) + 15) // 16 * 16
        return at

    def grad(self, count: int) -> tuple[GradRef, int, int]:
        """A gradient buffer (count int32 accumulators, int16 after requantization)."""
        at, index = self.take(4 * count), self.scales
        self.scales += 1
        return GradRef(f"(g_arena + {at})", f"g_scales[{index}]", count), at, index


def _source(headers: list[str], pool: ConstPool, arena: _Arena, body: str) -> str:
    """One translation unit laid out like the generated model source: constants and the arena in
    an anonymous namespace inside mt, the emitted statements in one extern "C" function."""
    includes = "".join(f'#include "{h}"\n' for h in sorted(set(headers)))
    return (f"#include <cmath>\n#include <cstdint>\n#include <cstring>\n{includes}\n"
            f"namespace mt {{\nnamespace {{\n\n"
            f"alignas(16) int8_t g_arena[{max(arena.size, 16)}];\n"
            f"float g_scales[{max(arena.scales, 1)}];\n\n{pool.definitions()}\n"
            f"}}  // namespace\n\n"
            f'extern "C" int8_t* {_ENTRY}_arena() {{ return g_arena; }}\n'
            f'extern "C" float* {_ENTRY}_scales() {{ return g_scales; }}\n'
            f'extern "C" void {_ENTRY}() {{\n{body}\n}}\n\n}}  // namespace mt\n')


@dataclass(frozen=True)
class _Lib:
    run: Callable[[], None]
    arena: np.ndarray  # uint8 view of g_arena
    scales: np.ndarray  # float32 view of g_scales


@functools.cache
def _compiled(source: str, arena_bytes: int, n_scales: int) -> _Lib:
    _kernels()
    key = _digest(source.encode())
    CACHE.mkdir(parents=True, exist_ok=True)
    src = CACHE / f"emitted-{key}.cc"
    src.write_text(source)
    lib = ctypes.CDLL(str(_cached_build([src], "libemitted", key)))
    run = getattr(lib, _ENTRY)
    run.argtypes, run.restype = [], None
    views = []
    for suffix, ctype, count in (("_arena", ctypes.c_uint8, max(arena_bytes, 16)),
                                 ("_scales", ctypes.c_float, max(n_scales, 1))):
        fn = getattr(lib, _ENTRY + suffix)
        fn.restype = ctypes.POINTER(ctype)
        views.append(np.ctypeslib.as_array(fn(), (count,)))
    return _Lib(run, views[0], views[1])


def _build(headers: list[str], pool: ConstPool, arena: _Arena, body: str) -> _Lib:
    lib = _compiled(_source(headers, pool, arena, body), arena.size, arena.scales)
    lib.arena[:] = _GARBAGE
    lib.scales[:] = 0
    return lib


def run_op(opdef: OpDef, params: object, inputs: list[np.ndarray], out_shape: tuple[int, ...],
           *, in_place: bool = False) -> np.ndarray:
    """The int8 output of the emitted code of (opdef, params) on int8 inputs. in_place puts the
    output at the first input's address, as the memory planner may arrange."""
    arrays = [np.ascontiguousarray(a) for a in inputs]
    if any(a.dtype != np.int8 for a in arrays):
        raise TypeError(f"run_op takes int8 inputs, got {[str(a.dtype) for a in arrays]}")
    arena, pool = _Arena(), ConstPool()
    offsets = [arena.take(a.nbytes) for a in arrays]
    n_out = int(np.prod(out_shape))
    out_at = offsets[0] if in_place else arena.take(n_out)
    body = opdef.emit(params, pool, [f"(g_arena + {at})" for at in offsets],
                      f"(g_arena + {out_at})")
    lib = _build([opdef.header], pool, arena, body)
    for a, at in zip(arrays, offsets, strict=True):
        lib.arena[at:at + a.nbytes] = _bytes(a, np.int8)
    lib.run()
    return lib.arena[out_at:out_at + n_out].view(np.int8).reshape(out_shape).copy()


def run_backward(opcode: str, params: object, saved: list[np.ndarray | None], dy: QGrad,
                 dx_sizes: list[int | None]) -> list[QGrad | None]:
    """The input gradients the emitted backward rule of opcode computes (no trained parameters):
    saved holds the forward inputs the rule keeps (None where not kept), dy the output gradient,
    dx_sizes the element count of each dynamic input's gradient (None: not wanted); one flat
    QGrad per dynamic input, None where not wanted."""
    arena, pool = _Arena(), ConstPool()
    dy_ref, dy_at, dy_index = arena.grad(dy.data.size)
    dxs = [None if n is None else arena.grad(n) for n in dx_sizes]
    saved_at = [None if x is None else arena.take(x.size) for x in saved]
    body = BACKWARD[opcode].emit(params, pool, [None if a is None else f"(g_arena + {a})"
                                                for a in saved_at],
                                 dy_ref, [None if d is None else d[0] for d in dxs], None)
    lib = _build([REGISTRY[opcode].header, *grad_rules.HEADERS], pool, arena, body)
    lib.arena[dy_at:dy_at + 2 * dy.data.size] = _bytes(dy.data, "<i2")
    for x, at in zip(saved, saved_at, strict=True):
        if x is not None and at is not None:
            lib.arena[at:at + x.size] = _bytes(x, np.int8)
    lib.scales[dy_index] = dy.scale
    lib.run()
    return [None if d is None else
            QGrad(lib.arena[d[1]:d[1] + 2 * d[0].count].view("<i2").copy(),
                  F32(lib.scales[d[2]]))
            for d in dxs]


def _bytes(a: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).ravel(), dtype).view(np.uint8)
