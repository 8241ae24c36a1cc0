"""FULLY_CONNECTED with int8 activations, int8 weights (per-channel or per-tensor), int32 bias.

Bit-exact with TFLite Micro's FULLY_CONNECTED, for per-tensor weights (which may carry a zero
point) and symmetric per-channel weights. An input of
any rank is flattened to [input_size / accum_depth, accum_depth], as TFLite does; keep_num_dims
only changes the output tensor's shape. Kernel: firmware/kernels/fully_connected.h.

Requantization: the fixed-point multiplier (MultiplyByQuantizedMultiplier, as CONV_2D), which is
what TFLite Micro, CMSIS-NN and TFLite's optimized kernels compute. TFLite's reference
FULLY_CONNECTED (LiteRT's BUILTIN_REF resolver) instead rounds double(acc) * real_scale in double
precision and so disagrees by one level on roughly one output in a hundred; where the two
interpreters disagree we follow TFLite Micro, the one that runs on microcontrollers
(test/test_firmware_bitexact.py records the shipped models where they do).

Training (docs/training.md): with `train` set, the first n_train rows of the filter and
optionally the bias are read from SRAM copies; the backward rule is its OpDef's
backward. Weights with a zero point cannot train (check_trainable).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from ..frontend import options as opt
from ..frontend.graph import Graph, ModelError, Operator
from . import common, param_train, quant
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
class FullyConnectedParams:
    op_index: int
    batches: int
    output_shape: tuple[int, ...]
    filter: np.ndarray  # int8 [output_depth, accum_depth]
    bias: np.ndarray | None  # int32 [output_depth]
    input_offset: int
    filter_offset: int
    output_offset: int
    multiplier: np.ndarray  # int32 [output_depth]
    shift: np.ndarray  # int32 [output_depth]
    act_min: int
    act_max: int
    input_shape: tuple[int, ...] | None = None  # the input tensor's shape (gradient shape)
    filter_scale: np.ndarray | None = None  # float32 [units] weight scales (per-tensor repeated)
    input_scale: float = 0.0
    train: TrainBinding | None = None  # trained rows / bias in SRAM (forward reads them)


def _filter_offset(op: Operator, w) -> tuple[np.ndarray, int]:
    """Scales and weight offset: per-tensor weights may have a zero point, per-channel not."""
    q = w.quant
    units = w.shape[0]
    if q is not None and q.scale.size == 1 and q.zero_point.size == 1 and q.zero_point[0] != 0:
        zp = int(q.zero_point[0])
        if not -128 <= zp <= 127:
            raise common.fail(op, f"weights '{w.name[:40]}' zero point {zp} is outside int8")
        if not q.scale[0] > 0:
            raise common.fail(op, f"weights '{w.name[:40]}' have a non-positive scale")
        return np.asarray(q.scale, dtype=np.float32), -zp
    return common.filter_quant(op, w, units, axis=0), 0


def _check_bias_scale(op: Operator, graph: Graph, input_scale: float, filter_scale: float,
                      output_scale: float) -> None:
    """TFLite's FULLY_CONNECTED Prepare (GetQuantizedConvolutionMultipler) refuses a bias whose
    scale strays from input_scale * filter_scale by more than 0.02 output steps; so do we. A
    bias without quantization counts as scale 0, as there."""
    bias = common.tensor_at(op, graph, 2)
    if bias is None:
        return
    bias_scale = quant.as_double(bias.scale) if bias.quant is not None else 0.0
    product = quant.as_double(input_scale) * quant.as_double(filter_scale)
    if abs(product - bias_scale) / quant.as_double(output_scale) > 0.02:
        raise common.fail(op, f"bias '{bias.name[:40]}' scale {bias_scale:.6g} is not input scale "
                              f"x weight scale ({product:.6g}), as TFLite requires")


def prepare(op: Operator, graph: Graph) -> FullyConnectedParams:
    x, y = common.int8_input_output(op, graph)
    fmt = str(op.options.get("weights_format", "DEFAULT"))
    if fmt != "DEFAULT":
        raise common.fail(op, f"weights_format {fmt} is not supported (DEFAULT only)")
    w = common.require_const(op, common.tensor_at(op, graph, 1), "weights", "int8")
    if len(w.shape) != 2 or w.shape[1] < 1:
        raise common.fail(op, f"weights must be 2-D [units, depth], got {w.shape}")
    units, depth = w.shape
    if x.num_elements % depth != 0:
        raise common.fail(op, f"input of {x.num_elements} elements is not a multiple of the "
                              f"weights' depth {depth}")
    batches = x.num_elements // depth
    if y.num_elements != batches * units:
        raise common.fail(op, f"output shape {tuple(y.shape)} does not hold {batches} x {units}")
    scales, filter_offset = _filter_offset(op, w)
    _check_bias_scale(op, graph, x.scale, float(scales[0]), y.scale)
    multiplier, shift = common.per_channel_multipliers(x.scale, scales, y.scale, units)
    act_min, act_max = common.activation_bounds(op, y)
    p = FullyConnectedParams(
        op_index=op.index, batches=batches, output_shape=tuple(y.shape),
        filter=np.asarray(w.data, dtype=np.int8).reshape(w.shape),
        bias=common.optional_bias(op, graph, 2, units),
        input_offset=-x.zero_point, filter_offset=filter_offset, output_offset=y.zero_point,
        multiplier=multiplier, shift=shift,
        act_min=act_min, act_max=act_max, input_shape=tuple(x.shape),
        filter_scale=np.broadcast_to(scales, (units,)).astype(np.float32),
        input_scale=float(np.float32(x.scale)),
    )
    check_accumulator(p, op)
    return p


def check_accumulator(p: FullyConnectedParams, op: Operator, n_train: int = 0) -> None:
    """fully_connected_s8 sums each unit's row in plain int32: refuse a bound beyond it."""
    common.check_accumulator(op, p.filter, p.input_offset, p.filter_offset, n_train)


