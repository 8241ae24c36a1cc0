"""ADD (int8): TFLite's quantized ADD with broadcasting up to 4-D and a fused activation.

Prepare mirrors tflite/kernels/add.cc: both inputs are moved onto a common scale of twice the
larger input scale after a left shift of 20 bits, summed, and rescaled to the output scale.
One operand may be a constant (it goes to flash); both constant is a foldable op and rejected.
macs() counts 0: ADD is element-wise data movement plus requantization, not multiply-accumulate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from ..frontend import options as opt
from ..frontend.graph import Graph, Operator
from . import m7, quant
from .base import (
    EmitContext,
    FloatContext,
    KernelVariant,
    OpDef,
    RowGeometry,
    RowRule,
    c_int_list,
    identity_backward,
    kernel_name,
    register,
    register_variant,
    variant_args,
)
from .common import activation_bounds, fail, output_tensor, require_int8_activation
from .float_common import activation, const_or_dynamic
from .rows import window_row

LEFT_SHIFT = 20  # TFLite's headroom for 8-bit ADD: 255 << 20 still fits in int32


@dataclass(frozen=True)
class AddParams:
    """Fields in the order of mt::AddParams (firmware/kernels/add.h), plus host-only data."""

    out_shape: tuple[int, int, int, int]
    a_strides: tuple[int, int, int, int]
    b_strides: tuple[int, int, int, int]
    a_offset: int
    b_offset: int
    out_offset: int
    a_multiplier: int
    a_shift: int
    b_multiplier: int
    b_shift: int
    out_multiplier: int
    out_shift: int
    act_min: int
    act_max: int
    output_shape: tuple[int, ...]  # the TFLite output shape (reference result)
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    a_const: np.ndarray | None = None  # int8 data when operand a is a constant
    b_const: np.ndarray | None = None

    def fields(self) -> list[int]:
        """The C++ aggregate initializer, flattened (arrays first, as in the struct)."""
        return [*self.out_shape, *self.a_strides, *self.b_strides, self.a_offset, self.b_offset,
                self.out_offset, LEFT_SHIFT, self.a_multiplier, self.a_shift, self.b_multiplier,
                self.b_shift, self.out_multiplier, self.out_shift, self.act_min, self.act_max]


def extend_to_4d(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """`shape` with leading 1s, as TFLite's RuntimeShape::ExtendedShape(4, ...)."""
    full = (1,) * (4 - len(shape)) + tuple(int(d) for d in shape)
    return full[0], full[1], full[2], full[3]


def broadcast_strides(
    op: Operator, shape: tuple[int, int, int, int], out: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """Dense strides of `shape`, with 0 along every dim it broadcasts over."""
    strides = [0, 0, 0, 0]
    step = 1
    for d in range(3, -1, -1):
        if shape[d] == out[d]:
            strides[d] = step if shape[d] > 1 else 0
        elif shape[d] != 1:
            raise fail(op, f"shapes {shape} and {out} do not broadcast")
        step *= shape[d]
    return strides[0], strides[1], strides[2], strides[3]


def _multipliers(scale_a: float, scale_b: float, scale_out: float) -> list[tuple[int, int]]:
    """(significand, shift) for a, b and the output, in TFLite's double arithmetic."""
    twice_max = 2.0 * max(quant.as_double(scale_a), quant.as_double(scale_b))
    reals = [quant.as_double(scale_a) / twice_max, quant.as_double(scale_b) / twice_max,
             twice_max / ((1 << LEFT_SHIFT) * quant.as_double(scale_out))]
    return [quant.quantize_multiplier(r) for r in reals]


def prepare(op: Operator, graph: Graph) -> AddParams:
    if len(op.inputs) != 2 or min(op.inputs) < 0:
        raise fail(op, "expects exactly two inputs")
    a, b = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1])
    out = output_tensor(op, graph)
    for role, t in (("input 0", a), ("input 1", b), ("output", out)):
        require_int8_activation(op, t, role)
    if a.is_const and b.is_const:
        raise fail(op, "both operands are constant (fold it before conversion)")
    if max(len(a.shape), len(b.shape), len(out.shape)) > 4:
        raise fail(op, "tensors of rank above 4 are not supported")
    shape_a, shape_b = extend_to_4d(a.shape), extend_to_4d(b.shape)
    out4 = extend_to_4d(tuple(np.maximum(shape_a, shape_b)))
    if extend_to_4d(out.shape) != out4:
        raise fail(op, f"output shape {out.shape} is not the broadcast of {a.shape} and {b.shape}")
    (ma, sa), (mb, sb), (mo, so) = _multipliers(a.scale, b.scale, out.scale)
    if max(sa, sb, so) > 0:
        raise fail(op, "output scale is too small for TFLite's ADD (multiplier >= 1)")
    act_min, act_max = activation_bounds(op, out)
    return AddParams(
        out_shape=out4, a_strides=broadcast_strides(op, shape_a, out4),
        b_strides=broadcast_strides(op, shape_b, out4), a_offset=-a.zero_point,
        b_offset=-b.zero_point, out_offset=out.zero_point, a_multiplier=ma, a_shift=sa,
        b_multiplier=mb, b_shift=sb, out_multiplier=mo, out_shift=so, act_min=act_min,
        act_max=act_max, output_shape=tuple(out.shape), a_shape=tuple(a.shape),
        b_shape=tuple(b.shape),
        a_const=a.data.astype(np.int8) if a.is_const else None,
        b_const=b.data.astype(np.int8) if b.is_const else None,
    )


def _operands(params: AddParams, inputs: list) -> tuple:
    """(a, b) from the dynamic inputs and the constants kept in params."""
    dynamic = iter(inputs)
    a = params.a_const if params.a_const is not None else next(dynamic)
    b = params.b_const if params.b_const is not None else next(dynamic)
    return a, b


