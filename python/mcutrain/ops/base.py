"""The operator library's contract: one module per TFLite operator under mcutrain.ops.

Each module registers an OpDef whose four core functions follow TFLite Micro's Prepare/Eval split
but with Prepare run on the host at compile time ("prepare once, run blind"):

- prepare(op, graph) -> params: validate the operator and compute every constant the kernel needs
  (requantization significands and shifts, clamp bounds, padding, shapes, weights). Raises
  graph.ModelError with a one-line message for anything unsupported.
- reference(params, inputs) -> np.ndarray: the numpy integer reference. `inputs` are the operator's
  dynamic (non-constant) inputs in order, as int8 arrays of their TFLite shapes. Must equal TFLite's
  reference kernels bit for bit.
- emit(params, ctx, inputs, output) -> str: C++ statements that call the firmware kernel. `inputs`
  and `output` are C++ expressions of type int8_t* (pointers into the arena); constants go to flash
  through ctx.const_array().
- macs(params) -> int: multiply-accumulates of one forward pass (0 for data movement).
- options: the OptionsDef of its flatbuffer options table (its BuiltinOptions type and the
  parser into op.options, frontend/options.py), which register() declares to the reader.
- float_forward(ctx, step, prepared, ins) -> the float (TensorFlow) forward the fp32 training
  reference runs, from the op's options and ctx.variable(step, "weights"/"bias"); helpers in
  ops/float_common.py.

The same record carries the operator's training facts (docs/training.md), so the training graph
and its code generators ask the registry instead of lists of opcode names:

- backward: its own BackwardDef (gradient rule), None when it has none (yet) or its gradient is
  the identity (below).
- identity_gradient: the identity rule (identity_backward below) when every dynamic input's
  gradient is the output gradient unchanged (RESHAPE, QUANTIZE, ADD): its emit copies dy into
  each wanted dx, its reference hands dy on. OpDef.gradient is whichever of the two it has, so
  the training walkers call one rule for every backward step.
- pass_through: the output holds the single input's values (RESHAPE, QUANTIZE), so a loss may
  look through it to the operator producing its input.
- fused_activation: the output passes a fused activation (options["activation"]) whose gradient
  is a 1-bit mask kept from the forward pass.
- trainable: a Trainable for the weighted operators (what a training scheme calls its layers):
  how its weights are copied to SRAM, how trained copies feed back into params, the int32 check
  of the forward accumulator, and the backward MACs.

Kernel variants. An emitter never names a C++ namespace: it asks `kernel_name(ctx, "conv2d_s8")`
and gets the function of the variant prepare chose for its operator (compile time, by shape, like
CMSIS-NN's `arm_convolve_wrapper_s8` but on the host). VARIANTS maps an operator's opcode (and
`backward_key(opcode)` for its backward kernels) to its variants, most preferred first; REF, the
plain loop-nest reference, serves everything and is the last resort. Each variant declares its
scratch as a pure function of the prepared params (CMSIS-NN's `*_get_buffer_size`); the memory
planners place that many bytes for exactly that step and the emitter passes the buffer on with
`scratch_args(ctx)`. docs/kernel_variants.md shows how an optimized kernel plugs in.

docs/adding_an_operator.md lists what a new operator module provides and what else it touches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..frontend.graph import Graph, ModelError, Operator
from ..frontend.options import OptionsDef, declare


class EmitContext(Protocol):
    """What an emitter gets. A bare constant collector (only const_array) is a valid context:
    kernel_name() and scratch_args() then give the reference variant and no scratch."""

    def const_array(self, hint: str, array: np.ndarray) -> str:
        """Place `array` (int8/int16/int32/float32, any shape, flattened C order) in flash as a
        `static const` array and return its C++ symbol."""
        ...


def _no_scratch(params: Any) -> int:
    return 0


def _serves_all(params: Any, n_train: int) -> bool:
    return True


@dataclass(frozen=True)
class KernelVariant:
    """One implementation of an operator's firmware kernels (forward or backward)."""

    name: str  # short tag, e.g. "ref", "m7"
    namespace: str  # C++ namespace of its functions, e.g. "mt::ref"
    header: str | None = None  # firmware header it needs beyond the OpDef's (None: none)
    # Pure function of the prepared params: bytes of arena scratch one call needs (0: none).
    scratch_bytes: Callable[[Any], int] = _no_scratch
    # (params, n_train) -> whether it computes this operator exactly; n_train is the count of
    # trained output channels read from SRAM (0 outside training).
    serves: Callable[[Any, int], bool] = _serves_all
    # (params, ctx) -> extra arguments ", sym, ..." its forward kernel takes after the output:
    # flash constants it lays out itself through ctx.const_array (weights re-packed in the
    # order its inner loop reads them, folded biases). None: it reads only the OpDef's.
    constants: Callable[[Any, Any], str] | None = None
    # A backward variant's scratch for what a step computes: (params, need_dx, n_train) ->
    # bytes, so a step without an input gradient does not hold that kernel's buffer. None:
    # scratch_bytes(params) for every step.
    backward_scratch: Callable[[Any, bool, int], int] | None = None
    # Same signature: larger scratch sizes with which the step runs faster, fastest first, each
    # planned only where the arena already has the room (ArenaPlanner.widen); the kernels tell
    # from the size they get which they were given.
    roomy_backward_scratch: Callable[[Any, bool, int], tuple[int, ...]] | None = None
    # The same for the forward kernel: params -> larger scratch sizes, fastest first.
    roomy_scratch: Callable[[Any], tuple[int, ...]] | None = None

    @property
    def takes_scratch(self) -> bool:
        """Its kernels take trailing (scratch, bytes) arguments, given nullptr, 0 when a step
        plans none (each kernel then needs none, or runs the reference)."""
        return self.scratch_bytes is not _no_scratch or self.backward_scratch is not None

    def step_scratch_bytes(self, params: Any, need_dx: bool, n_train: int) -> int:
        """Scratch bytes of one backward step."""
        if self.backward_scratch is not None:
            return self.backward_scratch(params, need_dx, n_train)
        return self.scratch_bytes(params)

    def roomy_step_scratch_bytes(self, params: Any, need_dx: bool,
                                 n_train: int) -> tuple[int, ...]:
        """The roomy sizes of one backward step above its plain one, fastest first."""
        if self.roomy_backward_scratch is None:
            return ()
        return _above(self.step_scratch_bytes(params, need_dx, n_train),
                      self.roomy_backward_scratch(params, need_dx, n_train))

    def roomy_scratch_bytes(self, params: Any) -> tuple[int, ...]:
        """The forward kernel's roomy sizes above its plain one, fastest first."""
        if self.roomy_scratch is None:
            return ()
        return _above(self.scratch_bytes(params), self.roomy_scratch(params))

    def kernel(self, function: str) -> str:
        return f"{self.namespace}::{function}"


