"""Backward pass shared by the weighted operators (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED).

docs/training.md, "Rules per operator": (1) input gradient with the old weights, (2) bias update,
(3) weight update. Each operator module supplies the two integer sums that depend on its
geometry (input-gradient accumulators, weight gradient in the SRAM copy's layout); everything
else (fold ratios, float32 update expressions, rounding, emitted C++) lives here, mirroring
firmware/kernels/param_update.h.

register_weighted() turns one WeightedOp description into the operator's whole OpDef (forward,
backward rule, training facts). Not an operator module: it registers nothing by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..frontend.options import OptionsDef
from . import rows
from .base import (
    BackwardDef,
    Emit,
    EmitContext,
    FloatForward,
    GradRef,
    Macs,
    OpDef,
    Prepare,
    Reference,
    RowRule,
    Trainable,
    TrainBinding,
    TrainEmit,
    TrainSlot,
    kernel_name,
    register,
    scratch_args,
    variant_args,
)
from .cxx import c_float
from .train_math import (
    F32,
    QGrad,
    XorShift32,
    grad_requantize,
    round_half_away_f32,
    round_update,
    saturate_bias,
    saturate_weight,
)

# (params, filter with trained channels substituted, folded dy as int64) -> int64 accumulators
InputGradFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]
# (params, saved input, dy int64, n_train) -> int64 weight gradient in the SRAM copy's layout
WeightGradFn = Callable[[Any, np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Geometry:
    """What the shared backward needs from one operator module."""

    input_grad: InputGradFn
    weight_grad: WeightGradFn
    channel_axis: int  # axis of the output channel in the weight gradient / SRAM copy
    with_trained: Callable[[Any, np.ndarray, np.ndarray | None], Any]


def flash_constants(p: Any, ctx: EmitContext, tag: str) -> tuple[str, str, str, str]:
    """Filter, bias (or nullptr), multipliers and shifts of a weighted operator, in flash."""
    filt = ctx.const_array(f"{tag}_filter", p.filter)
    bias = "nullptr" if p.bias is None else ctx.const_array(f"{tag}_bias", p.bias)
    mult = ctx.const_array(f"{tag}_multiplier", p.multiplier.astype(np.int32))
    shift = ctx.const_array(f"{tag}_shift", p.shift.astype(np.int32))
    return filt, bias, mult, shift


def channel_scales(p: Any) -> np.ndarray:
    """Weight scales sW as float32 [out_c] (a per-tensor scale repeated)."""
    out_c = p.multiplier.size
    return np.broadcast_to(np.asarray(p.filter_scale, dtype=np.float32), (out_c,)).copy()


def fold_ratio(p: Any) -> np.ndarray | None:
    """ratio[c] = float32(sW[c] / max(sW)); None when every ratio is 1 (per-tensor weights),
    where the fold is the identity and the kernels skip it."""
    sw = channel_scales(p).astype(np.float64)
    ratio = (sw / sw.max()).astype(np.float32)
    return None if np.all(ratio == F32(1.0)) else ratio


def max_scale(p: Any) -> np.float32:
    return F32(channel_scales(p).max())


def coefficients(p: Any, n_train: int, qas: bool) -> tuple[np.ndarray, np.ndarray]:
    """(w_coef float32 [n_train], bias_coef float32 [out_c]) per docs/training.md: under QAS
    1/sW[o] and 1/(sx*sW[o]), without sW[o] and sx*sW[o]. Computed in float32 (sx*sW[o] is
    rounded before its reciprocal): these are the constants the generated firmware holds."""
    sw = channel_scales(p)
    sx = F32(p.input_scale)
    if qas:
        w_coef, bias_coef = F32(1.0) / sw, F32(1.0) / (sx * sw)
    else:
        w_coef, bias_coef = sw.copy(), sx * sw
    return w_coef[:n_train].astype(np.float32), bias_coef.astype(np.float32)


def backward(
    p: Any, geo: Geometry, saved: list[np.ndarray | None], dy: QGrad, need_dx: list[bool],
    slot: TrainSlot | None, lr: float, rng: XorShift32,
) -> list[QGrad | None]:
    """The numpy training step of one weighted operator; updates `slot` in place."""
    out_c = p.multiplier.size
    d = np.asarray(dy.data, dtype=np.int64)
    n_train = slot.n_train if slot is not None and slot.weights is not None else 0
    dx: QGrad | None = None
    if need_dx and need_dx[0]:
        current = p if n_train == 0 else geo.with_trained(p, slot.weights, None)
        ratio = fold_ratio(p)
        folded = d if ratio is None else np.asarray(
            round_half_away_f32(d.astype(np.float32) * ratio), dtype=np.int64)
        acc = geo.input_grad(p, current.filter, folded)
        dx = grad_requantize(acc.astype(np.int32), F32(dy.scale) * max_scale(p))
    lr_dy = F32(lr) * F32(dy.scale)
    if slot is not None and slot.bias is not None:
        gb = d.reshape(-1, out_c).sum(axis=0).astype(np.float32)
        delta = (lr_dy * gb) * np.asarray(slot.bias_coef, dtype=np.float32)
        rounded = round_half_away_f32(delta)
        rounded = np.where(np.isfinite(rounded), rounded, np.float32(0))  # as UpdateBias
        new = slot.bias.astype(np.float64) - rounded.astype(np.float64)
        slot.bias[...] = saturate_bias(new).reshape(slot.bias.shape)
    if n_train > 0:
        x = saved[0] if saved else None
        if x is None:
            raise ValueError(f"operator {p.op_index}: weight update needs the saved input")
        gw = geo.weight_grad(p, x, d, n_train)
        coef = lr_dy * F32(p.input_scale)
        coef_o = coef * np.asarray(slot.w_coef, dtype=np.float32)[:n_train]
        shape = [1] * gw.ndim
        shape[geo.channel_axis] = n_train
        delta = gw.astype(np.float32) * coef_o.reshape(shape)
        step = round_update(delta, slot.stochastic, rng)
        step = np.where(np.isfinite(step), step, np.float32(0))  # as UpdateWeight
        w = slot.weights.reshape(gw.shape).astype(np.float32) - step
        slot.weights[...] = saturate_weight(w).reshape(slot.weights.shape)
    return [dx]


def struct_train_fields(binding: TrainBinding | None) -> list[tuple[str, object]]:
    """The params struct's trailing training fields (omitted: defaults, plain inference)."""
    if binding is None or binding.n_train == 0:
        return []
    if binding.weight_symbol is None:
        raise ValueError("a TrainBinding with n_train > 0 needs weight_symbol")
    return [("train_filter", binding.weight_symbol), ("n_train", binding.n_train)]


