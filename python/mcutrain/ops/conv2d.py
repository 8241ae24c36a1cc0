"""CONV_2D with int8 activations, int8 weights (per-channel or per-tensor) and int32 bias.

Bit-exact with TFLite's reference_integer_ops::ConvPerChannel, including grouped convolution
(input channels a multiple of the filter's). Kernel: firmware/kernels/conv2d.h.

Training (docs/training.md): with `train` set, the first n_train output channels of the filter
(a contiguous prefix of OHWI) and optionally the bias are read from SRAM copies; the backward
rule (input gradient, bias and weight update) is its OpDef's backward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from ..frontend import options as opt
from ..frontend.graph import Graph, Operator
from . import common, m7, param_train
from .base import (
    EmitContext,
    FloatContext,
    KernelVariant,
    TrainBinding,
    backward_key,
    kernel_name,
    register_variant,
    variant_args,
)
from .float_common import activation, tf_module


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
    filter_scale: np.ndarray | None = None  # float32 [out_c] weight scales (per-tensor repeated)
    input_scale: float = 0.0
    train: TrainBinding | None = None  # trained channels / bias in SRAM (forward reads them)


def prepare(op: Operator, graph: Graph) -> Conv2dParams:
    x, y = common.int8_input_output(op, graph)
    w = common.require_const(op, common.tensor_at(op, graph, 1), "filter", "int8")
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise common.fail(op, f"needs a 4-D input and filter, got {x.shape} and {w.shape}")
    n, in_h, in_w, in_c = x.shape
    out_c, f_h, f_w, f_c = w.shape
    if f_c < 1 or in_c < f_c or in_c % f_c != 0 or out_c % (in_c // f_c) != 0:
        raise common.fail(op, f"filter {w.shape} does not fit {in_c} input channels")
    scales = common.filter_quant(op, w, out_c, axis=0)
    stride, dilation, win = common.conv_window(op, (in_h, in_w), (f_h, f_w), n * in_c)
    out_shape = (n, win.out_h, win.out_w, out_c)
    common.check_output_shape(op, y, out_shape)
    multiplier, shift = common.per_channel_multipliers(x.scale, scales, y.scale, out_c)
    act_min, act_max = common.activation_bounds(op, y)
    p = Conv2dParams(
        op_index=op.index, input_shape=(n, in_h, in_w, in_c), output_shape=out_shape,
        filter=np.asarray(w.data, dtype=np.int8).reshape(w.shape),
        bias=common.optional_bias(op, graph, 2, out_c),
        stride=stride, dilation=dilation, pad=(win.pad_h, win.pad_w),
        input_offset=-x.zero_point, output_offset=y.zero_point,
        multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
        filter_scale=np.broadcast_to(scales, (out_c,)).astype(np.float32),
        input_scale=float(np.float32(x.scale)),
    )
    check_accumulator(p, op)
    return p


def check_accumulator(p: Conv2dParams, op: Operator, n_train: int = 0) -> None:
    """conv2d_s8 sums each channel's OHWI row in plain int32: refuse a bound beyond it."""
    common.check_accumulator(op, p.filter.reshape(p.filter.shape[0], -1), p.input_offset,
                             n_train=n_train)


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


def _struct(p: Conv2dParams, mult: str, shift: str, binding: TrainBinding | None) -> str:
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
        *param_train.struct_train_fields(binding),
    ]
    return common.struct_init("mt::Conv2dParams", "kParams", fields)


