"""QUANTIZE int8 -> int8 (a requantization inside the graph), as TFLite's Requantize.

out = clamp(MultiplyByQuantizedMultiplier(in - zp_in, M) + zp_out) with M = scale_in / scale_out
computed in double from the float32 scales. A float -> int8 QUANTIZE belongs at the model input,
where the compiler's graph pass removes it; any left mid-graph is rejected. macs() is 0.
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
    EmitContext,
    FloatContext,
    OpDef,
    c_int_list,
    identity_backward,
    kernel_name,
    register,
)
from .common import fail, output_tensor, require_int8_activation, tensor_at, wrap_int32


@dataclass(frozen=True)
class RequantizeParams:
    """Fields in the order of mt::RequantizeParams (firmware/kernels/quantize.h)."""

    size: int
    in_zp: int
    out_zp: int
    multiplier: int
    shift: int

    def fields(self) -> list[int]:
        return [self.size, self.in_zp, self.out_zp, self.multiplier, self.shift]


def prepare(op: Operator, graph: Graph) -> RequantizeParams:
    x = tensor_at(op, graph, 0)
    if x is None or x.is_const:
        raise fail(op, "expects a non-constant input")
    out = output_tensor(op, graph)
    if x.dtype == "float32":
        raise fail(op, "float -> int8 QUANTIZE is only supported at the model input")
    require_int8_activation(op, x, "input")
    require_int8_activation(op, out, "output")
    if tuple(x.shape) != tuple(out.shape):
        raise fail(op, f"input shape {x.shape} and output shape {out.shape} differ")
    real = quant.as_double(x.scale) / quant.as_double(out.scale)
    multiplier, shift = quant.quantize_multiplier(real)
    return RequantizeParams(x.num_elements, x.zero_point, out.zero_point, multiplier, shift)


def reference(params: RequantizeParams, inputs: list[np.ndarray]) -> np.ndarray:
    x = np.asarray(inputs[0])
    scaled = quant.multiply_by_quantized_multiplier(
        x.astype(np.int64) - params.in_zp, params.multiplier, params.shift)
    return np.clip(wrap_int32(scaled + params.out_zp), -128, 127).astype(np.int8).reshape(x.shape)


def emit(params: RequantizeParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    return (
        "{\n"
        f"  static const mt::RequantizeParams p = {c_int_list(params.fields())};\n"
        f"  {kernel_name(ctx, 'requantize_s8')}(p, {inputs[0]}, {output});\n"
        "}\n"
    )


def macs(params: RequantizeParams) -> int:
    return 0


def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    return ins[0]  # int8 -> int8 QUANTIZE only rescales: the real value is unchanged


# No fields, but the reader checks that the table is QuantizeOptions.
OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.QuantizeOptions)

OP = register(OpDef("QUANTIZE", prepare, reference, emit, macs, header="kernels/quantize.h",
                    float_forward=float_forward, identity_gradient=identity_backward(),
                    pass_through=True, options=OPTIONS))
