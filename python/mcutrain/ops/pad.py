"""PAD and PADV2 (int8, up to 4-D), as TFLite's pad kernel.

The paddings come from the constant second input ([rank, 2] of int32/int64, before/after per
dim). The fill value is the output zero point for PAD (a real 0.0) and the constant third input
for PADV2, whose quantization TFLite requires to equal the output's. Bytes are copied without
requantization, as in TFLite. macs() is 0. Backward (training): dx is the interior of
dy with the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from ..frontend import options as opt
from ..frontend.graph import Graph, Operator, Tensor
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
from .common import fail, output_tensor, tensor_at
from .float_common import tf_module
from .train_math import F32, QGrad, XorShift32

MAX_RANK = 4


@dataclass(frozen=True)
class PadParams:
    """Fields in the order of mt::PadParams (firmware/kernels/pad.h), plus the TFLite shapes."""

    in_shape: tuple[int, int, int, int]
    out_shape: tuple[int, int, int, int]
    before: tuple[int, int, int, int]
    pad_value: int
    output_shape: tuple[int, ...]

    def fields(self) -> list[int]:
        return [*self.in_shape, *self.out_shape, *self.before, self.pad_value]


def _four(values: list[int], fill: int) -> tuple[int, int, int, int]:
    full = [fill] * (MAX_RANK - len(values)) + [int(v) for v in values]
    return full[0], full[1], full[2], full[3]


def _paddings(op: Operator, graph: Graph, rank: int) -> np.ndarray:
    t = tensor_at(op, graph, 1)
    if t is None or not t.is_const:
        raise fail(op, "paddings (input 1) must be a constant tensor")
    if t.dtype not in ("int32", "int64"):
        raise fail(op, f"paddings are {t.dtype}; expected int32 or int64")
    pads = np.asarray(t.data, dtype=np.int64).reshape(-1)
    if pads.size != 2 * rank:
        raise fail(op, f"paddings have {pads.size} values for a rank-{rank} input")
    pads = pads.reshape(rank, 2)
    if np.any(pads < 0):
        raise fail(op, "negative paddings are not supported")
    return pads


def _pad_value(op: Operator, graph: Graph, out: Tensor) -> int:
    const = tensor_at(op, graph, 2)
    if const is None:  # PAD, or PADV2 without constant_values
        return out.zero_point if out.quant is not None else 0
    if not const.is_const or const.dtype != "int8" or const.num_elements != 1:
        raise fail(op, "constant_values (input 2) must be a constant int8 scalar")
    if out.quant is not None and (const.quant is None or const.scale != out.scale
                                  or const.zero_point != out.zero_point):
        raise fail(op, "constant_values quantization differs from the output's (TFLite rejects)")
    return int(np.asarray(const.data).reshape(-1)[0])


def prepare(op: Operator, graph: Graph) -> PadParams:
    x = tensor_at(op, graph, 0)
    if x is None or x.is_const:
        raise fail(op, "expects a non-constant input")
    out = output_tensor(op, graph)
    if x.dtype != "int8" or out.dtype != "int8":
        raise fail(op, f"{x.dtype} -> {out.dtype} is not supported; only int8")
    rank = len(x.shape)
    if rank > MAX_RANK:
        raise fail(op, f"rank-{rank} input is not supported (at most {MAX_RANK}-D)")
    pads = _paddings(op, graph, rank)
    expected = tuple(int(d) for d in np.asarray(x.shape) + pads.sum(axis=1))
    if tuple(out.shape) != expected:
        raise fail(op, f"output shape {out.shape} disagrees with the padded {expected}")
    return PadParams(
        in_shape=_four(list(x.shape), 1), out_shape=_four(list(expected), 1),
        before=_four(list(pads[:, 0]), 0), pad_value=_pad_value(op, graph, out),
        output_shape=expected,
    )


def reference(params: PadParams, inputs: list[np.ndarray]) -> np.ndarray:
    x = np.asarray(inputs[0], dtype=np.int8).reshape(params.in_shape)
    out = np.full(params.out_shape, params.pad_value, dtype=np.int8)
    window = tuple(slice(b, b + n) for b, n in zip(params.before, params.in_shape, strict=True))
    out[window] = x
    return out.reshape(params.output_shape)


def emit(params: PadParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    return (
        "{\n"
        f"  static const mt::PadParams p = {c_int_list(params.fields())};\n"
        f"  {kernel_name(ctx, 'pad_s8')}(p, {inputs[0]}, {output});\n"
        "}\n"
    )


def macs(params: PadParams) -> int:
    return 0


# ---- training (docs/training.md, "PAD") ----


def input_shape(params: PadParams) -> tuple[int, ...]:
    """The input's TFLite shape (the 4-D view drops its leading 1s)."""
    return tuple(params.in_shape[MAX_RANK - len(params.output_shape):])


def backward_reference(params: PadParams, saved: list[np.ndarray | None], dy: QGrad,
                       need_dx: list[bool], slot: TrainSlot | None, lr: float,
                       rng: XorShift32) -> list[QGrad | None]:
    """dx = the interior of dy, same scale: a copy, no rounding."""
    if not need_dx[0]:
        return [None]
    d = np.asarray(dy.data, np.int16).reshape(params.out_shape)
    window = tuple(slice(b, b + n) for b, n in zip(params.before, params.in_shape, strict=True))
    return [QGrad(d[window].reshape(input_shape(params)).copy(), F32(dy.scale))]


def backward_emit(params: PadParams, ctx: EmitContext, saved: list[str | None], dy: GradRef,
                  dx: list[GradRef | None], train: TrainEmit | None) -> str:
    if dx[0] is None:
        return ""
    return (
        "{\n"
        f"  static const mt::PadParams p = {c_int_list(params.fields())};\n"
        f"  {kernel_name(ctx, 'pad_backward')}(p, {dy.data()}, {dx[0].data()});\n"
        f"  {dx[0].scale} = {dy.scale};\n"
        "}\n"
    )


_PAD_BACKWARD = BackwardDef(reference=backward_reference, emit=backward_emit,
                            saves_input=lambda p, slot: [False])
PAD_BACKWARD = PADV2_BACKWARD = _PAD_BACKWARD

def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    tf = tf_module()
    pads = np.asarray(fx.graph.tensors[p.op.inputs[1]].data).reshape(-1, 2)
    x_t = fx.graph.tensors[p.inputs[0]]
    pad_value = int(getattr(p.params, "pad_value", x_t.zero_point))  # PADV2: not always zero
    value = float(np.float32(x_t.scale) * (pad_value - x_t.zero_point))
    return tf.pad(ins[0], pads.tolist(), constant_values=value)


# No fields (the paddings are an input), but the reader checks the table's type.
PAD = register(OpDef("PAD", prepare, reference, emit, macs, header="kernels/pad.h",
                     float_forward=float_forward, backward=_PAD_BACKWARD,
                     options=opt.OptionsDef(tflite.BuiltinOptions.PadOptions)))
PADV2 = register(OpDef("PADV2", prepare, reference, emit, macs, header="kernels/pad.h",
                       float_forward=float_forward, backward=_PAD_BACKWARD,
                       options=opt.OptionsDef(tflite.BuiltinOptions.PadV2Options)))
