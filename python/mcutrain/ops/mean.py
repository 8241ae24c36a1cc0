"""MEAN (int8): TFLite's quantized mean over constant axes, bit for bit.

What TFLite 2.21 runs (tensorflow/lite/kernels/reduce.cc, EvalMean): with the reference resolver
every int8 MEAN goes to reference_ops::QuantizedMeanOrSum, an all-integer recipe:

    sum    = sum of the n reduced int8 values (int32)
    M, s   = QuantizeMultiplier(input_scale / output_scale)         (Prepare, in double)
    k      = min(floor(log2 n), 32, 31 + s)
    M', s' = (M << k) / n (int64, truncated), s - k                 (1/n folded into M)
    out    = clamp(MultiplyByQuantizedMultiplier(sum - n * zp_in, M', s') + zp_out)

so there is no float and no separate rounding division (older TFLite releases took a float path,
and a special 4-D/axes {1, 2}/keep_dims branch; 2.21 has neither for the reference resolver).
TFLite Micro's int8 MEAN uses the same QuantizedMeanOrSum. The DEFAULT (optimized) resolver does
not: optimized_integer_ops::Mean for 4-D keep_dims axes {1, 2}, otherwise a float
QuantizedMeanOrSum; with TF 2.21 it differed by one step on up to 28% of the outputs that
test/test_ops_reduce_vs_tflite.py compares. The reference resolver is what we match.

The reduced axes must form one contiguous block once size-1 dimensions are ignored (NHWC axes
{1, 2}, [N, T, C] axis 1, all axes, ...), so the kernel sees [outer, reduce, inner]. The prepared
multiplier already includes 1/n, exactly as TFLite folds it at run time.
macs() counts one addition per input element (there are no multiplications in the sum).
Backward (training): dx is dy broadcast over the reduced block with scale dy.scale / n.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from ..frontend import options as opt
from ..frontend.graph import Graph, Operator
from . import quant
from .base import (
    BackwardDef,
    EmitContext,
    FloatContext,
    GradRef,
    KernelVariant,
    OpDef,
    TrainEmit,
    TrainSlot,
    kernel_name,
    register,
    register_variant,
)
from .common import (
    fail,
    output_tensor,
    require_int8_activation,
    struct_init,
    tensor_at,
    wrap_int32,
)
from .float_common import tf_module
from .train_math import F32, QGrad, XorShift32


@dataclass(frozen=True)
class MeanParams:
    """Fields in the order of mt::MeanParams (firmware/kernels/mean.h), plus host-only data."""

    outer: int  # product of the dimensions before the reduced block
    reduce: int  # n: number of values averaged into each output
    inner: int  # product of the dimensions after the reduced block
    input_zero_point: int
    output_zero_point: int
    multiplier: int  # Q31 significand of input_scale / output_scale / n (TFLite's folding)
    shift: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def fields(self) -> list[tuple[str, int]]:
        return [("outer", self.outer), ("reduce", self.reduce), ("inner", self.inner),
                ("input_zero_point", self.input_zero_point),
                ("output_zero_point", self.output_zero_point),
                ("multiplier", self.multiplier), ("shift", self.shift)]


def fold_count(significand: int, shift: int, count: int) -> tuple[int, int]:
    """Fold 1/count into a (significand, shift) pair as TFLite's QuantizedMeanOrSum does."""
    k = min(count.bit_length() - 1, 32, 31 + shift)
    if k < 0:
        raise ValueError("input_scale / output_scale is too small to represent")
    return (significand << k) // count, shift - k


def resolve_axes(op: Operator, axes: np.ndarray, rank: int) -> list[int]:
    """Axes made non-negative and unique, in order (TFLite's ResolveAxis)."""
    resolved: list[int] = []
    for a in (int(v) for v in np.asarray(axes).ravel()):
        current = a + rank if a < 0 else a
        if not 0 <= current < rank:
            raise fail(op, f"axis {a} is out of range for a rank-{rank} input")
        if current not in resolved:
            resolved.append(current)
    return resolved


def split_shape(op: Operator, shape: tuple[int, ...], axes: list[int]) -> tuple[int, int, int]:
    """(outer, reduce, inner) when the reduced axes are contiguous, ignoring size-1 dims."""
    significant = [d for d in range(len(shape)) if shape[d] != 1]
    reduced = [d for d in significant if d in axes]
    kept = [d for d in significant if d not in axes]
    if reduced and kept and any(min(reduced) < k < max(reduced) for k in kept):
        raise fail(op, f"axes {sorted(axes)} of shape {shape} are not one contiguous block; "
                       "only contiguous reductions (e.g. NHWC axes 1 and 2) are supported")
    first = min(reduced) if reduced else len(shape)
    outer = int(np.prod([shape[d] for d in kept if d < first], dtype=np.int64))
    inner = int(np.prod([shape[d] for d in kept if d > first], dtype=np.int64))
    count = int(np.prod([shape[d] for d in axes], dtype=np.int64))
    return outer, count, inner


def expected_output_shape(
    shape: tuple[int, ...], axes: list[int], keep_dims: bool
) -> tuple[int, ...]:
    if keep_dims:
        return tuple(1 if d in axes else n for d, n in enumerate(shape))
    return tuple(n for d, n in enumerate(shape) if d not in axes)


