"""RESHAPE: the output is the input's bytes under a new shape, so no code runs at all.

The memory planner gives the output the input's buffer (OpDef.aliases_input) and emit() returns
"". The target shape comes, as in TFLite, from the constant second input when it is a 1-D
tensor, else from the `new_shape` option, else from the output tensor; one dim may be -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from ..frontend import options as opt
from ..frontend.graph import Graph, Operator
from .base import EmitContext, FloatContext, OpDef, identity_backward, register
from .common import fail, output_tensor, tensor_at
from .float_common import tf_module


@dataclass(frozen=True)
class ReshapeParams:
    output_shape: tuple[int, ...]


def _requested_shape(op: Operator, graph: Graph) -> list[int]:
    shape_tensor = tensor_at(op, graph, 1)
    if shape_tensor is not None:
        if not shape_tensor.is_const:
            raise fail(op, "a shape computed at run time (non-constant input 1) is not supported")
        if shape_tensor.dtype != "int32":
            raise fail(op, f"shape tensor '{shape_tensor.name[:40]}' is {shape_tensor.dtype}; "
                           "TFLite's RESHAPE takes an int32 shape")
        if len(shape_tensor.shape) == 1:
            return [int(v) for v in np.asarray(shape_tensor.data).reshape(-1)]
    new_shape = op.options.get("new_shape")
    if new_shape is not None:
        return [int(v) for v in new_shape]
    return [int(d) for d in output_tensor(op, graph).shape]


def _resolve(op: Operator, requested: list[int], count: int) -> tuple[int, ...]:
    """Replace a single -1 by whatever makes the element count match."""
    unknown = [i for i, d in enumerate(requested) if d == -1]
    if len(unknown) > 1 or any(d < -1 for d in requested):
        raise fail(op, f"shape {requested} is invalid (at most one -1, no other negatives)")
    known = math.prod(d for d in requested if d != -1)  # Python ints: no wrap-around
    if unknown:
        if known == 0 or count % known:
            raise fail(op, f"shape {requested} cannot hold {count} elements")
        requested = requested.copy()
        requested[unknown[0]] = count // known
    if math.prod(requested) != count:
        raise fail(op, f"shape {requested} does not hold {count} elements")
    return tuple(requested)


def prepare(op: Operator, graph: Graph) -> ReshapeParams:
    x = tensor_at(op, graph, 0)
    if x is None or x.is_const:
        raise fail(op, "expects a non-constant input")
    out = output_tensor(op, graph)
    if x.dtype != out.dtype:
        raise fail(op, f"input {x.dtype} and output {out.dtype} differ")
    shape = _resolve(op, _requested_shape(op, graph), x.num_elements)
    # A 0-D output is stored as shape () by some converters for a [] request; accept both.
    if tuple(out.shape) != shape and not (out.num_elements == x.num_elements == 1):
        raise fail(op, f"output shape {out.shape} disagrees with the requested {shape}")
    return ReshapeParams(output_shape=tuple(out.shape))


def reference(params: ReshapeParams, inputs: list[np.ndarray]) -> np.ndarray:
    return np.asarray(inputs[0]).reshape(params.output_shape)


def emit(params: ReshapeParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    return ""  # the planner placed the output on the input's bytes


def macs(params: ReshapeParams) -> int:
    return 0


def float_forward(fx: FloatContext, step: int, p: Any, ins: list[Any]) -> Any:
    shape = fx.graph.tensors[p.output].shape
    return tf_module().reshape(ins[0], [-1, *shape[1:]])


def parse_options(op: Any) -> dict[str, Any]:
    """ReshapeOptions' new_shape, None when absent or empty (the shape input then rules)."""
    o = opt.table(op, tflite.ReshapeOptions)
    if o is None or o.NewShapeLength() == 0:
        return {"new_shape": None}
    return {"new_shape": [int(o.NewShape(i)) for i in range(o.NewShapeLength())]}


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.ReshapeOptions, parse_options)

OP = register(OpDef("RESHAPE", prepare, reference, emit, macs, header="", aliases_input=True,
                    float_forward=float_forward, identity_gradient=identity_backward(),
                    pass_through=True, options=OPTIONS))
