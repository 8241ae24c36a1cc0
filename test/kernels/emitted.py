"""The one kernel test harness: runs what the production emitters write, compiled with the host
g++ (-Werror, the firmware's language flags: host_build.py), for any operator, backward rule or
training-codegen fragment.

    out = run_op(opdef, params, [x], out_shape)            # an operator's forward
    dxs = run_backward(opcode, params, saved, dy, dx_sizes)  # a backward rule
    e = Emission(*grad_rules.HEADERS)                        # anything else the codegen emits
    g = e.grad(n, dy)  # likewise e.array(values, dtype), e.space(nbytes)
    dx = e.run(grad_rules.emit_mask_apply(g.ref, bits.ptr)).grad(g)

The emitters (OpDef.emit, BackwardDef.emit, and the training codegen's grad_rules.emit_* and
float_classifier.emit_*: masks, losses, fan-out sum, fp32 classifier) write C++ with the
production ConstPool, laid out as compile.codegen lays out a model (constants and a global
g_arena in an anonymous namespace inside mt, every tensor an offset into the arena); the harness
compiles it against the firmware kernels, copies the inputs into the arena, runs it and reads the
outputs back. The kernel parameters therefore reach the kernel through the generated code, not
through a hand-written shim. Libraries are cached by source digest under .pio/host-kernels, so a
rerun compiles nothing.
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


@dataclass(frozen=True)
class Buffer:
    """One arena buffer of an Emission: its C++ expressions and where to read it back."""

    at: int
    nbytes: int

    @property
    def ptr(self) -> str:
        """The buffer's address as int8_t*, as the generated code names activations."""
        return f"(g_arena + {self.at})"

    def as_ptr(self, ctype: str) -> str:
        return f"reinterpret_cast<{ctype}*>(g_arena + {self.at})"

    def lvalue(self, ctype: str) -> str:
        """The buffer's first element as a `ctype` lvalue (a loss, a label, a scale...)."""
        return f"(*{self.as_ptr(ctype)})"


@dataclass(frozen=True)
class Grad:
    """A gradient buffer of an Emission: the GradRef emitters take, and where it lives."""

    ref: GradRef
    at: int
    index: int  # its scale's slot in g_scales


class Emission:
    """The buffers and constants of one emitted fragment, for emitters that are not an OpDef
    (training codegen: masks, losses, fan-out, fp32 classifier): put the inputs in the arena,
    hand the emitter the buffers' expressions, run() its code and read the outputs back. Every
    byte not placed is garbage (_GARBAGE) when the code starts."""

    def __init__(self, *headers: str) -> None:
        self.headers = list(headers)
        self.arena, self.pool = BufferLayout(), ConstPool()
        self._loads: list[tuple[int, np.ndarray]] = []
        self._scales: list[tuple[int, float]] = []

    def space(self, nbytes: int) -> Buffer:
        return Buffer(self.arena.take(nbytes), nbytes)

    def array(self, a: np.ndarray, dtype: object) -> Buffer:
        """A copy of a (converted to dtype, little-endian) in the arena."""
        raw = _bytes(a, dtype)
        buf = self.space(raw.size)
        self._loads.append((buf.at, raw))
        return buf

    def grad(self, count: int, value: QGrad | None = None) -> Grad:
        """A gradient buffer of count elements, holding value (int16 data and scale) if given."""
        ref, at, index = self.arena.grad(count)
        if value is not None:
            self._loads.append((at, _bytes(value.data, "<i2")))
            self._scales.append((index, float(value.scale)))
        return Grad(ref, at, index)

    def run(self, body: str) -> Ran:
        lib = _build(self.headers, self.pool, self.arena, body)
        for at, raw in self._loads:
            lib.arena[at:at + raw.size] = raw
        for index, scale in self._scales:
            lib.scales[index] = scale
        lib.run()
        return Ran(lib.arena.copy(), lib.scales.copy())


@dataclass(frozen=True)
class Ran:
    """The arena and gradient scales after an Emission ran."""

    arena: np.ndarray
    scales: np.ndarray

    def array(self, buf: Buffer, dtype: object, count: int | None = None) -> np.ndarray:
        dt = np.dtype(dtype)
        n = buf.nbytes // dt.itemsize if count is None else count
        return self.arena[buf.at:buf.at + n * dt.itemsize].view(dt).copy()

    def scalar(self, buf: Buffer, dtype: object) -> object:
        return self.array(buf, dtype, 1)[0]

    def grad(self, g: Grad) -> QGrad:
        """The int16 gradient (after requantization) and its float32 scale."""
        data = self.arena[g.at:g.at + 2 * g.ref.count].view("<i2").copy()
        return QGrad(data, F32(self.scales[g.index]))


def run_op(opdef: OpDef, params: object, inputs: list[np.ndarray], out_shape: tuple[int, ...],
           *, in_place: bool = False) -> np.ndarray:
    """The int8 output of the emitted code of (opdef, params) on int8 inputs. in_place puts the
    output at the first input's address, as the memory planner may arrange."""
    arrays = [np.ascontiguousarray(a) for a in inputs]
    if any(a.dtype != np.int8 for a in arrays):
        raise TypeError(f"run_op takes int8 inputs, got {[str(a.dtype) for a in arrays]}")
    e = Emission(opdef.header)
    bufs = [e.array(a, np.int8) for a in arrays]
    n_out = int(np.prod(out_shape))
    out = Buffer(bufs[0].at, n_out) if in_place else e.space(n_out)
    ran = e.run(opdef.emit(params, e.pool, [b.ptr for b in bufs], out.ptr))
    return ran.array(out, np.int8).reshape(out_shape)


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