def reference(p: FullyConnectedParams, inputs: list[np.ndarray]) -> np.ndarray:
    units, depth = p.filter.shape
    x = inputs[0].reshape(p.batches, depth).astype(np.float64) + p.input_offset
    w = p.filter.astype(np.float64) + p.filter_offset
    acc = (x @ w.T).astype(np.int64)  # exact: partial sums stay far below 2**53
    if p.bias is not None:
        acc = acc + p.bias
    acc = common.wrap_int32(acc)
    out = common.requantize(acc, p.multiplier, p.shift, p.output_offset, p.act_min, p.act_max)
    return out.reshape(p.output_shape)


def _struct(p: FullyConnectedParams, mult: str, shift: str,
            binding: TrainBinding | None) -> str:
    units, depth = p.filter.shape
    fields: list[tuple[str, object]] = [
        ("batches", p.batches), ("accum_depth", depth), ("output_depth", units),
        ("input_offset", p.input_offset), ("filter_offset", p.filter_offset),
        ("output_offset", p.output_offset), ("multiplier", mult), ("shift", shift),
        ("act_min", p.act_min), ("act_max", p.act_max),
        *param_train.struct_train_fields(binding),
    ]
    return common.struct_init("mt::FullyConnectedParams", "kParams", fields)


def emit(p: FullyConnectedParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    filt, bias, mult, shift = param_train.flash_constants(p, ctx, f"op{p.op_index}_fc")
    init = _struct(p, mult, shift, p.train)
    bias = param_train.forward_bias(p.train, bias)
    call = (f"{kernel_name(ctx, 'fully_connected_s8')}(kParams, {inputs[0]}, {filt}, {bias}, "
            f"{output}{variant_args(ctx, p)});")
    return "{\n" + init + "\n" + call + "\n}"


def macs(p: FullyConnectedParams) -> int:
    return p.batches * p.filter.size


# ---- training ----


def check_trainable(p: FullyConnectedParams) -> None:
    """Training's gradient rules assume symmetric weights: refuse a weight zero point."""
    if p.filter_offset != 0:
        raise ModelError(f"operator {p.op_index} (FULLY_CONNECTED): weights with zero point "
                         f"{-p.filter_offset} cannot be trained or back-propagated through; "
                         "quantize the weights symmetrically")


def trainable_weights(p: FullyConnectedParams, n_train: int) -> np.ndarray:
    """The SRAM copy of the trained units: the first n_train rows of the [units, depth] filter."""
    return p.filter[:n_train].copy()


def with_trained(p: FullyConnectedParams, weights: np.ndarray | None,
                 bias: np.ndarray | None) -> FullyConnectedParams:
    """Params whose filter has its first rows replaced by `weights` and whose bias is `bias`
    when given."""
    filt = p.filter.copy()
    if weights is not None and weights.size:
        n = weights.size // filt.shape[1]
        filt[:n] = np.asarray(weights, dtype=np.int8).reshape(n, filt.shape[1])
    new_bias = p.bias if bias is None else np.asarray(bias, dtype=np.int32).copy()
    return dataclasses.replace(p, filter=filt, bias=new_bias)


def input_grad_acc(p: FullyConnectedParams, filt: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """int64 accumulators of the input's shape: (folded dy) @ W. Exact in float64."""
    units, depth = filt.shape
    d = np.asarray(dy, dtype=np.float64).reshape(p.batches, units)
    acc = (d @ filt.astype(np.float64)).astype(np.int64)
    return acc.reshape(p.input_shape if p.input_shape is not None else (p.batches, depth))


def weight_grad(p: FullyConnectedParams, x: np.ndarray, dy: np.ndarray,
                n_train: int) -> np.ndarray:
    """int64 [n_train, depth]: GW = dy[:, :n]^T @ (x - zx)."""
    units, depth = p.filter.shape
    xs = x.reshape(p.batches, depth).astype(np.float64) + p.input_offset
    d = np.asarray(dy, dtype=np.float64).reshape(p.batches, units)[:, :n_train]
    return (d.T @ xs).astype(np.int64)


GEOMETRY = param_train.Geometry(input_grad_acc, weight_grad, channel_axis=0,
                                with_trained=with_trained)


def input_grad_depth(p: FullyConnectedParams) -> int:
    return int(p.filter.shape[0])


def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    tf = tf_module()
    w = fx.variable(step, "weights")  # [out, accum]
    x = tf.reshape(ins[0], [-1, int(w.shape[1])])
    y = tf.matmul(x, w, transpose_b=True) + fx.variable(step, "bias")
    shape = fx.graph.tensors[p.output].shape
    if len(shape) > 2:
        y = tf.reshape(y, [-1, *shape[1:]])
    return activation(y, p.op.options)


def parse_options(op: Any) -> dict[str, Any]:
    """FullyConnectedOptions; TFLite's defaults when absent."""
    o = opt.table(op, tflite.FullyConnectedOptions)
    if o is None:
        return {"activation": "NONE", "keep_num_dims": False, "weights_format": "DEFAULT"}
    formats = {0: "DEFAULT", 1: "SHUFFLED4x16INT8"}
    return {
        "activation": opt.activation(o.FusedActivationFunction()),
        "keep_num_dims": bool(o.KeepNumDims()),
        "weights_format": formats.get(int(o.WeightsFormat()), str(o.WeightsFormat())),
    }


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.FullyConnectedOptions, parse_options)

OPDEF = param_train.register_weighted(param_train.WeightedOp(
    "FULLY_CONNECTED", header="kernels/fully_connected.h", kernel="fully_connected", tag="fc",
    prepare=prepare, reference=reference, emit=emit, macs=macs, float_forward=float_forward,
    struct=_struct, geometry=GEOMETRY, trainable_weights=trainable_weights,
    check_accumulator=check_accumulator, input_grad_depth=input_grad_depth,
    check_trainable=check_trainable, options=OPTIONS))
BACKWARD = OPDEF.backward

# The weight update of one sample with the rounding fixed at compile time and the PRNG state in a
# register (firmware/kernels/fully_connected_m7.h); the other two backward kernels are the
# reference's. No scratch.
M7_BACKWARD = register_variant(backward_key("FULLY_CONNECTED"), KernelVariant(
    "m7", "mt::m7", header="kernels/fully_connected_m7.h"))
