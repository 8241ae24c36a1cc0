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
import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from host_build import KERNELS, ROOT, host_compile

from mcutrain.ops.base import BACKWARD, REGISTRY, GradRef, OpDef, TrainBinding, TrainEmit, TrainSlot
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


class BufferLayout:
    """Byte offsets of the buffers one emitted function uses, 16-byte aligned like the planners'.
    The buffers live in a global g_arena, as in the generated firmware: emitted code may keep
    pointers into it in function-local statics, which stays correct only for global storage."""

    def __init__(self, arena: str = "g_arena", scales: str = "g_scales") -> None:
        self.size = 0
        self.scales = 0
        self._arena, self._scales = arena, scales

    def take(self, nbytes: int) -> int:
        at = self.size
        self.size += (max(nbytes, 1) + 15) // 16 * 16
        return at

    def grad(self, count: int) -> tuple[GradRef, int, int]:
        """A gradient buffer (count int32 accumulators, int16 after requantization)."""
        at, index = self.take(4 * count), self.scales
        self.scales += 1
        return GradRef(f"({self._arena} + {at})", f"{self._scales}[{index}]", count), at, index


def _source(headers: list[str], pool: ConstPool, arena: BufferLayout, body: str) -> str:
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


def _build(headers: list[str], pool: ConstPool, arena: BufferLayout, body: str) -> _Lib:
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
    arena, pool = BufferLayout(), ConstPool()
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
    return run_train_step(opcode, params, saved, dy, dx_sizes).dxs


@dataclass(frozen=True)
class StepResult:
    dxs: list[QGrad | None]  # flat input gradients, None where not wanted
    weights: np.ndarray | None  # the trained channels after the update (slot layout)
    bias: np.ndarray | None  # the bias after the update, when it trains
    prng: int  # the xorshift state after the step


def run_train_step(opcode: str, params: object, saved: list[np.ndarray | None], dy: QGrad,
                   dx_sizes: list[int | None], slot: TrainSlot | None = None,
                   lr: float = 0.0, prng: int = 0) -> StepResult:
    """One emitted backward step of opcode: input gradients as run_backward, and with a slot
    the parameter updates too, on copies of slot.weights / slot.bias placed in the arena (the
    firmware's SRAM state), learning rate lr and xorshift state prng."""
    arena, pool = BufferLayout(), ConstPool()
    dy_ref, dy_at, dy_index = arena.grad(dy.data.size)
    dxs = [None if n is None else arena.grad(n) for n in dx_sizes]
    saved_at = [None if x is None else arena.take(x.size) for x in saved]
    state = _TrainState(arena, slot)
    if state.binding is not None:
        params = dataclasses.replace(params, train=state.binding)
    body = BACKWARD[opcode].emit(params, pool, [None if a is None else f"(g_arena + {a})"
                                                for a in saved_at],
                                 dy_ref, [None if d is None else d[0] for d in dxs],
                                 state.emit(pool))
    lib = _build([REGISTRY[opcode].header, *grad_rules.HEADERS], pool, arena,
                 state.declarations() + body)
    lib.arena[dy_at:dy_at + 2 * dy.data.size] = _bytes(dy.data, "<i2")
    for x, at in zip(saved, saved_at, strict=True):
        if x is not None and at is not None:
            lib.arena[at:at + x.size] = _bytes(x, np.int8)
    lib.scales[dy_index] = dy.scale
    state.load(lib.arena, lr, prng)
    lib.run()
    grads = [None if d is None else
             QGrad(lib.arena[d[1]:d[1] + 2 * d[0].count].view("<i2").copy(),
                   F32(lib.scales[d[2]]))
             for d in dxs]
    return StepResult(grads, *state.read(lib.arena))


class _TrainState:
    """The trained parameters, learning rate and PRNG state of one step, in the arena."""

    def __init__(self, arena: BufferLayout, slot: TrainSlot | None) -> None:
        self.slot = slot
        self.lr_at, self.prng_at = arena.take(4), arena.take(4)
        weights = None if slot is None else slot.weights
        bias = None if slot is None else slot.bias
        self.w_at = None if weights is None else arena.take(weights.nbytes)
        self.b_at = None if bias is None else arena.take(4 * bias.size)
        n = slot.n_train if slot is not None and weights is not None else 0
        self.binding = None if slot is None else TrainBinding(
            n, "g_w" if n else None, "g_b" if bias is not None else None)

    def declarations(self) -> str:
        lines = [f"  float& g_lr = *reinterpret_cast<float*>(g_arena + {self.lr_at});",
                 f"  uint32_t& g_prng = *reinterpret_cast<uint32_t*>(g_arena + {self.prng_at});",
                 "  (void)g_lr;", "  (void)g_prng;"]
        if self.w_at is not None:
            lines.append(f"  int8_t* const g_w = g_arena + {self.w_at};")
        if self.b_at is not None:
            lines.append("  int32_t* const g_b = "
                         f"reinterpret_cast<int32_t*>(g_arena + {self.b_at});")
        return "\n".join(lines) + "\n"

    def emit(self, pool: ConstPool) -> TrainEmit | None:
        slot = self.slot
        if slot is None or self.binding is None:
            return None
        return TrainEmit(
            self.binding,
            w_coef=None if slot.w_coef is None else pool.const_array("w_coef", slot.w_coef),
            bias_coef=(None if slot.bias_coef is None
                       else pool.const_array("bias_coef", slot.bias_coef)),
            lr="g_lr", prng="&g_prng",
            rounding="mt::Rounding::kStochastic" if slot.stochastic else "mt::Rounding::kNearest")

    def load(self, buf: np.ndarray, lr: float, prng: int) -> None:
        buf[self.lr_at:self.lr_at + 4] = _bytes(np.float32(lr), "<f4")
        buf[self.prng_at:self.prng_at + 4] = _bytes(np.uint32(prng), "<u4")
        if self.slot is not None and self.w_at is not None:
            w = self.slot.weights
            buf[self.w_at:self.w_at + w.nbytes] = _bytes(w, np.int8)
        if self.slot is not None and self.b_at is not None:
            b = self.slot.bias
            buf[self.b_at:self.b_at + 4 * b.size] = _bytes(b, "<i4")

    def read(self, buf: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        weights = bias = None
        if self.slot is not None and self.w_at is not None:
            w = self.slot.weights
            weights = buf[self.w_at:self.w_at + w.nbytes].view(np.int8).reshape(w.shape).copy()
        if self.slot is not None and self.b_at is not None:
            b = self.slot.bias
            bias = buf[self.b_at:self.b_at + 4 * b.size].view("<i4").astype(np.int32)
        return weights, bias, int(buf[self.prng_at:self.prng_at + 4].view("<u4")[0])


def _bytes(a: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).ravel(), dtype).view(np.uint8)