def prepare(op: Operator, graph: Graph) -> MeanParams:
    if len(op.inputs) != 2 or min(op.inputs) < 0:
        raise fail(op, "expects an input and an axes tensor")
    x, out = graph.tensor(op.inputs[0]), output_tensor(op, graph)
    require_int8_activation(op, x, "input")
    require_int8_activation(op, out, "output")
    axes_tensor = tensor_at(op, graph, 1)
    if axes_tensor is None or not axes_tensor.is_const:
        raise fail(op, "the axes input must be a constant tensor")
    if axes_tensor.dtype != "int32":
        raise fail(op, f"axes tensor is {axes_tensor.dtype}; expected int32")
    shape = tuple(int(d) for d in x.shape)
    axes = resolve_axes(op, axes_tensor.data, len(shape))
    if not axes:
        raise fail(op, "an empty axes list (a plain copy) is not supported")
    outer, count, inner = split_shape(op, shape, axes)
    # Like TFLite Micro, trust the element count rather than the exact output dims (keep_dims
    # only changes how the same values are shaped).
    if out.num_elements != outer * inner:
        expected = expected_output_shape(shape, axes, bool(op.options.get("keep_dims", False)))
        raise fail(op, f"output shape {tuple(out.shape)} differs from the computed {expected}")
    if count < 1:
        raise fail(op, "empty input tensors are not supported")
    if count > (2**31 - 1) // 256:
        raise fail(op, f"{count} values per mean would overflow the int32 sum")
    significand, shift = quant.quantize_multiplier(
        quant.as_double(x.scale) / quant.as_double(out.scale))
    try:
        multiplier, folded_shift = fold_count(significand, shift, count)
    except ValueError as exc:
        raise fail(op, str(exc)) from None
    return MeanParams(outer=outer, reduce=count, inner=inner, input_zero_point=x.zero_point,
                      output_zero_point=out.zero_point, multiplier=multiplier, shift=folded_shift,
                      input_shape=shape, output_shape=tuple(int(d) for d in out.shape))


def reference(params: MeanParams, inputs: list[np.ndarray]) -> np.ndarray:
    x = np.asarray(inputs[0], dtype=np.int64).reshape(params.outer, params.reduce, params.inner)
    total = x.sum(axis=1) - params.input_zero_point * params.reduce
    scaled = quant.multiply_by_quantized_multiplier(total, params.multiplier, params.shift)
    out = np.clip(wrap_int32(scaled + params.output_zero_point), -128, 127).astype(np.int8)
    return out.reshape(params.output_shape)


def emit(params: MeanParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    init = struct_init("mt::MeanParams", "p", params.fields())
    body = init.replace("\n", "\n  ")
    return f"{{\n  {body}\n  {kernel_name(ctx, 'mean_s8')}(p, {inputs[0]}, {output});\n}}\n"


def macs(params: MeanParams) -> int:
    """One addition per input element (reported as MACs for the cost model)."""
    return params.outer * params.reduce * params.inner


# ---- training (docs/training.md, "MEAN") ----


def backward_reference(params: MeanParams, saved: list[np.ndarray | None], dy: QGrad,
                       need_dx: list[bool], slot: TrainSlot | None, lr: float,
                       rng: XorShift32) -> list[QGrad | None]:
    """dx = dy broadcast over the reduced block, scale dy.scale / n: a copy, no rounding."""
    if not need_dx[0]:
        return [None]
    d = np.asarray(dy.data, np.int16).reshape(params.outer, 1, params.inner)
    data = np.broadcast_to(d, (params.outer, params.reduce, params.inner))
    return [QGrad(data.reshape(params.input_shape).copy(), F32(dy.scale) / F32(params.reduce))]


def backward_emit(params: MeanParams, ctx: EmitContext, saved: list[str | None], dy: GradRef,
                  dx: list[GradRef | None], train: TrainEmit | None) -> str:
    if dx[0] is None:
        return ""
    init = struct_init("mt::MeanParams", "p", params.fields()).replace("\n", "\n  ")
    return (f"{{\n  {init}\n"
            f"  {kernel_name(ctx, 'mean_backward')}(p, {dy.data()}, {dx[0].data()});\n"
            f"  {dx[0].scale} = {dy.scale} / static_cast<float>({params.reduce});\n}}\n")


BACKWARD = BackwardDef(
    reference=backward_reference, emit=backward_emit, saves_input=lambda p, slot: [False],
    int16_dx=True)

def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    axes = [int(a) for a in np.asarray(fx.graph.tensors[p.op.inputs[1]].data).reshape(-1)]
    return tf_module().reduce_mean(ins[0], axis=axes,
                                   keepdims=bool(p.op.options.get("keep_dims", False)))


def parse_options(op: Any) -> dict[str, Any]:
    """ReducerOptions; keep_dims false when absent."""
    o = opt.table(op, tflite.ReducerOptions)
    return {"keep_dims": bool(o.KeepDims()) if o else False}


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.ReducerOptions, parse_options)

OP = register(OpDef("MEAN", prepare, reference, emit, macs, header="kernels/mean.h",
                    float_forward=float_forward, backward=BACKWARD, options=OPTIONS))


# Cortex-M7 MEAN (firmware/kernels/mean_m7.h): int16 lane sums four channels per word; serves
# every shape (channels past the last group of four take the reference's loop).
M7 = register_variant("MEAN", KernelVariant("m7", "mt::m7", header="kernels/mean_m7.h"))
