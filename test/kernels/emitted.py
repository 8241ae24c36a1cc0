"""Runs what the production emitters write for one operator or backward rule, compiled with the
host g++.

    out = run_op(opdef, params, [x], out_shape)
    dxs = run_backward(opcode, params, saved, dy, need_dx)

emits the operator's C++ through OpDef.emit with the production ConstPool (exactly as
compile.codegen does: constants in an anonymous namespace inside mt, int8_t pointers into
memory), compiles it with -Werror against the firmware kernels, calls it on the inputs and returns
the output. The kernel parameters therefore reach the kernel through the generated struct
initialiser, not through a hand-written shim. Libraries are cached by source digest under
.pio/host-kernels, so a rerun compiles nothing.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
from pathlib import Path

import numpy as np
from host_build import KERNELS, ROOT, host_compile

from mcutrain.ops.base import BACKWARD, REGISTRY, GradRef, OpDef
from mcutrain.ops.cxx import ConstPool
from mcutrain.ops.train_math import F32, QGrad
from mcutrain.train import grad_rules

CACHE = ROOT / ".pio" / "host-kernels"
_ENTRY = "mt_emitted_run"
_GARBAGE = 0x5A  # fills gradient buffers: the emitted code must write every element it owns


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


def op_source(opdef: OpDef, params: object, n_inputs: int) -> str:
    """The translation unit for one operator: its emitted body behind an extern "C" entry point
    taking the input pointers and the output pointer."""
    pool = ConstPool()
    body = opdef.emit(params, pool, [f"in[{i}]" for i in range(n_inputs)], "out")
    return (f'#include <cstdint>\n#include "{opdef.header}"\n\nnamespace mt {{\nnamespace {{\n'
            f"{pool.definitions()}\n}}  // namespace\n\n"
            f'extern "C" void {_ENTRY}(int8_t* const* in, int8_t* out) {{\n'
            f"  (void)in;\n  (void)out;\n{body}\n}}\n\n}}  // namespace mt\n")


@functools.cache
def _compiled(source: str):
    _kernels()
    key = _digest(source.encode())
    src = CACHE / f"emitted-{key}.cc"
    CACHE.mkdir(parents=True, exist_ok=True)
    src.write_text(source)
    fn = getattr(ctypes.CDLL(str(_cached_build([src], "libemitted", key))), _ENTRY)
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = None
    return fn


def run_op(opdef: OpDef, params: object, inputs: list[np.ndarray], out_shape: tuple[int, ...],
           *, in_place: bool = False) -> np.ndarray:
    """The int8 output of the emitted code of (opdef, params) on int8 inputs. in_place runs it
    with the output pointer equal to the first input's, as the memory planner may arrange."""
    arrays = [np.ascontiguousarray(a) for a in inputs]
    if any(a.dtype != np.int8 for a in arrays):
        raise TypeError(f"run_op takes int8 inputs, got {[str(a.dtype) for a in arrays]}")
    if in_place:
        arrays[0] = arrays[0].copy()
        out = arrays[0].reshape(out_shape)
    else:
        out = np.zeros(out_shape, np.int8)
    fn = _compiled(op_source(opdef, params, len(arrays)))
    pointers = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
    fn(pointers, out.ctypes.data)
    return out


class _Arena:
    """Byte offsets of the buffers one emitted backward step uses, 16-byte aligned like the
    training planner's."""

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
        return GradRef(f"(arena + {at})", f"scales[{index}]", count), at, index


def backward_source(opcode: str, body: str, pool: ConstPool) -> str:
    headers = sorted({REGISTRY[opcode].header, *grad_rules.HEADERS})
    includes = "".join(f'#include "{h}"\n' for h in headers)
    return (f"#include <cmath>\n#include <cstdint>\n#include <cstring>\n{includes}\n"
            f"namespace mt {{\nnamespace {{\n{pool.definitions()}\n}}  // namespace\n\n"
            f'extern "C" void {_ENTRY}(int8_t* arena, float* scales) {{\n'
            f"  (void)arena;\n  (void)scales;\n{body}\n}}\n\n}}  // namespace mt\n")


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
    body = BACKWARD[opcode].emit(params, pool, [None if a is None else f"(arena + {a})"
                                                for a in saved_at],
                                 dy_ref, [None if d is None else d[0] for d in dxs], None)
    fn = _compiled(backward_source(opcode, body, pool))
    buf = np.full(arena.size, _GARBAGE, np.uint8)
    buf[dy_at:dy_at + 2 * dy.data.size] = _bytes(dy.data, "<i2")
    for x, at in zip(saved, saved_at, strict=True):
        if x is not None and at is not None:
            buf[at:at + x.size] = _bytes(x, np.int8)
    scales = np.zeros(max(arena.scales, 1), np.float32)
    scales[dy_index] = dy.scale
    fn(buf.ctypes.data, scales.ctypes.data)
    return [None if d is None else
            QGrad(buf[d[1]:d[1] + 2 * d[0].count].view("<i2").copy(), F32(scales[d[2]]))
            for d in dxs]


def _bytes(a: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).ravel(), dtype).view(np.uint8)