def _scaled(q: np.ndarray, offset: int, multiplier: int, shift: int) -> np.ndarray:
    shifted = (q.astype(np.int64) + offset) * (1 << LEFT_SHIFT)
    return quant.multiply_by_quantized_multiplier_smaller_than_one_exp(shifted, multiplier, shift)


def reference(params: AddParams, inputs: list[np.ndarray]) -> np.ndarray:
    a, b = _operands(params, inputs)
    a4 = np.asarray(a).reshape(extend_to_4d(params.a_shape))
    b4 = np.asarray(b).reshape(extend_to_4d(params.b_shape))
    total = (_scaled(a4, params.a_offset, params.a_multiplier, params.a_shift)
             + _scaled(b4, params.b_offset, params.b_multiplier, params.b_shift))
    raw = quant.multiply_by_quantized_multiplier_smaller_than_one_exp(
        total, params.out_multiplier, params.out_shift) + params.out_offset
    out = np.clip(raw, params.act_min, params.act_max).astype(np.int8)
    return np.broadcast_to(out, params.out_shape).reshape(params.output_shape)


def emit(params: AddParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    exprs = []
    dynamic = iter(inputs)
    for name, const in (("add_a", params.a_const), ("add_b", params.b_const)):
        exprs.append(ctx.const_array(name, const) if const is not None else next(dynamic))
    return (
        "{\n"
        f"  static const mt::AddParams p = {c_int_list(params.fields())};\n"
        f"  {kernel_name(ctx, 'add_s8')}(p, {exprs[0]}, {exprs[1]}, {output}"
        f"{variant_args(ctx, params)});\n"
        "}\n"
    )


def row_geometry(params: AddParams) -> list[RowGeometry] | None:
    """Row y of the output reads row y of both operands, when neither is constant nor
    broadcast and there is one batch."""
    same = params.a_shape == params.b_shape == params.output_shape
    if params.a_const is not None or params.b_const is not None or not same:
        return None
    if len(params.output_shape) != 4 or params.output_shape[0] != 1:
        return None
    rows = params.output_shape[1]
    return [RowGeometry(in_h=rows, out_h=rows), RowGeometry(in_h=rows, out_h=rows)]


def emit_rows(params: AddParams, ctx: EmitContext, windows: list[str], output: str, y0: str,
              y1: str) -> str:
    # A band of rows is a shorter tensor of the same row layout: only out_shape[1] changes.
    row_bytes = params.out_shape[2] * params.out_shape[3]
    a, b = (window_row(w, y0, row_bytes) for w in windows)
    return (
        "{\n"
        f"  static const mt::AddParams p = {c_int_list(params.fields())};\n"
        "  auto band = p;\n"
        f"  band.out_shape[1] = {y1} - {y0};\n"
        f"  {kernel_name(ctx, 'add_s8')}(band, {a}, {b}, {output}{variant_args(ctx, params)});\n"
        "}\n"
    )


def macs(params: AddParams) -> int:
    return 0


def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    a, b = const_or_dynamic(fx, p, ins)
    return activation(a + b, p.op.options)


def _dynamic_operands(params: AddParams) -> int:
    return (params.a_const is None) + (params.b_const is None)


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.AddOptions, opt.activation_only(tflite.AddOptions))

OP = register(OpDef("ADD", prepare, reference, emit, macs, header="kernels/add.h",
                    float_forward=float_forward,
                    identity_gradient=identity_backward(_dynamic_operands),
                    fused_activation=True, options=OPTIONS,
                    rows=RowRule(geometry=row_geometry, emit=emit_rows)))


# ---- the Cortex-M7 variant (firmware/kernels/add_m7.h) ----


def m7_tables(p: AddParams) -> np.ndarray:
    """int32 [2, 256]: each operand's scaled value ((q + offset) << 20 onto the common scale, as
    the reference computes it) for every uint8 bit pattern of q."""
    q = np.arange(256, dtype=np.uint8).view(np.int8)
    return np.stack([_scaled(q, p.a_offset, p.a_multiplier, p.a_shift),
                     _scaled(q, p.b_offset, p.b_multiplier, p.b_shift)]).astype(np.int32)


def m7_requant(p: AddParams, tables: np.ndarray) -> np.ndarray | None:
    """The output stage's short form {multiplier, right shift, constant} (requantize_m7.h), or
    None where it would not be exact: a shift that is not negative, a sum of scaled operands
    that may reach 2^29, or a constant outside m7.SHORT_FORM_CONSTANT."""
    right = -int(p.out_shift)
    reach = int(np.abs(tables[0].astype(np.int64)).max() + np.abs(tables[1].astype(np.int64)).max())
    if right < 1 or reach >= m7.BOUNDED_ACCUMULATOR:
        return None
    constant = (1 << (right - 1)) + int(p.out_offset) * (1 << right)
    if abs(constant) > m7.SHORT_FORM_CONSTANT:
        return None
    return np.array([p.out_multiplier, right, constant], dtype=np.int32)


def m7_constants(p: AddParams, ctx: Any) -> str:
    tables = m7_tables(p)
    symbol = ctx.const_array("add_m7_tables", tables.reshape(-1))
    short = m7_requant(p, tables)
    requant = "nullptr" if short is None else ctx.const_array("add_m7_requant", short)
    return f", {symbol}, {requant}"


def m7_serves(p: AddParams, n_train: int) -> bool:
    """Both operands of the output's shape, read straight through (no broadcast)."""
    return p.a_shape == p.b_shape == p.output_shape


M7 = register_variant("ADD", KernelVariant("m7", "mt::m7", header="kernels/add_m7.h",
                                           serves=m7_serves, constants=m7_constants))