def _above(plain: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The roomy sizes worth planning: those above the plain size, in their order."""
    return tuple(s for s in sizes if s > plain)


REF = KernelVariant("ref", "mt::ref")
VARIANTS: dict[str, list[KernelVariant]] = {}


def backward_key(opcode: str) -> str:
    """The VARIANTS key of an operator's backward kernels (they vary apart from its forward)."""
    return f"{opcode}:backward"


def register_variant(key: str, variant: KernelVariant) -> KernelVariant:
    """Prefer `variant` for `key` (an opcode or backward_key(opcode)) over those registered
    before it."""
    VARIANTS.setdefault(key, []).insert(0, variant)
    return variant


# What a build may choose from: the optimized variants where they serve a step, or only the
# reference kernels (custom_kernels = reference: smallest arena, the definition itself).
KERNEL_CHOICES = ("optimized", "reference")


def choose_variant(key: str, params: Any, n_train: int = 0,
                   kernels: str = "optimized") -> KernelVariant:
    if kernels == "reference":
        return REF
    for variant in VARIANTS.get(key, ()):
        if variant.serves(params, n_train):
            return variant
    return REF


@dataclass(frozen=True)
class StepContext:
    """The EmitContext of one schedule step: flash constants go to `pool`, kernels come from
    `variant`, and `scratch` (C++ int8_t* expression, `scratch_size` bytes) is the step's
    planned scratch buffer, None when the variant needs none."""

    pool: Any  # anything with const_array, e.g. cxx.ConstPool
    variant: KernelVariant = REF
    scratch: str | None = None
    scratch_size: int = 0

    def const_array(self, hint: str, array: np.ndarray) -> str:
        return self.pool.const_array(hint, array)


def kernel_name(ctx: Any, function: str) -> str:
    """The C++ name of `function` in the variant `ctx` carries (REF for a bare context)."""
    return getattr(ctx, "variant", REF).kernel(function)


def variant_args(ctx: Any, params: Any) -> str:
    """Trailing arguments of a forward kernel call beyond the reference's: the variant's own
    flash constants, then the step's scratch (scratch_args)."""
    variant = getattr(ctx, "variant", REF)
    extra = variant.constants(params, ctx) if variant.constants is not None else ""
    return extra + scratch_args(ctx)


def scratch_args(ctx: Any) -> str:
    """Trailing `, scratch, bytes` arguments of a kernel call: "" for a variant without scratch,
    `, nullptr, 0` when its step planned none."""
    scratch = getattr(ctx, "scratch", None)
    if scratch is None:
        variant = getattr(ctx, "variant", REF)
        return ", nullptr, 0" if variant.takes_scratch else ""
    return f", {scratch}, {ctx.scratch_size}"


class FloatContext(Protocol):
    """What a float forward gets: the graph and the float parameter tensors of the weighted
    operators (train/fp32_reference.FloatModel)."""

    @property
    def graph(self) -> Graph: ...

    def variable(self, step: int, kind: str) -> Any:
        """The float "weights" or "bias" of the weighted operator at schedule `step`."""
        ...


Prepare = Callable[[Operator, Graph], Any]
Reference = Callable[[Any, list[np.ndarray]], np.ndarray]
Emit = Callable[[Any, EmitContext, list[str], str], str]
Macs = Callable[[Any], int]
# (ctx, step, prepared op, dynamic float inputs) -> float output, TensorFlow imported lazily.
FloatForward = Callable[[FloatContext, int, Any, list[Any]], Any]


def weighted_backward_macs(forward_macs: int, out_channels: int, need_dx: bool,
                           n_train: int, gathers: int = 2) -> int:
    """Backward MACs of a weighted operator: the input gradient costs `gathers` forward passes
    (two where its kernel computes every sum twice, for the max and to write int16, rather than
    keep int32 sums; one where it was given room to stage them), the weight gradient of n_train
    of out_channels channels that share of one."""
    total = gathers * forward_macs if need_dx else 0
    if n_train:
        total += forward_macs * n_train // out_channels
    return total


@dataclass(frozen=True)
class Trainable:
    """How a weighted operator's parameters train (see TrainSlot and TrainBinding below)."""

    # (params, n_train) -> int8 copy of the first n_train output channels, firmware layout.
    trainable_weights: Callable[[Any, int], np.ndarray]
    # (params, weights or None, bias or None) -> params computing with the trained copies.
    with_trained: Callable[[Any, np.ndarray | None, np.ndarray | None], Any]
    # (params, op, n_train) -> raises ModelError when trained weights could overflow int32.
    check_accumulator: Callable[[Any, Operator, int], None]
    # (forward_macs, out_channels, need_dx, n_train, gathers) -> MACs of one backward step.
    backward_macs: Callable[[int, int, bool, int, int], int] = weighted_backward_macs
    # Output-channel axis of the TFLite weight tensor (OHWI / [out, accum]: 0; 1HWC: 3).
    filter_channel_axis: int = 0


@dataclass(frozen=True)
class RowGeometry:
    """Which rows (axis 1 of NHWC) of one input the output rows of an operator read: output row
    y reads input rows y * stride - pad + k * dilation for k < kernel, those inside [0, in_h)."""

    in_h: int
    out_h: int
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    pad: int = 0

    def first_row(self, y: int) -> int:
        """The lowest input row that output rows y, y + 1, ... read."""
        return min(self.in_h, max(0, y * self.stride - self.pad))

    def end_row(self, y_end: int) -> int:
        """One past the highest input row that output rows [0, y_end) read (with a dilation,
        the last row's top tap may fall below the tensor while an earlier row's does not)."""
        span = (self.kernel - 1) * self.dilation
        # Rows past y_last read only the bottom padding; rows more than span / stride before
        # it cannot reach higher than it does.
        y_last = min(y_end - 1, (self.in_h - 1 + self.pad) // self.stride)
        best = -1
        for y in range(max(0, y_last - span // self.stride - 1), y_last + 1):
            top = y * self.stride - self.pad
            highest = top + (min(self.in_h - 1, top + span) - top) // self.dilation * self.dilation
            best = max(best, highest)
        return best + 1 if best >= 0 else 0


@dataclass(frozen=True)
class RowRule:
    """How an operator computes a band of its output rows from windows of its input rows.

    geometry(params) -> one RowGeometry per dynamic input, or None when this prepared operator
      cannot run by rows (batch above 1, broadcasting, constant operands...).
    emit(params, ctx, windows, output, y0, y1) -> C++ statements computing output rows
      [y0, y1) into `output` (int8_t*, where row y0 goes). `windows` are C++ lvalues of the
      inputs' mt::RowWindow (runtime/row_window.h): `.base` holds tensor row `.first` and the
      `.count` rows after it, which include every row the band reads; y0, y1 are C++ int32
      expressions.
    """

    geometry: Callable[[Any], list[RowGeometry] | None]
    emit: Callable[[Any, EmitContext, list[str], str, str, str], str]


@dataclass(frozen=True)
class OpDef:
    opcode: str
    prepare: Prepare
    reference: Reference
    emit: Emit
    macs: Macs
    header: str  # firmware header the emitted code needs, e.g. "kernels/conv2d.h"
    # True when the output is the input's bytes reinterpreted (RESHAPE): the memory planner gives
    # both tensors the same buffer and emit() returns "".
    aliases_input: bool = False
    # The float forward the fp32 training reference runs (None: that reference refuses the op).
    float_forward: FloatForward | None = None
    # Training facts (module docstring).
    backward: BackwardDef | None = None
    identity_gradient: BackwardDef | None = None  # identity_backward(...) when dx = dy
    pass_through: bool = False
    fused_activation: bool = False
    trainable: Trainable | None = None
    # The flatbuffer options table it carries and its parser (frontend/options.py); None when
    # the operator has no options table (LOGISTIC).
    options: OptionsDef | None = None
    # Row-band execution (compile/streaming.py): None when the operator only runs whole.
    rows: RowRule | None = None


    @property
    def gradient(self) -> BackwardDef | None:
        """The rule a backward step calls: its own, else the identity, None when it has none."""
        return self.backward if self.backward is not None else self.identity_gradient


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    """Add `opdef` to the registry and declare its options to the reader."""
    REGISTRY[opdef.opcode] = opdef
    if opdef.options is not None:
        declare(opdef.opcode, opdef.options)
    return opdef


def registered(opcode: str) -> OpDef | None:
    """The OpDef of `opcode` with every operator module loaded, None if none registers it."""
    from . import load_all

    load_all()
    return REGISTRY.get(opcode)


def is_parametric(opcode: str) -> bool:
    """Whether `opcode` is a weighted operator, one a training scheme calls a layer."""
    opdef = registered(opcode)
    return opdef is not None and opdef.trainable is not None


def trainable(opcode: str) -> Trainable:
    """The Trainable of a weighted operator (callers check is_parametric first)."""
    opdef = registered(opcode)
    if opdef is None or opdef.trainable is None:
        raise KeyError(f"{opcode} has no trainable parameters")
    return opdef.trainable


def backward_rule(opcode: str) -> BackwardDef | None:
    """The operator's own gradient rule (OpDef.backward), None when it has none."""
    opdef = registered(opcode)
    return None if opdef is None else opdef.backward


def gradient_rule(opcode: str) -> BackwardDef | None:
    """The rule the backward pass calls for `opcode` (OpDef.gradient), None when it has none."""
    opdef = registered(opcode)
    return None if opdef is None else opdef.gradient


def lookup(op: Operator) -> OpDef:
    from . import load_all

    load_all()
    if op.opcode not in REGISTRY:
        supported = ", ".join(sorted(REGISTRY))
        raise ModelError(
            f"operator {op.index} is {op.opcode}, which mcutrain does not support "
            f"(supported: {supported})"
        )
    return REGISTRY[op.opcode]


def c_int_list(values: Any) -> str:
    """`{1, 2, 3}` for brace initialisers in emitted code."""
    return "{" + ", ".join(str(int(v)) for v in np.asarray(values).ravel()) + "}"


# ---- training (docs/training.md) ----


@dataclass(frozen=True)
class GradView:
    """How a backward kernel reads an output gradient that is not stored whole (firmware
    train_math.h mt::GradView): element (pixel, c) = data[pixel * pixel_stride + c], zero where
    bit pixel * channels + c of the mask is 0. pixel_stride 0 is one C-vector at every pixel."""

    pixel_stride: int
    mask: str  # C++ expression of the mask bits (const uint8_t*), or "nullptr"
    channels: int


@dataclass(frozen=True)
class GradRef:
    """A gradient tensor in generated C++: one arena buffer holding `count` int32 accumulators
    while a kernel sums into it, then `count` int16 values (compacted in place by
    mt::GradRequantize), and a float lvalue with its scale. A buffer only an int16_dx rule
    writes holds just the `count` int16 values (2 * count bytes): never use acc() on it.
    With a `view` (an output gradient only a BackwardDef.broadcast_dy rule reads) the buffer
    holds `view.channels` int16 values read at every pixel, `count` is the element count of
    the tensor they stand for, and `scale` may be an expression (not an lvalue)."""

    buffer: str  # C++ expression of the buffer's address, e.g. "(g_arena + 1024)"
    scale: str  # C++ float lvalue, e.g. "g_grad_scale[3]"
    count: int
    view: GradView | None = None

    def operand(self) -> str:
        """The dy argument of a backward kernel: the int16 pointer, or an mt::GradView."""
        if self.view is None:
            return self.data()
        v = self.view
        return f"mt::GradView{{{self.data()}, {v.pixel_stride}, {v.mask}, {v.channels}}}"

    def acc(self) -> str:
        return f"reinterpret_cast<int32_t*>{self.buffer}"

    def data(self) -> str:
        return f"reinterpret_cast<int16_t*>{self.buffer}"


@dataclass(frozen=True)
class TrainBinding:
    """Where a trained operator's parameters live in the generated firmware. Set on the op's
    params (field `train`) so its forward emit() reads SRAM instead of flash."""

    n_train: int  # output channels whose weights are trained and live in SRAM (0: none)
    weight_symbol: str | None  # int8_t* to the SRAM copy of those channels (layout: op header)
    bias_symbol: str | None  # int32_t* to the SRAM copy of the whole bias, if the bias trains


@dataclass(frozen=True)
class TrainEmit:
    """C++ names a backward emit() needs for updates."""

    binding: TrainBinding
    w_coef: str | None  # const float[n_train]: 1/sW (QAS) or sW per trained output channel
    bias_coef: str | None  # const float[out_c]: 1/(sx*sW) (QAS) or sx*sW
    lr: str  # float expression
    prng: str  # uint32_t* expression
    rounding: str  # mt::Rounding expression


@dataclass
class TrainSlot:
    """The numpy side of one trained operator's state, updated in place by backward()."""

    n_train: int
    weights: np.ndarray | None  # int8 copy of the trained channels, same layout as the firmware
    bias: np.ndarray | None  # int32 copy of the whole bias when it trains
    w_coef: np.ndarray | None  # float32 [n_train]
    bias_coef: np.ndarray | None  # float32 [out_c]
    stochastic: bool


@dataclass(frozen=True)
class BackwardDef:
    """Gradient rule of one operator (see docs/training.md "Rules per operator").

    reference(params, saved, dy, need_dx, slot, lr, rng) -> one QGrad (or None) per dynamic
      input: `saved` holds the dynamic inputs the forward kept (None where not kept), `dy` is
      the output gradient with any activation mask already applied, `need_dx[i]` says whether
      input i's gradient is wanted; trained parameters in `slot` are updated in place (bias, then
      weights), after the input gradient is computed from the old weights.
    emit(params, ctx, saved_ptrs, dy, dx, train) -> C++ statements doing the same; `dx[i]` is a
      GradRef or None; the emitted code must leave dx[i] requantized to int16 with its scale set.
    saves_input(params, slot) -> for each dynamic input, whether backward needs it kept.
    input_grad_depth(params) -> K, the longest integer sum of an input gradient (for the
      8191 * 128 * K < 2^31 overflow check), 0 when the op has no weighted sum.
    int16_dx: its emit writes every input gradient as int16 values straight away (a copy or
      broadcast of dy, never through dx[i].acc()), so a gradient only it writes needs 2 bytes
      per element instead of the 4 an int32 accumulation does.
    broadcast_dy: its emit accepts a dy GradRef with a view (GradRef.operand() in every kernel
      call, the activation mask in the view), so the training graph may fold a spatial MEAN's
      broadcast into it instead of storing the broadcast (training_graph.fold_broadcasts).
    """

    reference: Callable[..., list[Any]]
    emit: Callable[..., str]
    saves_input: Callable[[Any, TrainSlot | None], list[bool]]
    input_grad_depth: Callable[[Any], int] = lambda params: 0
    int16_dx: bool = False
    broadcast_dy: bool = False


def _one_input(params: Any) -> int:
    return 1


def identity_backward(dynamic_inputs: Callable[[Any], int] = _one_input) -> BackwardDef:
    """The rule of an operator whose every dynamic input's gradient is dy unchanged.

    `dynamic_inputs(params)` counts the operator's dynamic inputs (ADD may have a constant
    operand). It keeps nothing from the forward pass; its reference hands dy on (the walker
    stores a gradient in its tensor's shape) and its emit copies dy's int16 values and scale
    into each wanted dx, so every input gradient has a buffer of its own."""

    def reference(params: Any, saved: list[Any], dy: Any, need_dx: list[bool], slot: Any,
                  lr: Any, rng: Any) -> list[Any]:
        return [dy if need else None for need in need_dx]

    def emit(params: Any, ctx: Any, saved: list[str | None], dy: GradRef,
             dx: list[GradRef | None], train: Any) -> str:
        return "\n".join(f"std::memcpy({d.buffer}, {dy.buffer}, {2 * dy.count});\n"
                         f"{d.scale} = {dy.scale};" for d in dx if d is not None)

    def saves(params: Any, slot: TrainSlot | None) -> list[bool]:
        return [False] * dynamic_inputs(params)

    return BackwardDef(reference=reference, emit=emit, saves_input=saves, int16_dx=True)


class _BackwardRules(Mapping[str, BackwardDef]):
    """Read-only view opcode -> BackwardDef over the registry (OpDef.backward)."""

    def _rules(self) -> dict[str, BackwardDef]:
        from . import load_all

        load_all()
        return {k: v.backward for k, v in REGISTRY.items() if v.backward is not None}

    def __getitem__(self, opcode: str) -> BackwardDef:
        return self._rules()[opcode]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules())

    def __len__(self) -> int:
        return len(self._rules())


BACKWARD: Mapping[str, BackwardDef] = _BackwardRules()