def forward_bias(binding: TrainBinding | None, flash_bias: str) -> str:
    """The bias pointer the forward kernel reads: the SRAM copy when the bias trains."""
    if binding is not None and binding.bias_symbol is not None:
        return binding.bias_symbol
    return flash_bias


def emit_backward(
    p: Any, ctx: Any, kernel: str, struct_init: str, filt: str, saved: list[str | None],
    dy: GradRef, dx: list[GradRef | None], train: TrainEmit | None, tag: str,
) -> str:
    """C++ for one weighted operator's backward step: <kernel>_input_grad (writes the int16
    gradient and returns its scale), <kernel>_bias_update, <kernel>_weight_update (in that
    order), from ctx's variant; the step's scratch, if its variant has any, is passed to all
    three (they run one after the other)."""
    lines = ["{", struct_init]
    target = dx[0] if dx else None
    if target is not None:
        ratio = fold_ratio(p)
        ratio_sym = "nullptr" if ratio is None else ctx.const_array(f"{tag}_fold", ratio)
        call = kernel_name(ctx, f"{kernel}_input_grad")
        lines.append(f"{target.scale} = {call}(kParams, {filt}, {dy.operand()}, {ratio_sym}, "
                     f"{dy.scale} * {c_float(max_scale(p))}, {target.data()}"
                     f"{scratch_args(ctx)});")
    binding = train.binding if train is not None else None
    trains_bias = binding is not None and binding.bias_symbol is not None
    trains_weights = binding is not None and binding.n_train > 0
    if trains_bias or trains_weights:
        lines.append(f"const float lr_dy = ({train.lr}) * {dy.scale};")
    if trains_bias:
        if train.bias_coef is None:
            raise ValueError(f"operator {p.op_index}: bias trains but bias_coef is missing")
        call = kernel_name(ctx, f"{kernel}_bias_update")
        lines.append(f"{call}(kParams, {dy.operand()}, lr_dy, "
                     f"{train.bias_coef}, {binding.bias_symbol}{scratch_args(ctx)});")
    if trains_weights:
        if not saved or saved[0] is None or train.w_coef is None:
            raise ValueError(f"operator {p.op_index}: weight update needs the saved input "
                             "and w_coef")
        call = kernel_name(ctx, f"{kernel}_weight_update")
        lines.append(f"{call}(kParams, {saved[0]}, {dy.operand()}, "
                     f"lr_dy * {c_float(p.input_scale)}, {train.w_coef}, {train.rounding}, "
                     f"{train.prng}, {binding.weight_symbol}{scratch_args(ctx)});")
    lines.append("}")
    return "\n".join(lines)


