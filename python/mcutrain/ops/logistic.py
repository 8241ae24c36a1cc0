"""LOGISTIC (int8): sigmoid, TFLite's int8 reference kernel bit for bit, as a 256-entry table.

TFLite (tensorflow/lite/kernels/activations.cc) requires an int8 LOGISTIC output of scale 1/256
and zero point -128, and with the reference resolver evaluates it through a lookup table it fills
in Prepare: for every int8 q, x = in_scale * (q - in_zp) and out = clamp(round(sigmoid(x) * 256)
- 128), all in float32 with round half away from zero. The same table is computed here at compile
time, goes to flash, and the kernel only indexes it; test/kernels/test_logistic.py checks
all 256 inputs against LiteRT for several input quantizations. macs() is 0 (a table read).

Backward (docs/training.md, "LOGISTIC"): dx = dy * s'(x) with s'(x) = s(x) * (1 - s(x)) of the
forward input's real value, taken from a second compile-time table of round(s'(x) * 2^15) (int16,
<= 8192). acc = dy * table[q] (|acc| <= 8191 * 8192 < 2^31) is requantized with acc_scale =
dy.scale / 2^15, like the pooling rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
from .common import fail, output_tensor, require_int8_activation, tensor_at
from .float_common import tf_module
from .train_math import F32, QGrad, XorShift32, grad_requantize

OUTPUT_SCALE = 1.0 / 256.0  # TFLite's fixed int8 LOGISTIC output quantization
OUTPUT_ZERO_POINT = -128
DERIV_ONE = 1 << 15  # fixed-point unit of the derivative table: s'(x) <= 1/4 -> <= 8192


@dataclass(frozen=True)
class LogisticParams:
    """Fields in the order of mt::LogisticParams (firmware/kernels/logistic.h), plus tables."""

    size: int
    shape: tuple[int, ...]
    table: np.ndarray = field(compare=False)  # int8[256], output for input q at table[q + 128]
    deriv: np.ndarray = field(compare=False)  # int16[256], round(s'(x) * 2^15) for the same q

    def fields(self) -> list[int]:
        return [self.size]


def _real_inputs(scale: float, zero_point: int) -> np.ndarray:
    """x of every int8 q (q = -128..127), in float32 as TFLite dequantizes in its Prepare."""
    q = np.arange(-128, 128, dtype=np.int32)
    return (F32(scale) * (q - zero_point).astype(np.float32)).astype(np.float32)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.where(v >= 0, np.floor(v + 0.5), -np.floor(-v + 0.5))


def forward_table(scale: float, zero_point: int) -> np.ndarray:
    """TFLite's LUT: clamp(round(1 / (1 + exp(-x)) * 256) - 128), float32 arithmetic."""
    x = _real_inputs(scale, zero_point)
    with np.errstate(over="ignore"):
        s = (F32(1.0) / (F32(1.0) + np.exp(-x))).astype(np.float32)
    rescaled = _round_half_away(s * F32(1.0 / OUTPUT_SCALE))
    return np.clip(rescaled + OUTPUT_ZERO_POINT, -128, 127).astype(np.int8)


def derivative_table(scale: float, zero_point: int) -> np.ndarray:
    """round(s(x) * (1 - s(x)) * 2^15) of every int8 input, computed in float64."""
    x = _real_inputs(scale, zero_point).astype(np.float64)
    s = 1.0 / (1.0 + np.exp(-x))
    return _round_half_away(s * (1.0 - s) * DERIV_ONE).astype(np.int16)


def prepare(op: Operator, graph: Graph) -> LogisticParams:
    x = tensor_at(op, graph, 0)
    if len(op.inputs) != 1 or x is None or x.is_const:
        raise fail(op, "expects one non-constant input")
    out = output_tensor(op, graph)
    require_int8_activation(op, x, "input")
    require_int8_activation(op, out, "output")
    if tuple(x.shape) != tuple(out.shape):
        raise fail(op, f"input shape {x.shape} and output shape {out.shape} differ")
    if float(out.scale) != OUTPUT_SCALE or out.zero_point != OUTPUT_ZERO_POINT:
        raise fail(op, f"output quantization (scale {float(out.scale):g}, zero point "
                       f"{out.zero_point}) must be scale 1/256, zero point -128 as TFLite requires")
    return LogisticParams(size=x.num_elements, shape=tuple(int(d) for d in x.shape),
                          table=forward_table(x.scale, x.zero_point),
                          deriv=derivative_table(x.scale, x.zero_point))


def reference(params: LogisticParams, inputs: list[np.ndarray]) -> np.ndarray:
    x = np.asarray(inputs[0])
    return params.table[x.astype(np.int32) + 128].reshape(x.shape)


def emit(params: LogisticParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    table = ctx.const_array("logistic_table", params.table)
    return (
        "{\n"
        f"  static const mt::LogisticParams p = {c_int_list(params.fields())};\n"
        f"  {kernel_name(ctx, 'logistic_s8')}(p, {table}, {inputs[0]}, {output});\n"
        "}\n"
    )


def macs(params: LogisticParams) -> int:
    return 0


def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    return tf_module().sigmoid(ins[0])


# ---- training (docs/training.md, "LOGISTIC") ----


def backward_reference(params: LogisticParams, saved: list[np.ndarray | None], dy: QGrad,
                       need_dx: list[bool], slot: TrainSlot | None, lr: float,
                       rng: XorShift32) -> list[QGrad | None]:
    """acc = dy * deriv[x + 128], requantized with acc_scale = dy.scale / 2^15."""
    if not need_dx[0]:
        return [None]
    if saved[0] is None:
        raise ValueError("LOGISTIC backward needs the saved forward input")
    q = np.asarray(saved[0]).astype(np.int32).reshape(params.shape) + 128
    acc = np.asarray(dy.data, np.int64).reshape(params.shape) * params.deriv[q].astype(np.int64)
    return [grad_requantize(acc, F32(dy.scale) / F32(DERIV_ONE))]


def backward_emit(params: LogisticParams, ctx: EmitContext, saved: list[str | None],
                  dy: GradRef, dx: list[GradRef | None], train: TrainEmit | None) -> str:
    if dx[0] is None:
        return ""
    if saved[0] is None:
        raise ValueError("LOGISTIC backward needs the saved forward input")
    deriv = ctx.const_array("logistic_deriv", params.deriv)
    return (
        "{\n"
        f"  static const mt::LogisticParams p = {c_int_list(params.fields())};\n"
        f"  {dx[0].scale} = {kernel_name(ctx, 'logistic_backward')}(p, {deriv}, {saved[0]}, "
        f"{dy.data()}, {dy.scale}, {dx[0].buffer});\n"
        "}\n"
    )


def _grad_depth(params: LogisticParams) -> int:
    """|dy * deriv| <= 8191 * 8192 = 8191 * 128 * 64: K = 64 for the compiler's check."""
    return DERIV_ONE // 4 // 128


BACKWARD = BackwardDef(reference=backward_reference, emit=backward_emit,
                       saves_input=lambda p, slot: [True], input_grad_depth=_grad_depth)

OP = register(OpDef("LOGISTIC", prepare, reference, emit, macs, header="kernels/logistic.h",
                    float_forward=float_forward, backward=BACKWARD))
