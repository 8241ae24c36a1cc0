"""The compiler pipeline: .tflite -> graph IR -> prepared operators -> memory plan.

codegen.py turns the result into C++; reference.py runs it in numpy. Nothing here imports
TensorFlow, so the PlatformIO pre-build hook stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..frontend.graph import Graph, ModelError, Operator, check_deployable, strip_io_conversions
from ..frontend.tflite_reader import read_tflite
from ..ops.base import KERNEL_CHOICES, REF, KernelVariant, OpDef, choose_variant, lookup
from ..ops.quant import ScaleRangeError
from .memory_plan import ArenaPlanner
from .streaming import (
    Stream,
    candidates,
    check_schedule,
    pulls_input,
    refine,
    spans,
    window_bytes,
    with_pulled_input,
)


@dataclass
class PreparedOp:
    op: Operator
    opdef: OpDef
    params: Any
    inputs: list[int]  # dynamic input tensor ids, in operator order
    output: int
    variant: KernelVariant = REF  # the kernels prepare chose for this operator's forward

    @property
    def macs(self) -> int:
        return int(self.opdef.macs(self.params))


@dataclass
class CompiledModel:
    graph: Graph
    ops: list[PreparedOp]
    planner: ArenaPlanner
    buffer_of: dict[int, str] = field(default_factory=dict)  # tensor id -> arena buffer name
    # arena buffer -> the tensor it was made for (an aliasing output shares its input's buffer)
    tensor_of: dict[str, int] = field(default_factory=dict)
    # Steps run row-streamed (compile/streaming.py), in schedule order, none overlapping.
    streams: tuple[Stream, ...] = ()
    # The arena layer-by-layer execution would need (equal to the arena without streams).
    whole_arena_bytes: int = 0
    # ops/base.py KERNEL_CHOICES: "optimized" variants where they serve, or "reference" only.
    kernels: str = "optimized"

    @property
    def input(self) -> int:
        return self.graph.inputs[0]

    @property
    def output(self) -> int:
        return self.graph.outputs[0]

    @property
    def arena_bytes(self) -> int:
        return self.planner.arena_bytes()

    @property
    def macs(self) -> int:
        return sum(p.macs for p in self.ops)

    def offset_of(self, tensor_id: int) -> int:
        return self.planner.offset_of(self.buffer_of[tensor_id])


def scratch_buffer(step: int, backward: bool = False) -> str:
    """The arena buffer of a step's kernel scratch; it lives only during that step."""
    return f"scratch_b{step}" if backward else f"scratch{step}"


def scratch_size(variant: KernelVariant, params: Any,
                 backward: tuple[bool, int] | None = None) -> int:
    """The variant's scratch bytes for these params (its pure size function, checked); for a
    backward step, backward = (need_dx, n_train) says what the step computes."""
    size = (variant.scratch_bytes(params) if backward is None
            else variant.step_scratch_bytes(params, *backward))
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"kernel variant {variant.name}: scratch_bytes gave {size!r}, "
                         "expected a byte count >= 0")
    return size


