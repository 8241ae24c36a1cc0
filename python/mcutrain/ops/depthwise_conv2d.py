"""DEPTHWISE_CONV_2D with int8 activations, int8 weights (per-channel or per-tensor), int32 bias.

Bit-exact with TFLite's reference_integer_ops::DepthwiseConvPerChannel. Like TFLite, the depth
multiplier is derived from the channel counts (filter channels / input channels); the option in
the file is ignored. Kernel: firmware/kernels/depthwise_conv2d.h.

Training (docs/training.md): with `train` set, the first n_train output channels are read from
an SRAM copy laid out [kh][kw][n_train] (the 1HWC filter restricted to those channels) and the
bias optionally from SRAM; the backward rule is its OpDef's backward.
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
class DepthwiseConv2dParams:
    op_index: int
    input_shape: tuple[int, int, int, int]  # NHWC
    output_shape: tuple[int, int, int, int]  # NHWC
    filter: np.ndarray  # int8 [1, filter_h, filter_w, out_c]
    bias: np.ndarray | None  # int32 [out_c]
    depth_multiplier: int
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


def prepare(op: Operator, graph: Graph) -> DepthwiseConv2dParams:
    x, y = common.int8_input_output(op, graph)
    w = common.require_const(op, common.tensor_at(op, graph, 1), "filter", "int8")
    if len(x.shape) != 4 or len(w.shape) != 4 or w.shape[0] != 1:
        raise common.fail(op, f"needs a 4-D input and a [1, H, W, C] filter, got {x.shape} "
                              f"and {w.shape}")
    n, in_h, in_w, in_c = x.shape
    _, f_h, f_w, out_c = w.shape
    if in_c < 1 or out_c % in_c != 0:
        raise common.fail(op, f"filter channels {out_c} are not a multiple of input channels "
                              f"{in_c}")
    scales = common.filter_quant(op, w, out_c, axis=3)
    stride, dilation, win = common.conv_window(op, (in_h, in_w), (f_h, f_w), n * out_c)
    out_shape = (n, win.out_h, win.out_w, out_c)
    common.check_output_shape(op, y, out_shape)
    multiplier, shift = common.per_channel_multipliers(x.scale, scales, y.scale, out_c)
    act_min, act_max = common.activation_bounds(op, y)
    p = DepthwiseConv2dParams(
        op_index=op.index, input_shape=(n, in_h, in_w, in_c), output_shape=out_shape,
        filter=np.asarray(w.data, dtype=np.int8).reshape(w.shape),
        bias=common.optional_bias(op, graph, 2, out_c), depth_multiplier=out_c // in_c,
        stride=stride, dilation=dilation, pad=(win.pad_h, win.pad_w),
        input_offset=-x.zero_point, output_offset=y.zero_point,
        multiplier=multiplier, shift=shift, act_min=act_min, act_max=act_max,
        filter_scale=np.broadcast_to(scales, (out_c,)).astype(np.float32),
        input_scale=float(np.float32(x.scale)),
    )
    check_accumulator(p, op)
    return p


def check_accumulator(p: DepthwiseConv2dParams, op: Operator, n_train: int = 0) -> None:
    """depthwise_conv2d_s8 sums each channel's kh x kw taps in plain int32: refuse a bound
    beyond it."""
    taps = p.filter.reshape(-1, p.filter.shape[3]).T
    common.check_accumulator(op, taps, p.input_offset, n_train=n_train)


def accumulate(p: DepthwiseConv2dParams, x: np.ndarray) -> np.ndarray:
    """int32 accumulators [N, H, W, out_c] before bias."""
    out_hw = p.output_shape[1:3]
    _, f_h, f_w, _ = p.filter.shape
    xp = common.padded_input(x.reshape(p.input_shape).astype(np.int64) + p.input_offset,
                             p.pad, (f_h, f_w), p.stride, p.dilation, out_hw)
    # Output channel i * depth_multiplier + m reads input channel i: repeat each channel.
    xp = np.repeat(xp, p.depth_multiplier, axis=3)
    w = p.filter.astype(np.int64)
    acc = np.zeros(p.output_shape, dtype=np.int64)
    for fy in range(f_h):
        for fx in range(f_w):
            acc += common.window_tap(xp, (fy, fx), p.stride, p.dilation, out_hw) * w[0, fy, fx]
    return acc


def reference(p: DepthwiseConv2dParams, inputs: list[np.ndarray]) -> np.ndarray:
    acc = accumulate(p, inputs[0])
    if p.bias is not None:
        acc = acc + p.bias
    return common.requantize(common.wrap_int32(acc), p.multiplier, p.shift, p.output_offset,
                             p.act_min, p.act_max)


def _struct(p: DepthwiseConv2dParams, mult: str, shift: str,
            binding: TrainBinding | None) -> str:
    n, in_h, in_w, in_c = p.input_shape
    _, out_h, out_w, out_c = p.output_shape
    _, f_h, f_w, _ = p.filter.shape
    fields: list[tuple[str, object]] = [
        ("batches", n), ("input_h", in_h), ("input_w", in_w), ("input_c", in_c),
        ("filter_h", f_h), ("filter_w", f_w),
        ("output_h", out_h), ("output_w", out_w), ("output_c", out_c),
        ("depth_multiplier", p.depth_multiplier),
        ("stride_h", p.stride[0]), ("stride_w", p.stride[1]),
        ("dilation_h", p.dilation[0]), ("dilation_w", p.dilation[1]),
        ("pad_h", p.pad[0]), ("pad_w", p.pad[1]),
        ("input_offset", p.input_offset), ("output_offset", p.output_offset),
        ("multiplier", mult), ("shift", shift), ("act_min", p.act_min), ("act_max", p.act_max),
        *param_train.struct_train_fields(binding),
    ]
    return common.struct_init("mt::DepthwiseConv2dParams", "kParams", fields)


def emit(p: DepthwiseConv2dParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    filt, bias, mult, shift = param_train.flash_constants(p, ctx, f"op{p.op_index}_dwconv2d")
    init = _struct(p, mult, shift, p.train)
    bias = param_train.forward_bias(p.train, bias)
    call = (f"{kernel_name(ctx, 'depthwise_conv2d_s8')}(kParams, {inputs[0]}, {filt}, {bias}, "
            f"{output}{variant_args(ctx, p)});")
    return "{\n" + init + "\n" + call + "\n}"


def macs(p: DepthwiseConv2dParams) -> int:
    _, f_h, f_w, _ = p.filter.shape
    return common.flat_size(p.output_shape) * f_h * f_w


# ---- training ----


def trainable_weights(p: DepthwiseConv2dParams, n_train: int) -> np.ndarray:
    """The SRAM copy of the trained channels: [kh, kw, n_train], channels innermost."""
    return np.ascontiguousarray(p.filter[0, :, :, :n_train])


def with_trained(p: DepthwiseConv2dParams, weights: np.ndarray | None,
                 bias: np.ndarray | None) -> DepthwiseConv2dParams:
    """Params whose filter has channels < n_train replaced by `weights` ([kh, kw, n_train])
    and whose bias is `bias` when given."""
    filt = p.filter.copy()
    _, f_h, f_w, _ = filt.shape
    if weights is not None and weights.size:
        n = weights.size // (f_h * f_w)
        filt[0, :, :, :n] = np.asarray(weights, dtype=np.int8).reshape(f_h, f_w, n)
    new_bias = p.bias if bias is None else np.asarray(bias, dtype=np.int32).copy()
    return dataclasses.replace(p, filter=filt, bias=new_bias)


def input_grad_acc(p: DepthwiseConv2dParams, filt: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """int64 [N, H, W, in_c]: each (folded) output gradient times its tap weight, summed over
    the depth multiplier into the input channel it read; taps in the padding are dropped."""
    out_hw = p.output_shape[1:3]
    _, f_h, f_w, out_c = filt.shape
    n, in_h, in_w, in_c = p.input_shape
    probe = np.zeros((1, in_h, in_w, 1), dtype=np.int8)
    pshape = common.padded_input(probe, p.pad, (f_h, f_w), p.stride, p.dilation, out_hw).shape
    accp = np.zeros((n, pshape[1], pshape[2], in_c), dtype=np.int64)
    d = np.asarray(dy, dtype=np.int64).reshape(p.output_shape)
    w = filt.astype(np.int64)
    for fy in range(f_h):
        for fx in range(f_w):
            view = common.window_tap(accp, (fy, fx), p.stride, p.dilation, out_hw)
            prod = (d * w[0, fy, fx]).reshape((*view.shape[:3], in_c, p.depth_multiplier))
            view += prod.sum(axis=-1)
    return accp[:, p.pad[0]:p.pad[0] + in_h, p.pad[1]:p.pad[1] + in_w, :]


def weight_grad(p: DepthwiseConv2dParams, x: np.ndarray, dy: np.ndarray,
                n_train: int) -> np.ndarray:
    """int64 [kh, kw, n_train]: GW = sum over positions of dy[pos, o] * (x[.., o / dm] - zx)."""
    out_hw = p.output_shape[1:3]
    _, f_h, f_w, out_c = p.filter.shape
    xp = common.padded_input(x.reshape(p.input_shape).astype(np.int64) + p.input_offset,
                             p.pad, (f_h, f_w), p.stride, p.dilation, out_hw)
    d = np.asarray(dy, dtype=np.int64).reshape(-1, out_c)[:, :n_train]
    gw = np.zeros((f_h, f_w, n_train), dtype=np.int64)
    for fy in range(f_h):
        for fx in range(f_w):
            tap = common.window_tap(xp, (fy, fx), p.stride, p.dilation, out_hw)
            tap = np.repeat(tap.reshape(-1, p.input_shape[3]), p.depth_multiplier, axis=1)
            gw[fy, fx] = (d * tap[:, :n_train]).sum(axis=0)
    return gw


GEOMETRY = param_train.Geometry(input_grad_acc, weight_grad, channel_axis=2,
                                with_trained=with_trained)


def input_grad_depth(p: DepthwiseConv2dParams) -> int:
    _, f_h, f_w, _ = p.filter.shape
    return p.depth_multiplier * f_h * f_w


def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    tf = tf_module()
    o = p.op.options
    w = fx.variable(step, "weights")  # [1, kh, kw, in_c * mult], channel = i * mult + m
    in_c = int(fx.graph.tensors[p.inputs[0]].shape[-1])
    kh, kw, out_c = (int(d) for d in w.shape[1:])
    w = tf.reshape(w[0], [kh, kw, in_c, out_c // in_c])
    y = tf.nn.depthwise_conv2d(
        ins[0], w, strides=[1, int(o["stride_h"]), int(o["stride_w"]), 1],
        padding=str(o["padding"]),
        dilations=[int(o.get("dilation_h", 1)), int(o.get("dilation_w", 1))])
    return activation(y + fx.variable(step, "bias"), o)


def parse_options(op: Any) -> dict[str, Any]:
    """DepthwiseConv2DOptions; required, as TFLite would run a missing table with stride 0."""
    o = opt.required(op, tflite.DepthwiseConv2DOptions, "strides")
    return {
        "padding": opt.padding(o.Padding()),
        "stride_h": int(o.StrideH()), "stride_w": int(o.StrideW()),
        "dilation_h": int(o.DilationHFactor()), "dilation_w": int(o.DilationWFactor()),
        "activation": opt.activation(o.FusedActivationFunction()),
        "depth_multiplier": int(o.DepthMultiplier()),
    }


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.DepthwiseConv2DOptions, parse_options)

OPDEF = param_train.register_weighted(param_train.WeightedOp(
    "DEPTHWISE_CONV_2D", header="kernels/depthwise_conv2d.h", kernel="depthwise_conv2d",
    tag="dwconv2d",
    prepare=prepare, reference=reference, emit=emit, macs=macs, float_forward=float_forward,
    struct=_struct, geometry=GEOMETRY, trainable_weights=trainable_weights,
    check_accumulator=check_accumulator, input_grad_depth=input_grad_depth,
    band_kernel="depthwise_conv2d_s8",
    filter_channel_axis=3, options=OPTIONS))
BACKWARD = OPDEF.backward


def m7_folds_bias(p: DepthwiseConv2dParams) -> bool:
    """Whether the table's start values include the bias: a bias in flash (one that does not
    train), which the kernel then does not add again."""
    return p.bias is not None and (p.train is None or p.train.bias_symbol is None)


def m7_doubles_table(p: DepthwiseConv2dParams, requant: np.ndarray | None) -> bool:
    """Whether m7_table doubles its start values and weights (the kernel then saves the short
    form's doubling of every accumulator): a frozen layer whose bias is in the table, on the
    short form (`requant`, m7.requant_table), as mt::m7::depthwise_conv2d_s8 tests it."""
    n_train = p.train.n_train if p.train is not None else 0
    return n_train == 0 and m7_folds_bias(p) and requant is not None


def m7_table(p: DepthwiseConv2dParams, doubled: bool = False) -> np.ndarray:
    """The flash table of mt::m7::depthwise_conv2d_s8 (depthwise_conv2d_m7.h): per group of
    four channels, input_offset * (sum of each channel's taps) (plus the bias, when
    m7_folds_bias) as int32, then each tap's int16 weights as the words (c0, c2) and (c1, c3);
    all of it twice over when `doubled` (m7_doubles_table: |2 start| < 2^30 by the short form's
    bound, |2 w| <= 254)."""
    _, f_h, f_w, out_c = p.filter.shape
    groups = out_c // 4
    if groups == 0:
        return np.zeros(0, np.int32)
    w = p.filter.reshape(f_h * f_w, out_c)[:, :4 * groups].astype(np.int64)
    start = p.input_offset * w.sum(axis=0)
    if m7_folds_bias(p):
        start = start + np.asarray(p.bias, dtype=np.int64)[:4 * groups]
    if doubled:
        w, start = 2 * w, 2 * start
    start = common.wrap_int32(start)
    lanes = (w.reshape(-1, groups, 4)[:, :, [0, 2, 1, 3]] & 0xFFFF).astype(np.uint32)
    words = lanes[..., 0::2] | (lanes[..., 1::2] << 16)  # [taps, groups, 2]
    table = np.concatenate([np.asarray(start, np.int64).astype(np.uint32).reshape(groups, 4),
                            words.transpose(1, 0, 2).reshape(groups, -1)], axis=1)
    return table.view(np.int32).reshape(-1)


def m7_constants(p: DepthwiseConv2dParams, ctx: Any) -> str:
    """The kernel's table, `requant` and `bias_in_table` arguments."""
    taps = p.filter.reshape(-1, p.filter.shape[3]).T
    table = m7_table(p, m7_doubles_table(p, m7.requant_table(taps, p)))
    symbol = ctx.const_array(f"op{p.op_index}_dwconv2d_m7", table) if table.size else "nullptr"
    requant = m7.requant_arg(taps, p, ctx, f"op{p.op_index}_dwconv2d_requant")
    return f", {symbol}{requant}, {'true' if m7_folds_bias(p) else 'false'}"


# depthwise_conv2d_m7.h kDepthwiseRingMinWidth: shorter output rows run on the tap loop.
M7_RING_MIN_WIDTH = 16


def m7_ring_3x3(p: DepthwiseConv2dParams) -> bool:
    """mt::m7::DepthwiseRing3x3: a 3x3 layer at stride and dilation 1, at most one column of
    padding either side, whole groups of four channels and output rows of at least
    M7_RING_MIN_WIDTH runs on staged int16 rows."""
    _, f_h, f_w, out_c = p.filter.shape
    in_w, out_w = p.input_shape[2], p.output_shape[2]
    return ((f_h, f_w) == (3, 3) and p.stride == (1, 1) and p.dilation == (1, 1)
            and 0 <= p.pad[1] <= 1 and out_w + 2 - p.pad[1] <= in_w + 1 and out_c % 4 == 0
            and out_w >= M7_RING_MIN_WIDTH)


def m7_scratch_bytes(p: DepthwiseConv2dParams) -> int:
    """mt::m7::DepthwiseScratchBytes: a row of input zero points, rounded up to 4 bytes."""
    return -(-p.input_shape[3] // 4) * 4


# depthwise_conv2d_m7.h kDepthwiseRingTapWords: one channel's taps in one row order.
M7_RING_TAP_WORDS = 5


def m7_ring_scratch_bytes(p: DepthwiseConv2dParams) -> int:
    """mt::m7::DepthwiseRingScratchBytes: the staged rows of four channels (input_w + 2
    columns of four int16 lanes each) and their taps packed in three row orders (five words
    each)."""
    return 4 * (p.input_shape[2] + 2) * 4 * 2 + 4 * 3 * M7_RING_TAP_WORDS * 4


def m7_roomy_scratch(p: DepthwiseConv2dParams) -> tuple[int, ...]:
    """The ring's scratch for m7_ring_3x3 layers, planned where the arena has the room."""
    return (m7_ring_scratch_bytes(p),) if m7_ring_3x3(p) else ()


# depthwise_conv2d_m7.cc kMaxTaps: the tap pointer table of one output pixel.
M7_MAX_TAPS = 7 * 7


def m7_serves(p: DepthwiseConv2dParams, n_train: int) -> bool:
    """mt::m7::DepthwiseServes: depth multiplier 1, filters up to 7x7, and trained channels
    (which read their SRAM copy, not the flash table) ending within the whole groups of four."""
    _, f_h, f_w, out_c = p.filter.shape
    return (p.depth_multiplier == 1 and f_h * f_w <= M7_MAX_TAPS
            and -(-n_train // 4) * 4 <= out_c // 4 * 4)


M7 = register_variant("DEPTHWISE_CONV_2D", KernelVariant(
    "m7", "mt::m7", header="kernels/depthwise_conv2d_m7.h", scratch_bytes=m7_scratch_bytes,
    serves=m7_serves, constants=m7_constants, roomy_scratch=m7_roomy_scratch))


def m7_input_grad_scratch_bytes(p: DepthwiseConv2dParams) -> int:
    """mt::m7::DepthwiseInputGradScratchBytes: the ring of folded output-gradient rows one input
    row reads (4 channels, int16), one block's packed taps, and the table of the output column
    each tap of each input column reads (int16, rounded up to 4 bytes)."""
    _, f_h, f_w, _ = p.filter.shape
    columns = -(-(p.input_shape[2] * f_w) // 2) * 4
    return (_grad_ring_rows(p) * p.output_shape[2] + f_h * f_w) * 4 * 2 + columns


def _grad_ring_rows(p: DepthwiseConv2dParams) -> int:
    """mt::m7::DepthwiseGradRingRows: the output rows one input row's taps read."""
    f_h = p.filter.shape[1]
    return (f_h - 1) * p.dilation[0] // p.stride[0] + 1


# depthwise_conv2d_m7.cc kMaxFilterSide: the input gradient's table of filter rows.
M7_MAX_FILTER_ROWS = 7


def m7_backward_serves(p: DepthwiseConv2dParams, n_train: int) -> bool:
    """Depth multiplier 1 and filters up to 7 rows; the trained prefix is read from its SRAM
    copy like the rest."""
    return p.depth_multiplier == 1 and p.filter.shape[1] <= M7_MAX_FILTER_ROWS


def m7_backward_scratch(p: DepthwiseConv2dParams, need_dx: bool, n_train: int) -> int:
    """Only the input gradient takes scratch (the updates run the reference kernels)."""
    return m7_input_grad_scratch_bytes(p) if need_dx else 0


def m7_staged_input_grad_scratch_bytes(p: DepthwiseConv2dParams) -> int:
    """mt::m7::DepthwiseStagedInputGradScratchBytes: the above, then the high halves of the
    input gradient's int32 sums (int16 per value), so it is gathered once instead of twice."""
    return m7_input_grad_scratch_bytes(p) + 2 * int(np.prod(p.input_shape))


def m7_padded_input_grad_scratch_bytes(p: DepthwiseConv2dParams) -> int | None:
    """mt::m7::DepthwisePaddedInputGradScratchBytes: the staged scratch, then a ring whose rows
    have filter_w - 1 zero columns on either side (the tap loop then needs no column table);
    None where the width's stride or dilation is not 1."""
    if p.stride[1] != 1 or p.dilation[1] != 1:
        return None
    f_w = p.filter.shape[2]
    return (m7_staged_input_grad_scratch_bytes(p)
            + _grad_ring_rows(p) * (p.output_shape[2] + 2 * (f_w - 1)) * 4 * 2)


# depthwise_conv2d_m7.h kDepthwiseWideLanes: channels per block of the wide input gradient.
M7_WIDE_LANES = 32


def m7_wide_input_grad_scratch_bytes(p: DepthwiseConv2dParams) -> int | None:
    """mt::m7::DepthwiseWideInputGradScratchBytes: the staged scratch, then a zero-margined ring
    and packed taps M7_WIDE_LANES channels wide; None where the padded form does not apply."""
    if m7_padded_input_grad_scratch_bytes(p) is None:
        return None
    _, f_h, f_w, _ = p.filter.shape
    ring = _grad_ring_rows(p) * (p.output_shape[2] + 2 * (f_w - 1))
    return m7_staged_input_grad_scratch_bytes(p) + (ring + f_h * f_w) * M7_WIDE_LANES * 2


def m7_roomy_backward_scratch(p: DepthwiseConv2dParams, need_dx: bool,
                              n_train: int) -> tuple[int, ...]:
    """With room to spare, the input gradient runs staged, along a width of stride 1 with
    zero-margined ring rows given a little more, and with blocks of M7_WIDE_LANES channels
    given more again (fastest first)."""
    if not need_dx:
        return ()
    padded = m7_padded_input_grad_scratch_bytes(p)
    wide = m7_wide_input_grad_scratch_bytes(p)
    staged = m7_staged_input_grad_scratch_bytes(p)
    return (staged,) if padded is None or wide is None else (wide, padded, staged)


M7_BACKWARD = register_variant(backward_key("DEPTHWISE_CONV_2D"), KernelVariant(
    "m7", "mt::m7", header="kernels/depthwise_conv2d_m7.h",
    scratch_bytes=m7_input_grad_scratch_bytes, serves=m7_backward_serves,
    backward_scratch=m7_backward_scratch, roomy_backward_scratch=m7_roomy_backward_scratch))
