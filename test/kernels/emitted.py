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

from mcutrain.ops.base import (
    BACKWARD,
    REGISTRY,
    GradRef,
    KernelVariant,
    OpDef,
    StepContext,
    TrainBinding,
    TrainEmit,
    TrainSlot,
)
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

    def __init__(self) -> None:
        self.size = 0
        self.scales = 0

    def take(self, nbytes: int) -> int:
        at = self.size
        self.size += (max(nbytes, 1) + 15) // 16 * 16
        return at

    def grad(self, count: int, element_bytes: int = 4) -> tuple[GradRef, int, int]:
        """A gradient buffer (count int32 accumulators, int16 after requantization; 2 bytes per
        element for a rule that writes int16 straight away, as the training planner sizes it)."""
        at, index = self.take(element_bytes * count), self.scales
        self.scales += 1
        return GradRef(f"(g_arena + {at})", f"g_scales[{index}]", count), at, index


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
    """The buffers and constants of one emitted fragment: put the inputs in the arena, hand the
    emitter the buffers' expressions, run() its code and read the outputs back. Every byte not
    placed is garbage (_GARBAGE) when the code starts. run_op and run_train_step are built on
    it; tests use it directly for emitters that are not an OpDef or BackwardDef (the training
    codegen's masks, losses, fan-out sum, fp32 classifier)."""

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

    def grad(self, count: int, value: QGrad | None = None, element_bytes: int = 4) -> Grad:
        """A gradient buffer of count elements, holding value (int16 data and scale) if given."""
        ref, at, index = self.arena.grad(count, element_bytes)
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
           *, in_place: bool = False, variant: KernelVariant | None = None,
           trained: tuple[np.ndarray | None, np.ndarray | None] | None = None,
           roomy: bool = False, n_train: int | None = None) -> np.ndarray:
    """The int8 output of the emitted code of (opdef, params) on int8 inputs. in_place puts the
    output at the first input's address, as the memory planner may arrange. variant: the kernel
    variant to emit (the reference when None), given the scratch its scratch_bytes asks for, or
    with `roomy` the fastest of its roomy sizes (as the planner gives where it has the room).
    trained: (weights, bias) of a training layer, as the firmware's SRAM state holds them
    (weights: the first channels' rows, None for none; bias: int32, None when it does not
    train); the forward then reads them there. n_train: the trained channels, when the weights'
    first axis is not them (a depthwise layer's copy is [kh, kw, n_train])."""
    arrays = [np.ascontiguousarray(a) for a in inputs]
    if any(a.dtype != np.int8 for a in arrays):
        raise TypeError(f"run_op takes int8 inputs, got {[str(a.dtype) for a in arrays]}")
    e = Emission(opdef.header, *([variant.header] if variant and variant.header else []))
    bufs = [e.array(a, np.int8) for a in arrays]
    declarations = ""
    if trained is not None:
        weights, bias = trained
        n = 0 if weights is None else int(weights.shape[0] if n_train is None else n_train)
        if n:
            declarations += f"  int8_t* const g_w = {e.array(weights, np.int8).ptr};\n"
        if bias is not None:
            b = e.array(np.asarray(bias, "<i4"), "<i4")
            declarations += f"  int32_t* const g_b = {b.as_ptr('int32_t')};\n"
        params = dataclasses.replace(params, train=TrainBinding(
            n, "g_w" if n else None, "g_b" if bias is not None else None))
    n_out = int(np.prod(out_shape))
    out = Buffer(bufs[0].at, n_out) if in_place else e.space(n_out)
    ctx: object = e.pool
    if variant is not None:
        size = variant.scratch_bytes(params)
        if roomy:
            size = max([size, *variant.roomy_scratch_bytes(params)[:1]])
        scratch = e.space(size).ptr if size else None
        ctx = StepContext(e.pool, variant, scratch, size)
    ran = e.run(declarations + opdef.emit(params, ctx, [b.ptr for b in bufs], out.ptr))
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


@dataclass(frozen=True)
class BroadcastDy:
    """An output gradient given as a view (training_graph.Broadcast): `source` (one value per
    channel) at each of `count` pixels, under the packed mask `bits` of the whole output (None:
    no mask), scale source.scale / count."""

    source: QGrad
    count: int
    bits: np.ndarray | None = None


def _dy_ref(e: Emission, dy: QGrad | BroadcastDy) -> GradRef:
    if isinstance(dy, QGrad):
        return e.grad(dy.data.size, dy).ref
    source = e.grad(dy.source.data.size, dy.source).ref
    bits = None if dy.bits is None else e.array(dy.bits, np.uint8).ptr
    return grad_rules.broadcast_view(source, dy.count, dy.source.data.size, bits)