def compile_model(source: str | Path | bytes, alignment: int = 16,
                  streaming: bool = True, pull_input: bool = False,
                  kernels: str = "optimized") -> CompiledModel:
    """Read, prepare and plan a model. With `streaming`, chains of operators whose tensors would
    otherwise dominate the arena run row-streamed (compile/streaming.py) when that makes the
    arena smaller; without it every tensor is whole (layer by layer). With `pull_input` the
    first stream also pulls the model input from the host a few rows at a time, so the input
    never sits whole in SRAM (a ModelError if no stream can). `kernels` (ops/base.py
    KERNEL_CHOICES): "reference" builds every step on the reference kernels."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels={kernels!r}: use one of {', '.join(KERNEL_CHOICES)}")
    graph = strip_io_conversions(read_tflite(source))
    check_deployable(graph)
    ops = [_prepare(op, graph, kernels) for op in graph.operators]
    buffer_of, tensor_of = _assign_buffers(graph, ops)
    whole = _plan(graph, ops, buffer_of, tensor_of, alignment)
    streams, planner = ((), whole)
    if streaming or pull_input:
        streams, planner = _choose_streams(graph, ops, buffer_of, tensor_of, alignment, whole,
                                           pull_input)
    widen_forward_scratch(planner, ops)
    return CompiledModel(graph=graph, ops=ops, planner=planner, buffer_of=buffer_of,
                         tensor_of=tensor_of, streams=streams,
                         whole_arena_bytes=whole.arena_bytes(), kernels=kernels)


def widen_forward_scratch(planner: ArenaPlanner, ops: list[PreparedOp],
                          variants: list[KernelVariant] | None = None) -> None:
    """Gives each forward step the fastest of its variant's roomy scratch sizes the planned
    arena has a gap for through the scratch's lifetime: faster kernels for no SRAM. `variants`:
    the steps' variants when they are not the ops' own (a training build's)."""
    placed = planner.placements()
    for step, p in enumerate(ops):
        variant = p.variant if variants is None else variants[step]
        name = scratch_buffer(step)
        if name in placed:
            planner.widen_to_first(name, variant.roomy_scratch_bytes(p.params))


def _prepare(op: Operator, graph: Graph, kernels: str = "optimized") -> PreparedOp:
    opdef = lookup(op)
    if len(op.outputs) != 1:
        raise ModelError(f"operator {op.index} ({op.opcode}) has {len(op.outputs)} outputs; "
                         "mcutrain supports single-output operators")
    try:
        params = opdef.prepare(op, graph)
    except ScaleRangeError as exc:
        raise ModelError(f"operator {op.index} ({op.opcode}): {exc}") from None
    return PreparedOp(op=op, opdef=opdef, params=params, inputs=graph.dynamic_inputs(op),
                      output=op.outputs[0],
                      variant=choose_variant(op.opcode, params, kernels=kernels))


def _assign_buffers(graph: Graph,
                    ops: list[PreparedOp]) -> tuple[dict[int, str], dict[str, int]]:
    """Every run-time tensor gets a buffer name; an aliasing op's output shares its input's.
    Returns tensor -> buffer and buffer -> the tensor it was made for."""
    buffer_of: dict[int, str] = {graph.inputs[0]: f"t{graph.inputs[0]}"}
    for p in ops:
        for tid in p.inputs:
            if tid not in buffer_of:
                raise ModelError(f"operator {p.op.index} ({p.op.opcode}) reads tensor {tid} "
                                 "before anything writes it (operators out of order?)")
        if p.opdef.aliases_input:
            buffer_of[p.output] = buffer_of[p.inputs[0]]
        else:
            buffer_of[p.output] = f"t{p.output}"
    if graph.outputs[0] not in buffer_of:
        raise ModelError(f"{graph.name}: the model output is not computed by any operator")
    tensor_of: dict[str, int] = {}
    for tid, buffer in buffer_of.items():  # insertion order: a buffer's maker comes first
        tensor_of.setdefault(buffer, tid)
    return buffer_of, tensor_of


# At most this many streams are planned exactly; the rest are ranked by a cheap bound first.
_EXACT_PLANS = 24


def _choose_streams(graph: Graph, ops: list[PreparedOp], buffer_of: dict[int, str],
                    tensor_of: dict[str, int], alignment: int, whole: ArenaPlanner,
                    pull_input: bool = False) -> tuple[tuple[Stream, ...], ArenaPlanner]:
    """The streams that give the smallest arena, added one at a time while each makes it
    smaller (`whole`: the plan without streams), and their plan. With `pull_input` only streams
    that can pull the model input from the host row by row are candidates for the first one."""
    best = whole
    chosen: tuple[Stream, ...] = ()
    plain = candidates(graph, ops)
    pool = plain
    if pull_input:
        pool = _pulling(graph, ops, plain)
        if not pool:
            raise ModelError(_cannot_pull(graph, ops))
        best = None
    sizes = _sizes(graph, tensor_of, buffer_of, ())
    while True:
        free = [s for s in pool if not any(_overlap(s, c) for c in chosen)]
        ranked = sorted(free, key=lambda s: _live_peak(graph, ops, buffer_of, sizes,
                                                        (*chosen, s)))
        found = None
        for stream in ranked[:_EXACT_PLANS]:
            finer = refine(graph, ops, stream)
            if stream.pulled is not None:
                finer = with_pulled_input(graph, ops, finer, stream.pulled)
            trial = tuple(sorted((*chosen, finer), key=lambda s: s.first))
            planner = _plan(graph, ops, buffer_of, tensor_of, alignment, trial)
            if best is None or planner.arena_bytes() < best.arena_bytes():
                best, found = planner, trial
        if found is None:
            break
        chosen = found
        # Once the input is pulled, the other streams need not (and cannot) pull it.
        pool = plain
    for stream in chosen:
        check_schedule(graph, ops, stream)
    return chosen, best


def _pulling(graph: Graph, ops: list[PreparedOp], pool: list[Stream]) -> list[Stream]:
    """The candidate streams that can pull the model input, pulling it."""
    found = (with_pulled_input(graph, ops, s, graph.inputs[0]) for s in pool)
    return [s for s in found if s is not None]


def _cannot_pull(graph: Graph, ops: list[PreparedOp]) -> str:
    readers = [f"operator {p.op.index} ({p.op.opcode})" for p in ops
               if graph.inputs[0] in p.inputs]
    return (f"{graph.name}: the input cannot be pulled from the host row by row: it is read by "
            f"{', '.join(readers) or 'nothing'}, and pulling needs its readers to start a chain "
            "of two or more CONV_2D, DEPTHWISE_CONV_2D or ADD steps that run by rows "
            "(docs/memory.md); build without custom_input = rows")


def _overlap(a: Stream, b: Stream) -> bool:
    return a.first <= b.last + 1 and b.first <= a.last + 1


def _lifetimes(graph: Graph, ops: list[PreparedOp], buffer_of: dict[int, str],
               streams: tuple[Stream, ...]) -> dict[str, list[int]]:
    lifetimes: dict[str, list[int]] = {}

    def touch(tid: int, step: int) -> None:
        span = lifetimes.setdefault(buffer_of[tid], [step, step])
        span[0], span[1] = min(span[0], step), max(span[1], step)

    if not pulls_input(streams):
        touch(graph.inputs[0], -1)  # written by the host before the first step
    for p, (first, last) in zip(ops, spans(len(ops), streams), strict=True):
        for tid in (*p.inputs, p.output):
            touch(tid, first)
            touch(tid, last)
    touch(graph.outputs[0], len(ops))
    return lifetimes


def _sizes(graph: Graph, tensor_of: dict[str, int], buffer_of: dict[int, str],
           streams: tuple[Stream, ...]) -> dict[str, int]:
    sizes = {name: graph.tensors[tid].nbytes for name, tid in tensor_of.items()}
    sizes.update({buffer_of[tid]: size for tid, size in window_bytes(graph, streams).items()})
    return sizes


def _live_peak(graph: Graph, ops: list[PreparedOp], buffer_of: dict[int, str],
               whole: dict[str, int], streams: tuple[Stream, ...]) -> int:
    """The most bytes live at one step (`whole`: each buffer's size without streams): a lower
    bound of the arena, cheap enough to rank every candidate stream."""
    sizes = dict(whole)
    sizes.update({buffer_of[tid]: size for tid, size in window_bytes(graph, streams).items()})
    live = [0] * (len(ops) + 2)
    for name, (first, last) in _lifetimes(graph, ops, buffer_of, streams).items():
        for step in range(first + 1, last + 2):
            live[step] += sizes[name]
    return max(live)


def _plan(graph: Graph, ops: list[PreparedOp], buffer_of: dict[int, str],
          tensor_of: dict[str, int], alignment: int,
          streams: tuple[Stream, ...] = ()) -> ArenaPlanner:
    sizes = _sizes(graph, tensor_of, buffer_of, streams)
    planner = ArenaPlanner(alignment)
    for name, (first, last) in _lifetimes(graph, ops, buffer_of, streams).items():
        planner.add_buffer(name, sizes[name], first, last)
    for (first, last), (step, p) in zip(spans(len(ops), streams), enumerate(ops), strict=True):
        size = scratch_size(p.variant, p.params)
        if size:
            planner.add_buffer(scratch_buffer(step), size, first, last)
    return planner

