"""AVERAGE_POOL_2D and MAX_POOL_2D (int8, NHWC), as TFLite's reference pooling kernels.

Padding is resolved here (TFLite's ComputePaddingHeightWidth); windows are clipped at the borders
and padded positions are neither summed nor counted. The quotient of the average is rounded half
away from zero by integer division. Pooling does not requantize: TFLite assumes equal input and
output quantization (a debug check only), and we reject models where they differ. macs() is 0.

Backward (training): AVERAGE_POOL_2D spreads dy[w] * round(4096 / count[w]) over each window;
MAX_POOL_2D routes dy[w] to the first maximal input of its window (so it keeps its input).
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
    FloatForward,
    GradRef,
    KernelVariant,
    OpDef,
    TrainEmit,
    TrainSlot,
    backward_key,
    c_int_list,
    kernel_name,
    register,
    register_variant,
)
from .common import (
    activation_bounds,
    compute_window,
    fail,
    output_tensor,
    require_int8_activation,
    tensor_at,
)
from .float_common import activation, tf_module
from .train_math import F32, QGrad, XorShift32, grad_requantize


@dataclass(frozen=True)
class PoolParams:
    """Fields in the order of mt::PoolParams (firmware/kernels/pooling.h)."""

    batches: int
    in_h: int
    in_w: int
    channels: int
    out_h: int
    out_w: int
    filter_h: int
    filter_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    act_min: int
    act_max: int

    def fields(self) -> list[int]:
        return [self.batches, self.in_h, self.in_w, self.channels, self.out_h, self.out_w,
                self.filter_h, self.filter_w, self.stride_h, self.stride_w, self.pad_h,
                self.pad_w, self.act_min, self.act_max]


def _int_option(op: Operator, key: str) -> int:
    value = op.options.get(key)
    if value is None or int(value) < 1:
        raise fail(op, f"option {key}={value!r} must be a positive integer")
    return int(value)


def _check_windows_nonempty(op: Operator, p: PoolParams) -> None:
    """Every window must overlap the input, or the average would divide by zero."""
    for size, out, filt, stride, pad in ((p.in_h, p.out_h, p.filter_h, p.stride_h, p.pad_h),
                                         (p.in_w, p.out_w, p.filter_w, p.stride_w, p.pad_w)):
        if out < 1:
            raise fail(op, "the window is larger than the input: the output would be empty")
        origins = np.arange(out) * stride - pad
        if np.any(origins >= size) or np.any(origins + filt <= 0):
            raise fail(op, "a pooling window lies entirely outside the input")


def prepare(op: Operator, graph: Graph) -> PoolParams:
    x = tensor_at(op, graph, 0)
    if x is None or x.is_const:
        raise fail(op, "expects one non-constant input")
    out = output_tensor(op, graph)
    require_int8_activation(op, x, "input")
    require_int8_activation(op, out, "output")
    if len(x.shape) != 4:
        raise fail(op, f"input must be 4-D NHWC, got shape {x.shape}")
    if abs(x.scale - out.scale) > 1e-6 or x.zero_point != out.zero_point:
        raise fail(op, "input and output quantization differ (TFLite pooling does not rescale)")
    filt = (_int_option(op, "filter_h"), _int_option(op, "filter_w"))
    stride = (_int_option(op, "stride_h"), _int_option(op, "stride_w"))
    padding = str(op.options.get("padding", ""))
    if padding not in ("SAME", "VALID"):
        raise fail(op, f"padding {padding!r} is not supported (SAME, VALID)")
    n, h, w, c = (int(d) for d in x.shape)
    win = compute_window(padding, (h, w), filt, stride)
    if tuple(out.shape) != (n, win.out_h, win.out_w, c):
        raise fail(op, f"output shape {out.shape} disagrees with the computed "
                       f"{(n, win.out_h, win.out_w, c)}")
    act_min, act_max = activation_bounds(op, out)
    params = PoolParams(n, h, w, c, win.out_h, win.out_w, filt[0], filt[1], stride[0], stride[1],
                        win.pad_h, win.pad_w, act_min, act_max)
    _check_windows_nonempty(op, params)
    return params


def _windows(p: PoolParams, x: np.ndarray):
    """Yield (oy, ox, window) with window = the clipped input patch [N, h, w, C] as int32."""
    for oy in range(p.out_h):
        y0 = oy * p.stride_h - p.pad_h
        for ox in range(p.out_w):
            x0 = ox * p.stride_w - p.pad_w
            patch = x[:, max(y0, 0):min(y0 + p.filter_h, p.in_h),
                      max(x0, 0):min(x0 + p.filter_w, p.in_w), :]
            yield oy, ox, patch.astype(np.int32)


def _divide_round_half_away(total: np.ndarray, count: int) -> np.ndarray:
    """C's truncating division after adding half the divisor away from zero."""
    num = np.where(total > 0, total + count // 2, total - count // 2)
    return np.sign(num) * (np.abs(num) // count)


def reference_avg(p: PoolParams, inputs: list[np.ndarray]) -> np.ndarray:
    x = np.asarray(inputs[0]).reshape(p.batches, p.in_h, p.in_w, p.channels)
    out = np.zeros((p.batches, p.out_h, p.out_w, p.channels), dtype=np.int64)
    for oy, ox, patch in _windows(p, x):
        count = patch.shape[1] * patch.shape[2]
        out[:, oy, ox, :] = _divide_round_half_away(patch.sum(axis=(1, 2)), count)
    return np.clip(out, p.act_min, p.act_max).astype(np.int8)


def reference_max(p: PoolParams, inputs: list[np.ndarray]) -> np.ndarray:
    x = np.asarray(inputs[0]).reshape(p.batches, p.in_h, p.in_w, p.channels)
    out = np.zeros((p.batches, p.out_h, p.out_w, p.channels), dtype=np.int64)
    for oy, ox, patch in _windows(p, x):
        out[:, oy, ox, :] = patch.max(axis=(1, 2))
    return np.clip(out, p.act_min, p.act_max).astype(np.int8)


def _emitter(kernel: str):
    def emit(params: PoolParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
        return (
            "{\n"
            f"  static const mt::PoolParams p = {c_int_list(params.fields())};\n"
            f"  {kernel_name(ctx, kernel)}(p, {inputs[0]}, {output});\n"
            "}\n"
        )
    return emit


def macs(params: PoolParams) -> int:
    return 0


# ---- training (docs/training.md, "AVERAGE_POOL_2D", "MAX_POOL_2D") ----


def _bounds(p: PoolParams, oy: int, ox: int) -> tuple[int, int, int, int]:
    """The clipped window of one output position: rows [y0, y1), columns [x0, x1)."""
    y0, x0 = oy * p.stride_h - p.pad_h, ox * p.stride_w - p.pad_w
    return (max(y0, 0), min(y0 + p.filter_h, p.in_h), max(x0, 0), min(x0 + p.filter_w, p.in_w))


def average_weight(count: int) -> int:
    """round(4096 / count), half away from zero: one tap's share of an average."""
    return (4096 + count // 2) // count


def _dy(p: PoolParams, dy: QGrad) -> np.ndarray:
    return np.asarray(dy.data, np.int64).reshape(p.batches, p.out_h, p.out_w, p.channels)


def backward_avg(p: PoolParams, saved: list[np.ndarray | None], dy: QGrad, need_dx: list[bool],
                 slot: TrainSlot | None, lr: float, rng: XorShift32) -> list[QGrad | None]:
    if not need_dx[0]:
        return [None]
    g = _dy(p, dy)
    acc = np.zeros((p.batches, p.in_h, p.in_w, p.channels), np.int64)
    for oy in range(p.out_h):
        for ox in range(p.out_w):
            y0, y1, x0, x1 = _bounds(p, oy, ox)
            weight = average_weight((y1 - y0) * (x1 - x0))
            acc[:, y0:y1, x0:x1, :] += (g[:, oy, ox, :] * weight)[:, None, None, :]
    return [grad_requantize(acc, F32(dy.scale) / F32(4096.0))]


def backward_max(p: PoolParams, saved: list[np.ndarray | None], dy: QGrad, need_dx: list[bool],
                 slot: TrainSlot | None, lr: float, rng: XorShift32) -> list[QGrad | None]:
    if not need_dx[0]:
        return [None]
    if saved[0] is None:
        raise ValueError("MAX_POOL_2D backward needs the saved forward input")
    x = np.asarray(saved[0]).reshape(p.batches, p.in_h, p.in_w, p.channels)
    g = _dy(p, dy)
    acc = np.zeros(x.shape, np.int64)
    n_idx, c_idx = np.meshgrid(np.arange(p.batches), np.arange(p.channels), indexing="ij")
    for oy in range(p.out_h):
        for ox in range(p.out_w):
            y0, y1, x0, x1 = _bounds(p, oy, ox)
            patch = x[:, y0:y1, x0:x1, :].reshape(p.batches, -1, p.channels)
            first = np.argmax(patch, axis=1)  # argmax returns the first maximum in scan order
            ys, xs = y0 + first // (x1 - x0), x0 + first % (x1 - x0)
            np.add.at(acc, (n_idx, ys, xs, c_idx), g[:, oy, ox, :])
    return [grad_requantize(acc, F32(dy.scale))]


def window_overlap(p: PoolParams) -> int:
    """The most windows any input position belongs to."""
    rows = np.zeros(p.in_h, np.int64)
    cols = np.zeros(p.in_w, np.int64)
    for oy in range(p.out_h):
        y0, y1, _, _ = _bounds(p, oy, 0)
        rows[y0:y1] += 1
    for ox in range(p.out_w):
        _, _, x0, x1 = _bounds(p, 0, ox)
        cols[x0:x1] += 1
    return int(rows.max() * cols.max())


def avg_grad_depth(p: PoolParams) -> int:
    """Equivalent K of the int32 sum: max over inputs of sum of window weights (each <= 4096,
    dy <= 8191), expressed in units of 128 for the compiler's 8191 * 128 * K < 2^31 check."""
    total = np.zeros((p.in_h, p.in_w), np.int64)
    for oy in range(p.out_h):
        for ox in range(p.out_w):
            y0, y1, x0, x1 = _bounds(p, oy, ox)
            total[y0:y1, x0:x1] += average_weight((y1 - y0) * (x1 - x0))
    return -(-int(total.max()) // 128)


def _backward_emitter(kernel: str, with_input: bool):
    def emit(params: PoolParams, ctx: EmitContext, saved: list[str | None], dy: GradRef,
             dx: list[GradRef | None], train: TrainEmit | None) -> str:
        if dx[0] is None:
            return ""
        args = [saved[0]] if with_input else []
        if with_input and saved[0] is None:
            raise ValueError("MAX_POOL_2D backward needs the saved forward input")
        args += [dy.data(), dy.scale, dx[0].buffer]
        return (
            "{\n"
            f"  static const mt::PoolParams p = {c_int_list(params.fields())};\n"
            f"  {dx[0].scale} = {kernel_name(ctx, kernel)}(p, {', '.join(args)});\n"
            "}\n"
        )
    return emit


AVG_BACKWARD = BackwardDef(
    reference=backward_avg, emit=_backward_emitter("avg_pool_backward", False),
    saves_input=lambda p, slot: [False], input_grad_depth=avg_grad_depth)
MAX_BACKWARD = BackwardDef(
    reference=backward_max, emit=_backward_emitter("max_pool_backward", True),
    saves_input=lambda p, slot: [True], input_grad_depth=window_overlap)

def _float_pool(kind: str) -> FloatForward:
    def run(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
        tf = tf_module()
        o = p.op.options
        fn = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d
        y = fn(ins[0], ksize=[int(o["filter_h"]), int(o["filter_w"])],
               strides=[int(o["stride_h"]), int(o["stride_w"])], padding=str(o["padding"]))
        return activation(y, o)
    return run


def parse_options(op: Any) -> dict[str, Any]:
    """Pool2DOptions; required, as TFLite would run a missing table with a 0x0 filter."""
    o = opt.required(op, tflite.Pool2DOptions, "filter size")
    return {
        "padding": opt.padding(o.Padding()),
        "stride_h": int(o.StrideH()), "stride_w": int(o.StrideW()),
        "filter_h": int(o.FilterHeight()), "filter_w": int(o.FilterWidth()),
        "activation": opt.activation(o.FusedActivationFunction()),
    }


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.Pool2DOptions, parse_options)

AVG = register(OpDef("AVERAGE_POOL_2D", prepare, reference_avg, _emitter("avg_pool_s8"), macs,
                     header="kernels/pooling.h", float_forward=_float_pool("avg"),
                     backward=AVG_BACKWARD, fused_activation=True, options=OPTIONS))
MAX = register(OpDef("MAX_POOL_2D", prepare, reference_max, _emitter("max_pool_s8"), macs,
                     header="kernels/pooling.h", float_forward=_float_pool("max"),
                     backward=MAX_BACKWARD, fused_activation=True, options=OPTIONS))


# Cortex-M7 MAX_POOL_2D (firmware/kernels/pooling_m7.h): the forward four channels per word, so
# it serves channel counts divisible by 4; the backward serves every shape.
M7 = register_variant("MAX_POOL_2D", KernelVariant(
    "m7", "mt::m7", header="kernels/pooling_m7.h",
    serves=lambda p, n_train: p.channels % 4 == 0))
M7_BACKWARD = register_variant(backward_key("MAX_POOL_2D"), KernelVariant(
    "m7", "mt::m7", header="kernels/pooling_m7.h"))