def emit(p: Conv2dParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    filt, bias, mult, shift = param_train.flash_constants(p, ctx, f"op{p.op_index}_conv2d")
    init = _struct(p, mult, shift, p.train)
    bias = param_train.forward_bias(p.train, bias)
    call = (f"{kernel_name(ctx, 'conv2d_s8')}(kParams, {inputs[0]}, {filt}, {bias}, "
            f"{output}{variant_args(ctx, p)});")
    return "{\n" + init + "\n" + call + "\n}"


def macs(p: Conv2dParams) -> int:
    _, f_h, f_w, f_c = p.filter.shape
    return common.flat_size(p.output_shape) * f_h * f_w * f_c


# ---- training ----


def trainable_weights(p: Conv2dParams, n_train: int) -> np.ndarray:
    """The SRAM copy of the trained channels: the first n_train rows of the OHWI filter."""
    return p.filter[:n_train].copy()


def with_trained(p: Conv2dParams, weights: np.ndarray | None,
                 bias: np.ndarray | None) -> Conv2dParams:
    """Params whose filter has its first rows replaced by `weights` (SRAM layout) and whose
    bias is `bias` when given."""
    filt = p.filter.copy()
    if weights is not None and weights.size:
        n = weights.size // int(np.prod(filt.shape[1:]))
        filt[:n] = np.asarray(weights, dtype=np.int8).reshape((n, *filt.shape[1:]))
    new_bias = p.bias if bias is None else np.asarray(bias, dtype=np.int32).copy()
    return dataclasses.replace(p, filter=filt, bias=new_bias)


def _padded_shape(p: Conv2dParams) -> tuple[int, ...]:
    _, f_h, f_w, _ = p.filter.shape
    probe = np.zeros((1, *p.input_shape[1:3], 1), dtype=np.int8)
    shape = common.padded_input(probe, p.pad, (f_h, f_w), p.stride, p.dilation,
                                p.output_shape[1:3]).shape
    return (p.input_shape[0], shape[1], shape[2], p.input_shape[3])


def input_grad_acc(p: Conv2dParams, filt: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """int64 [N, H, W, in_c]: the transposed convolution of the (folded) output gradient;
    taps that fall in the padding are dropped. Exact in float64 (|sum| < 2^31)."""
    out_hw = p.output_shape[1:3]
    out_c, f_h, f_w, f_c = filt.shape
    groups = p.input_shape[3] // f_c
    per_group = out_c // groups
    accp = np.zeros(_padded_shape(p), dtype=np.float64)
    d = np.asarray(dy, dtype=np.float64).reshape(p.output_shape)
    w = filt.astype(np.float64)
    for fy in range(f_h):
        for fx in range(f_w):
            view = common.window_tap(accp, (fy, fx), p.stride, p.dilation, out_hw)
            for g in range(groups):
                cin, cout = slice(g * f_c, (g + 1) * f_c), slice(g * per_group, (g + 1) * per_group)
                view[..., cin] += d[..., cout] @ w[cout, fy, fx, :]
    _, in_h, in_w, _ = p.input_shape
    return accp[:, p.pad[0]:p.pad[0] + in_h, p.pad[1]:p.pad[1] + in_w, :].astype(np.int64)


def weight_grad(p: Conv2dParams, x: np.ndarray, dy: np.ndarray, n_train: int) -> np.ndarray:
    """int64 [n_train, kh, kw, f_c]: GW = sum over positions of dy[pos, o] * (x - zx)."""
    out_hw = p.output_shape[1:3]
    out_c, f_h, f_w, f_c = p.filter.shape
    per_group = out_c // (p.input_shape[3] // f_c)
    xp = common.padded_input(x.reshape(p.input_shape).astype(np.float64) + p.input_offset,
                             p.pad, (f_h, f_w), p.stride, p.dilation, out_hw)
    d = np.asarray(dy, dtype=np.float64).reshape(-1, out_c)
    gw = np.zeros((n_train, f_h, f_w, f_c), dtype=np.float64)
    for fy in range(f_h):
        for fx in range(f_w):
            tap = common.window_tap(xp, (fy, fx), p.stride, p.dilation, out_hw)
            tap = tap.reshape(-1, p.input_shape[3])
            for o0 in range(0, n_train, per_group):
                o1, c0 = min(o0 + per_group, n_train), (o0 // per_group) * f_c
                gw[o0:o1, fy, fx, :] = d[:, o0:o1].T @ tap[:, c0:c0 + f_c]
    return gw.astype(np.int64)


GEOMETRY = param_train.Geometry(input_grad_acc, weight_grad, channel_axis=0,
                                with_trained=with_trained)


def input_grad_depth(p: Conv2dParams) -> int:
    out_c, f_h, f_w, f_c = p.filter.shape
    return out_c // (p.input_shape[3] // f_c) * f_h * f_w


def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    tf = tf_module()
    o = p.op.options
    w = tf.transpose(fx.variable(step, "weights"), [1, 2, 3, 0])  # -> [kh, kw, in, out]
    y = tf.nn.conv2d(ins[0], w, strides=[1, int(o["stride_h"]), int(o["stride_w"]), 1],
                     padding=str(o["padding"]),
                     dilations=[1, int(o.get("dilation_h", 1)), int(o.get("dilation_w", 1)), 1])
    return activation(y + fx.variable(step, "bias"), o)


def parse_options(op: Any) -> dict[str, Any]:
    """Conv2DOptions; required, as TFLite would run a missing table with stride 0."""
    o = opt.required(op, tflite.Conv2DOptions, "strides")
    return {
        "padding": opt.padding(o.Padding()),
        "stride_h": int(o.StrideH()), "stride_w": int(o.StrideW()),
        "dilation_h": int(o.DilationHFactor()), "dilation_w": int(o.DilationWFactor()),
        "activation": opt.activation(o.FusedActivationFunction()),
    }


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.Conv2DOptions, parse_options)

OPDEF = param_train.register_weighted(param_train.WeightedOp(
    "CONV_2D", header="kernels/conv2d.h", kernel="conv2d", tag="conv2d",
    prepare=prepare, reference=reference, emit=emit, macs=macs, float_forward=float_forward,
    struct=_struct, geometry=GEOMETRY, trainable_weights=trainable_weights,
    check_accumulator=check_accumulator, input_grad_depth=input_grad_depth, options=OPTIONS,
    band_kernel="conv2d_s8", broadcast_dy=True))
BACKWARD = OPDEF.backward


def m7_scratch_bytes(p: Conv2dParams) -> int:
    """mt::m7::Conv2dScratchBytes: four int16 im2col columns, each rounded up to 4 values, and
    a fifth as the stage of a filter whose depth per tap is not a multiple of 4."""
    _, f_h, f_w, f_c = p.filter.shape
    columns = 4 if f_c % 4 == 0 else 5
    return columns * (-(-(f_h * f_w * f_c) // 4) * 4) * 2


def m7_serves(p: Conv2dParams, n_train: int) -> bool:
    """The Cortex-M7 kernel computes plain (ungrouped) convolution of any shape."""
    return p.filter.shape[3] == p.input_shape[3]


# conv2d_m7.h kConvNarrowPixels: pixels per pass of the depth-8 pointwise kernel.
M7_NARROW_PIXELS = 16


def m7_roomy_scratch(p: Conv2dParams) -> tuple[int, ...]:
    """mt::m7::Conv2dNarrowScratchBytes for a pointwise layer of depth 8 and more than 16
    outputs (mt::m7::Conv2dNarrow): sixteen pixels' columns, planned where the arena has the
    room."""
    out_c, f_h, f_w, f_c = p.filter.shape
    narrow = (f_h, f_w, f_c) == (1, 1, 8) and tuple(p.pad) == (0, 0) and out_c > 16
    return (M7_NARROW_PIXELS * f_c * 2,) if narrow else ()


def m7_table(p: Conv2dParams) -> tuple[np.ndarray | None, bool]:
    """The kernel's `requant` table and `bias_in_table`: ops/m7.py requant_table, whose rows
    lead with the bias (int32 [channels * 4 + 1]: {bias, multiplier, right shift, constant} per
    channel, then the same last word) for a frozen layer with a bias on the short form, so the
    channel loop reads a channel's bias with its constants."""
    table = m7.requant_table(p.filter.reshape(p.filter.shape[0], -1), p)
    frozen = p.train is None or (p.train.n_train == 0 and p.train.bias_symbol is None)
    if table is None or p.bias is None or not frozen:
        return table, False
    rows = table[:-1].reshape(-1, 3)
    bias = np.asarray(p.bias, dtype=np.int64).astype(np.int32).reshape(-1, 1)
    return np.concatenate([np.concatenate([bias, rows], axis=1).reshape(-1), table[-1:]]), True


def m7_constants(p: Conv2dParams, ctx: Any) -> str:
    """The kernel's `requant` and `bias_in_table` arguments (m7_table)."""
    table, bias_in_table = m7_table(p)
    if table is None:
        return ", nullptr, false"
    symbol = ctx.const_array(f"op{p.op_index}_conv2d_requant", table)
    return f", {symbol}, {'true' if bias_in_table else 'false'}"


M7 = register_variant("CONV_2D", KernelVariant(
    "m7", "mt::m7", header="kernels/conv2d_m7.h", scratch_bytes=m7_scratch_bytes,
    serves=m7_serves, constants=m7_constants, roomy_scratch=m7_roomy_scratch))


# conv2d_m7.h kConvGradMaxTaps: the input gradient folds one output-gradient row per tap.
M7_GRAD_MAX_TAPS = 7 * 7


def _grad_row_values(p: Conv2dParams) -> int:
    """mt::m7::Conv2dGradRowValues: a folded output-gradient row's int16 values (output
    channels rounded up to even, plus 2 when both channel ranges are odd)."""
    return (p.output_shape[3] + 2) // 2 * 2


def m7_input_grad_scratch_bytes(p: Conv2dParams) -> int:
    """mt::m7::Conv2dInputGradScratchBytes: one folded output-gradient row per tap, int16."""
    _, f_h, f_w, _ = p.filter.shape
    return f_h * f_w * _grad_row_values(p) * 2


def m7_weight_update_scratch_bytes(p: Conv2dParams) -> int:
    """mt::m7::Conv2dWeightUpdateScratchBytes: the int16 dy column of one trained channel over
    all pixels plus a 0, rounded up to even."""
    pixels = p.output_shape[0] * p.output_shape[1] * p.output_shape[2]
    return (pixels + 2) // 2 * 2 * 2


def m7_grad_scratch_bytes(p: Conv2dParams) -> int:
    """Enough for either backward kernel (what a step that computes both needs)."""
    return max(m7_input_grad_scratch_bytes(p), m7_weight_update_scratch_bytes(p))


def m7_backward_scratch(p: Conv2dParams, need_dx: bool, n_train: int) -> int:
    """A backward step's scratch: only the buffers of the kernels it runs."""
    return max(m7_input_grad_scratch_bytes(p) if need_dx else 0,
               m7_weight_update_scratch_bytes(p) if n_train > 0 else 0)


def _staged_high_bytes(p: Conv2dParams) -> int:
    """mt::m7::Conv2dStagedHighBytes: the high halves of the input gradient's int32 sums, one
    int16 per input value, which let it be gathered once instead of twice."""
    return 2 * int(np.prod(p.input_shape))


def m7_staged_input_grad_scratch_bytes(p: Conv2dParams) -> int:
    """mt::m7::Conv2dStagedInputGradScratchBytes: the rows, then the staged sums' high halves."""
    return m7_input_grad_scratch_bytes(p) + _staged_high_bytes(p)


# conv2d_m7.h kConvGradPixels: pixels per block of the pointwise and 1-D input gradients.
M7_GRAD_PIXELS = 4


def m7_pointwise_grad(p: Conv2dParams) -> bool:
    """mt::m7::Conv2dPointwiseGrad: 1x1, stride 1, no padding."""
    _, f_h, f_w, _ = p.filter.shape
    return (f_h, f_w) == (1, 1) and tuple(p.stride) == (1, 1) and tuple(p.pad) == (0, 0)


def m7_pointwise_input_grad_scratch_bytes(p: Conv2dParams) -> int:
    """mt::m7::Conv2dPointwiseInputGradScratchBytes: four folded rows interleaved, then the
    staged sums' high halves; the pointwise input gradient then runs four pixels at a time."""
    return M7_GRAD_PIXELS * _grad_row_values(p) * 2 + _staged_high_bytes(p)


def m7_line_grad(p: Conv2dParams) -> bool:
    """mt::m7::Conv2dLineGrad: a 1-D layer (one column or one row), stride 1, no dilation,
    more than one tap."""
    _, in_h, in_w, _ = p.input_shape
    _, out_h, out_w, _ = p.output_shape
    _, f_h, f_w, _ = p.filter.shape
    down = in_w == out_w == f_w == 1 and p.stride[0] == 1 and p.dilation[0] == 1
    across = in_h == out_h == f_h == 1 and p.stride[1] == 1 and p.dilation[1] == 1
    return (down or across) and f_h * f_w > 1


def m7_line_input_grad_scratch_bytes(p: Conv2dParams, n_train: int) -> int:
    """mt::m7::Conv2dLineInputGradScratchBytes: a sliding window of the folded output gradient,
    one line of Conv2dLineLength (a block's positions plus taps - 1) per output channel pair,
    then the staged sums' high halves; the 1-D input gradient then runs four positions at a
    time."""
    _, f_h, f_w, _ = p.filter.shape
    out_c = p.output_shape[3]
    pairs = (n_train + 1) // 2 + (out_c - n_train + 1) // 2
    return pairs * (M7_GRAD_PIXELS + f_h * f_w - 1) * 4 + _staged_high_bytes(p)


# conv2d_m7.h kTransposedMaxPositions: a channel's weight-gradient sum then fits int32.
M7_TRANSPOSED_MAX_POSITIONS = 1024


def m7_transposed_weight_grad(p: Conv2dParams) -> bool:
    """mt::m7::Conv2dTransposedWeightGrad: a single-image pointwise or 1-D layer of at most
    M7_TRANSPOSED_MAX_POSITIONS outputs, whose weight update can read its input transposed."""
    _, out_h, out_w, _ = p.output_shape
    return (p.input_shape[0] == 1 and (m7_pointwise_grad(p) or m7_line_grad(p))
            and out_h * out_w <= M7_TRANSPOSED_MAX_POSITIONS)


def m7_transposed_weight_update_scratch_bytes(p: Conv2dParams) -> int:
    """mt::m7::Conv2dTransposedWeightUpdateScratchBytes: the dy column, then one int16 row per
    input channel of the input positions plus the pair read one past, rounded up to even."""
    _, in_h, in_w, in_c = p.input_shape
    return m7_weight_update_scratch_bytes(p) + in_c * ((in_h * in_w + 2) // 2 * 2) * 2


def m7_roomy_backward_scratch(p: Conv2dParams, need_dx: bool, n_train: int) -> tuple[int, ...]:
    """With room to spare the input gradient runs staged, a pointwise or 1-D one also four
    pixels at a time, and the weight update of a single-image pointwise or 1-D layer reads its
    input transposed (fastest first: both kernels fast, then the input gradient alone)."""
    updates = n_train > 0
    column = m7_weight_update_scratch_bytes(p) if updates else 0
    transposed = (m7_transposed_weight_update_scratch_bytes(p)
                  if updates and m7_transposed_weight_grad(p) else 0)
    if not need_dx:
        return (transposed,) if transposed else ()
    sizes = [m7_staged_input_grad_scratch_bytes(p)]
    if m7_pointwise_grad(p):
        sizes.insert(0, m7_pointwise_input_grad_scratch_bytes(p))
    if m7_line_grad(p):
        sizes.insert(0, m7_line_input_grad_scratch_bytes(p, n_train))
    both = [max(s, transposed) for s in sizes] if transposed else []
    return tuple(dict.fromkeys([*both, *(max(s, column) for s in sizes)]))


def m7_backward_serves(p: Conv2dParams, n_train: int) -> bool:
    """Plain convolution up to 7x7 taps."""
    _, f_h, f_w, f_c = p.filter.shape
    return f_c == p.input_shape[3] and f_h * f_w <= M7_GRAD_MAX_TAPS


M7_BACKWARD = register_variant(backward_key("CONV_2D"), KernelVariant(
    "m7", "mt::m7", header="kernels/conv2d_m7.h", scratch_bytes=m7_grad_scratch_bytes,
    serves=m7_backward_serves, backward_scratch=m7_backward_scratch,
    roomy_backward_scratch=m7_roomy_backward_scratch))
