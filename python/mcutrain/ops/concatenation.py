"""CONCATENATION (int8, any rank, negative axis allowed), as TFLite's concatenation kernel.

TFLite's Prepare requires, for int8, every input to carry exactly the output's scale and zero
point (no rescaling; uint8 is the only type it rescales) and no fused activation, so this is a
pure copy and anything else is rejected. Constant inputs are allowed and live in flash.
macs() is 0. Backward (training): each dynamic input gets its slice of dy, same scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from ..frontend import options as opt
from ..frontend.graph import Graph, Operator
from .base import (
    BackwardDef,
    EmitContext,
    FloatContext,
    GradRef,
    OpDef,
    TrainEmit,
    TrainSlot,
    c_int_list,
    kernel_name,
    register,
)
from .common import fail, output_tensor, require_int8_activation
from .float_common import const_or_dynamic, tf_module
from .train_math import F32, QGrad, XorShift32


@dataclass(frozen=True)
class ConcatParams:
    axis: int  # normalised, >= 0
    outer: int  # product of the dims before the axis
    row_sizes: tuple[int, ...]  # per input: axis dim times the dims after it
    output_shape: tuple[int, ...]
    consts: tuple[np.ndarray | None, ...]  # int8 data of constant inputs, None for dynamic ones

    @property
    def out_row(self) -> int:
        return sum(self.row_sizes)


def _axis(op: Operator, rank: int) -> int:
    axis = int(op.options.get("axis", 0))
    if not -rank <= axis < rank:
        raise fail(op, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def prepare(op: Operator, graph: Graph) -> ConcatParams:
    if not op.inputs or min(op.inputs) < 0:
        raise fail(op, "expects at least one input")
    out = output_tensor(op, graph)
    require_int8_activation(op, out, "output")
    if str(op.options.get("activation", "NONE")) != "NONE":
        raise fail(op, "a fused activation is not supported (TFLite rejects it too)")
    tensors = [graph.tensor(i) for i in op.inputs]
    if all(t.is_const for t in tensors):
        raise fail(op, "all inputs are constant (fold it before conversion)")
    rank = len(out.shape)
    axis = _axis(op, rank)
    for k, t in enumerate(tensors):
        require_int8_activation(op, t, f"input {k}")
        if t.scale != out.scale or t.zero_point != out.zero_point:
            raise fail(op, f"input {k} quantization differs from the output's; TFLite supports "
                           "int8 concatenation only without rescaling")
        if len(t.shape) != rank or any(
            t.shape[d] != out.shape[d] for d in range(rank) if d != axis
        ):
            raise fail(op, f"input {k} shape {t.shape} does not fit output {out.shape}")
    if sum(t.shape[axis] for t in tensors) != out.shape[axis]:
        raise fail(op, f"input extents along axis {axis} do not add up to the output's")
    inner = int(np.prod(out.shape[axis + 1:], dtype=np.int64))
    return ConcatParams(
        axis=axis, outer=int(np.prod(out.shape[:axis], dtype=np.int64)),
        row_sizes=tuple(int(t.shape[axis]) * inner for t in tensors),
        output_shape=tuple(out.shape),
        consts=tuple(t.data.astype(np.int8) if t.is_const else None for t in tensors),
    )


def _sources(params: ConcatParams, dynamic: list):
    """Each input in order: the next dynamic one, or the constant kept in params."""
    it = iter(dynamic)
    return [c if c is not None else next(it) for c in params.consts]


def reference(params: ConcatParams, inputs: list[np.ndarray]) -> np.ndarray:
    rows = [np.asarray(s, dtype=np.int8).reshape(params.outer, n)
            for s, n in zip(_sources(params, inputs), params.row_sizes, strict=True)]
    return np.concatenate(rows, axis=1).reshape(params.output_shape)


def emit(params: ConcatParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    it = iter(inputs)
    pointers = [ctx.const_array("concat_in", c) if c is not None else next(it)
                for c in params.consts]
    n = len(params.row_sizes)
    fields = f"{n}, {params.outer}, concat_rows, {params.out_row}"
    return (
        "{\n"
        f"  static const int32_t concat_rows[{n}] = {c_int_list(params.row_sizes)};\n"
        f"  static const mt::ConcatParams p = {{{fields}}};\n"
        f"  const int8_t* const concat_in[{n}] = {{{', '.join(pointers)}}};\n"
        f"  {kernel_name(ctx, 'concat_s8')}(p, concat_in, {output});\n"
        "}\n"
    )


def macs(params: ConcatParams) -> int:
    return 0


# ---- training (docs/training.md, "CONCATENATION") ----


def _dynamic_positions(params: ConcatParams) -> list[int]:
    """Index among all inputs (constants included) of each dynamic input."""
    return [k for k, c in enumerate(params.consts) if c is None]


def input_shape(params: ConcatParams, k: int) -> tuple[int, ...]:
    shape = list(params.output_shape)
    inner = int(np.prod(shape[params.axis + 1:], dtype=np.int64))
    shape[params.axis] = params.row_sizes[k] // inner
    return tuple(shape)


def backward_reference(params: ConcatParams, saved: list[np.ndarray | None], dy: QGrad,
                       need_dx: list[bool], slot: TrainSlot | None, lr: float,
                       rng: XorShift32) -> list[QGrad | None]:
    """dx_k = slice k of dy (per outer row), same scale: a copy, no rounding."""
    d = np.asarray(dy.data, np.int16).reshape(params.outer, params.out_row)
    starts = np.concatenate([[0], np.cumsum(params.row_sizes)])
    out: list[QGrad | None] = []
    for k, need in zip(_dynamic_positions(params), need_dx, strict=True):
        if not need:
            out.append(None)
            continue
        part = d[:, starts[k]:starts[k + 1]].reshape(input_shape(params, k)).copy()
        out.append(QGrad(part, F32(dy.scale)))
    return out


def backward_emit(params: ConcatParams, ctx: EmitContext, saved: list[str | None], dy: GradRef,
                  dx: list[GradRef | None], train: TrainEmit | None) -> str:
    if all(g is None for g in dx):
        return ""
    n = len(params.row_sizes)
    lines = ["{",
             f"  static const int32_t concat_rows[{n}] = {c_int_list(params.row_sizes)};",
             f"  static const mt::ConcatParams p = {{{n}, {params.outer}, concat_rows, "
             f"{params.out_row}}};"]
    for k, g in zip(_dynamic_positions(params), dx, strict=True):
        if g is not None:
            call = kernel_name(ctx, "concat_backward")
            lines.append(f"  {call}(p, {k}, {dy.data()}, {g.data()});")
            lines.append(f"  {g.scale} = {dy.scale};")
    lines.append("}")
    return "\n".join(lines) + "\n"


BACKWARD = BackwardDef(
    reference=backward_reference, emit=backward_emit,
    saves_input=lambda p, slot: [False] * len(_dynamic_positions(p)))

def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    return tf_module().concat(const_or_dynamic(fx, p, ins),
                              axis=int(p.op.options.get("axis", 0)))


def parse_options(op: Any) -> dict[str, Any]:
    """ConcatenationOptions; axis 0 and no activation when absent."""
    o = opt.table(op, tflite.ConcatenationOptions)
    return {"axis": int(o.Axis()) if o else 0,
            "activation": opt.activation(o.FusedActivationFunction()) if o else "NONE"}


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.ConcatenationOptions, parse_options)

OP = register(OpDef("CONCATENATION", prepare, reference, emit, macs,
                    header="kernels/concatenation.h", float_forward=float_forward,
                    backward=BACKWARD, options=OPTIONS))