def run_train_step(opcode: str, params: object, saved: list[np.ndarray | None],
                   dy: QGrad | BroadcastDy,
                   dx_sizes: list[int | None], slot: TrainSlot | None = None,
                   lr: float = 0.0, prng: int = 0,
                   variant: KernelVariant | None = None,
                   scratch_bytes: int | None = None) -> StepResult:
    """One emitted backward step of opcode: input gradients as run_backward, and with a slot
    the parameter updates too, on copies of slot.weights / slot.bias placed in the arena (the
    firmware's SRAM state), learning rate lr and xorshift state prng. dy may be a BroadcastDy
    for a rule that reads dy through a view (BackwardDef.broadcast_dy). variant: the backward
    kernel variant to emit (the reference when None), given the scratch its scratch_bytes asks
    for (or scratch_bytes), with guard bytes after it that it must not write."""
    e = Emission(REGISTRY[opcode].header, *grad_rules.HEADERS,
                 *([variant.header] if variant and variant.header else []))
    dy_ref = _dy_ref(e, dy)
    # A rule that writes int16 straight away gets 2 bytes per element, as the planner gives it,
    # with 16 guard bytes after each: writing past them would corrupt a neighbour in the arena.
    direct = BACKWARD[opcode].int16_dx
    dxs = [None if n is None else e.grad(n, element_bytes=2 if direct else 4) for n in dx_sizes]
    guards = [e.space(16) if direct and d is not None else None for d in dxs]
    saved_bufs = [None if x is None else e.array(x, np.int8) for x in saved]
    state = _TrainState(e, slot, lr, prng)
    if state.binding is not None:
        params = dataclasses.replace(params, train=state.binding)
    ctx: object = e.pool
    scratch_guard = None
    if variant is not None:
        size = variant.scratch_bytes(params) if scratch_bytes is None else scratch_bytes
        scratch = e.space(size).ptr if size else None
        scratch_guard = e.space(16)
        ctx = StepContext(e.pool, variant, scratch, size)
    body = BACKWARD[opcode].emit(params, ctx, [None if b is None else b.ptr for b in saved_bufs],
                                 dy_ref, [None if d is None else d.ref for d in dxs],
                                 state.emit(e.pool))
    ran = e.run(state.declarations() + body)
    if scratch_guard is not None:
        past = ran.arena[scratch_guard.at:scratch_guard.at + scratch_guard.nbytes]
        assert np.all(past == _GARBAGE), f"{opcode} backward wrote past its scratch"
    for d, guard in zip(dxs, guards, strict=True):
        if d is not None and guard is not None:
            past = ran.arena[d.at + 2 * d.ref.count:guard.at + guard.nbytes]
            assert np.all(past == _GARBAGE), (
                f"{opcode} backward wrote past the {2 * d.ref.count} bytes of its int16 dx")
    return StepResult([None if d is None else ran.grad(d) for d in dxs], *state.read(ran))


class _TrainState:
    """The trained parameters, learning rate and PRNG state of one step, in the arena."""

    def __init__(self, e: Emission, slot: TrainSlot | None, lr: float, prng: int) -> None:
        self.slot = slot
        self.lr, self.prng = e.array(np.float32(lr), "<f4"), e.array(np.uint32(prng), "<u4")
        weights = None if slot is None else slot.weights
        bias = None if slot is None else slot.bias
        self.w = None if weights is None else e.array(weights, np.int8)
        self.b = None if bias is None else e.array(bias, "<i4")
        n = slot.n_train if slot is not None and weights is not None else 0
        self.binding = None if slot is None else TrainBinding(
            n, "g_w" if n else None, "g_b" if bias is not None else None)

    def declarations(self) -> str:
        lines = [f"  float& g_lr = {self.lr.lvalue('float')};",
                 f"  uint32_t& g_prng = {self.prng.lvalue('uint32_t')};",
                 "  (void)g_lr;", "  (void)g_prng;"]
        if self.w is not None:
            lines.append(f"  int8_t* const g_w = {self.w.ptr};")
        if self.b is not None:
            lines.append(f"  int32_t* const g_b = {self.b.as_ptr('int32_t')};")
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

    def read(self, ran: Ran) -> tuple[np.ndarray | None, np.ndarray | None, int]:
        weights = bias = None
        if self.slot is not None and self.w is not None:
            weights = ran.array(self.w, np.int8).reshape(self.slot.weights.shape)
        if self.b is not None:
            bias = ran.array(self.b, "<i4").astype(np.int32)
        return weights, bias, int(ran.scalar(self.prng, "<u4"))


def _bytes(a: np.ndarray, dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a).ravel(), dtype).view(np.uint8)
