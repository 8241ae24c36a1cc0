"""CONV_2D with int8 activations, int8 weights (per-channel or per-tensor) and int32 bias.

Bit-exact with TFLite's reference_integer_ops::ConvPerChannel, including grouped convolution
(input channels a multiple of the filter's). Kernel: firmware/kernels/conv2d.h.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph import Graph, Operator
from . import common
from .base import EmitContext, OpDef, register


@dataclass(frozen=True, eq=False)
class Conv2dParams:
    op_index: int
    input_shape: tuple[int, int, int, int]  # NHWC
    output_shape: tuple[int, int, int, int]  # NHWC
    filter: np.ndarray  # int8 [out_c, filter_h, filter_w, filter_c]
    bias: np.ndarray | None  # int32 [out_c]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int]  # leading padding (top, left)
    input_offset: int
    output_offset: int
    multiplier: np.ndarray  # int32 [out_c]
    shift: np.ndarray  # int32 [out_c]
    act_min: int
    act_max: int


def prepare(op: Operator, graph: Graph) -> Conv2dParams:
    x = common.tensor_at(op, graph, 0)
    if x is None:
        raise common.fail(op, "input is missing")
    y = common.output_tensor(op, graph)
    common.require_int8_activation(op, x, "input")
    common.require_int8_activation(op, y, "output")
    w = common.require_const(op, common.tensor_at(op, graph, 1), "filter", "int8")
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise common.fail(op, f"needs a 4-D input and filter, got {x.shape} and {w.shape}")
    n, in_h, in_w, in_c = x.shape
    out_c, f_h, f_w, f_c = w.shape
    if f_c < 1 or in_c % f_c != 0 or out_c % (in_c // f_c) != 0:
        raise common.fail(op, f"filter {w.shape} does not fit {in_c} input channels")
    scales = common.filter_quant(op, w, out_c, axis=0)
    stride = (common.positive_option(op, "stride_h"), common.positive_option(op, "stride_w"))
    dilation = (common.positive_option(op, "dilation_h"), common.positive_option(op, "dilation_w"))
    try:
        win = common.compute_window(str(op.options.get("padding", "SAME")), (in_h, in_w),
                                    (f_h, f_w), stride, dilation)
    except ValueError as exc:
        raise common.fail(op, str(exc)) from None
    out_shape = (n, win.out_h, win.out_w, out_c)
    common.check_output_shape(op, y, out_shape)
    multiplier, shift = common.per_channel_multipliers(x.scale, scales, y.scale, out_c)
    act_min, act_max = common.activation_bounds(op, y)
    return Conv2dParams(
        op_index=op.index, input_shape=(n, in_h, in_w, in_c), output_shape=out_shape,
        filter=np.asarray(w.data, dtype=np.int8).reshape(w.shape),
        bias=common.optional_bias(op, graph, 2, out_c),
        stride=stride, dilation=dilation, pad=(win.pad_h, win.pad_w),
        input_offset=-x.zero_point, output_offset=y.zero_point,
        multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
    )


def accumulate(p: Conv2dParams, x: np.ndarray) -> np.ndarray:
    """int32 accumulators [N, H, W, out_c] (before bias); float64 matmuls are exact here since
    every partial sum stays far below 2**53."""
    out_hw = p.output_shape[1:3]
    out_c, f_h, f_w, f_c = p.filter.shape
    groups = p.input_shape[3] // f_c
    per_group = out_c // groups
    xp = common.padded_input(x.reshape(p.input_shape).astype(np.float64) + p.input_offset,
                             p.pad, (f_h, f_w), p.stride, p.dilation, out_hw)
    w = p.filter.astype(np.float64)
    acc = np.zeros(p.output_shape, dtype=np.float64)
    for fy in range(f_h):
        for fx in range(f_w):
            tap = common.window_tap(xp, (fy, fx), p.stride, p.dilation, out_hw)
            for g in range(groups):
                cin, cout = slice(g * f_c, (g + 1) * f_c), slice(g * per_group, (g + 1) * per_group)
                acc[..., cout] += tap[..., cin] @ w[cout, fy, fx, :].T
    return acc.astype(np.int64)


def reference(p: Conv2dParams, inputs: list[np.ndarray]) -> np.ndarray:
    acc = accumulate(p, inputs[0])
    if p.bias is not None:
        acc = acc + p.bias
    return common.requantize(common.wrap_int32(acc), p.multiplier, p.shift, p.output_offset,
                             p.act_min, p.act_max)


def emit(p: Conv2dParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    tag = f"op{p.op_index}_conv2d"
    filt = ctx.const_array(f"{tag}_filter", p.filter)
    bias = "nullptr" if p.bias is None else ctx.const_array(f"{tag}_bias", p.bias)
    mult = ctx.const_array(f"{tag}_multiplier", p.multiplier.astype(np.int32))
    shift = ctx.const_array(f"{tag}_shift", p.shift.astype(np.int32))
    n, in_h, in_w, in_c = p.input_shape
    _, out_h, out_w, out_c = p.output_shape
    _, f_h, f_w, f_c = p.filter.shape
    fields: list[tuple[str, object]] = [
        ("batches", n), ("input_h", in_h), ("input_w", in_w), ("input_c", in_c),
        ("filter_h", f_h), ("filter_w", f_w), ("filter_c", f_c),
        ("output_h", out_h), ("output_w", out_w), ("output_c", out_c),
        ("stride_h", p.stride[0]), ("stride_w", p.stride[1]),
        ("dilation_h", p.dilation[0]), ("dilation_w", p.dilation[1]),
        ("pad_h", p.pad[0]), ("pad_w", p.pad[1]),
        ("input_offset", p.input_offset), ("output_offset", p.output_offset),
        ("multiplier", mult), ("shift", shift), ("act_min", p.act_min), ("act_max", p.act_max),
    ]
    init = common.struct_init("mt::Conv2dParams", "kParams", fields)
    call = f"mt::ref::conv2d_s8(kParams, {inputs[0]}, {filt}, {bias}, {output});"
    return "{\n" + init + "\n" + call + "\n}"


def macs(p: Conv2dParams) -> int:
    _, f_h, f_w, f_c = p.filter.shape
    return common.flat_size(p.output_shape) * f_h * f_w * f_c


OPDEF = register(OpDef("CONV_2D", prepare, reference, emit, macs, header="kernels/conv2d.h"))