def saves_input(slot: TrainSlot | None) -> list[bool]:
    return [slot is not None and slot.n_train > 0]


# ---- one description per weighted operator ----


def _trains_anything(p: Any) -> None:
    return None


@dataclass(frozen=True)
class WeightedOp:
    """Everything a weighted operator's module supplies; register_weighted builds the rest
    (backward rule through backward()/emit_backward(), Trainable, fused activation)."""

    opcode: str
    header: str  # firmware header, e.g. "kernels/conv2d.h"
    kernel: str  # firmware kernel prefix: <kernel>_input_grad, _bias_update, _weight_update
    tag: str  # flash constants of operator i are named op<i>_<tag>_...
    prepare: Prepare
    reference: Reference
    emit: Emit
    macs: Macs
    float_forward: FloatForward
    # (params, multipliers symbol, shifts symbol, binding) -> the C++ kParams initialiser.
    struct: Callable[[Any, str, str, TrainBinding | None], str]
    geometry: Geometry
    trainable_weights: Callable[[Any, int], np.ndarray]
    check_accumulator: Callable[[Any, Any, int], None]
    input_grad_depth: Callable[[Any], int]
    filter_channel_axis: int = 0  # output-channel axis of the TFLite weight tensor
    # Raises ModelError when the prepared operator cannot train at all (checked by every
    # backward entry point).
    check_trainable: Callable[[Any], None] = _trains_anything
    options: OptionsDef | None = None  # its flatbuffer options (frontend/options.py)
    # The forward kernel when the operator can run by row bands (ops/rows.py), e.g. "conv2d_s8";
    # None: it runs whole only.
    band_kernel: str | None = None
    # Its backward kernels take a dy view (GradView), so a spatial MEAN after it need not store
    # its broadcast gradient (BackwardDef.broadcast_dy).
    broadcast_dy: bool = False


def _backward_def(d: WeightedOp) -> BackwardDef:
    def reference(p: Any, saved: list[np.ndarray | None], dy: QGrad, need_dx: list[bool],
                  slot: TrainSlot | None, lr: float, rng: XorShift32) -> list[QGrad | None]:
        d.check_trainable(p)
        return backward(p, d.geometry, saved, dy, need_dx, slot, lr, rng)

    def emit(p: Any, ctx: EmitContext, saved: list[str | None], dy: GradRef,
             dx: list[GradRef | None], train: TrainEmit | None) -> str:
        d.check_trainable(p)
        tag = f"op{p.op_index}_{d.tag}"
        filt, _, mult, shift = flash_constants(p, ctx, tag)
        binding = train.binding if train is not None else p.train
        return emit_backward(p, ctx, d.kernel, d.struct(p, mult, shift, binding), filt, saved,
                             dy, dx, train, tag)

    def saves(p: Any, slot: TrainSlot | None) -> list[bool]:
        d.check_trainable(p)
        return saves_input(slot)

    return BackwardDef(reference=reference, emit=emit, saves_input=saves,
                       input_grad_depth=d.input_grad_depth, int16_dx=True,
                       broadcast_dy=d.broadcast_dy)


def _row_rule(d: WeightedOp) -> RowRule | None:
    kernel = d.band_kernel
    if kernel is None:
        return None

    def emit(p: Any, ctx: EmitContext, windows: list[str], output: str, y0: str,
             y1: str) -> str:
        filt, bias, mult, shift = flash_constants(p, ctx, f"op{p.op_index}_{d.tag}")
        init = d.struct(p, mult, shift, p.train)
        return rows.emit_spatial_band(init, ctx, kernel, windows[0], filt,
                                      forward_bias(p.train, bias), output, y0, y1,
                                      variant_args(ctx, p))

    return RowRule(geometry=rows.spatial_geometry, emit=emit)


def register_weighted(d: WeightedOp) -> OpDef:
    """Register the OpDef of a weighted operator described by `d`."""
    facts = Trainable(d.trainable_weights, d.geometry.with_trained, d.check_accumulator,
                      filter_channel_axis=d.filter_channel_axis)
    return register(OpDef(d.opcode, d.prepare, d.reference, d.emit, d.macs, header=d.header,
                          float_forward=d.float_forward, backward=_backward_def(d),
                          fused_activation=True, trainable=facts, options=d.options,
                          rows=_row_rule(d)))
