"""Shared pieces of the operators' float forward functions (OpDef.float_forward), which the fp32
training reference (train/fp32_reference.py) runs in TensorFlow: float NHWC, batch first.

TensorFlow is imported inside functions so that importing mcutrain stays light. Not an operator
module: it registers nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..frontend.graph import ModelError, Tensor
from .base import FloatContext


def tf_module() -> Any:
    import tensorflow as tf  # noqa: PLC0415 (lazy: TensorFlow is slow to import)

    return tf


def dequantize(t: Tensor) -> np.ndarray:
    """A constant tensor's real values, float32 (per-channel scales broadcast on quant.axis)."""
    if t.data is None:
        raise ModelError(f"tensor {t.index} '{t.name}' is not constant")
    data = np.asarray(t.data)
    if t.quant is None:
        return data.astype(np.float32)
    shape = [1] * data.ndim
    if t.quant.per_channel:
        shape[t.quant.axis] = -1
    scale = t.quant.scale.astype(np.float32).reshape(shape)
    zp = t.quant.zero_point.astype(np.float32).reshape(shape)
    return ((data.astype(np.float32) - zp) * scale).astype(np.float32)


def activation(x: Any, op_options: dict[str, Any]) -> Any:
    """The fused activation of op_options applied to float x."""
    tf = tf_module()
    act = str(op_options.get("activation", "NONE"))
    if act == "NONE":
        return x
    if act == "RELU":
        return tf.nn.relu(x)
    if act == "RELU6":
        return tf.nn.relu6(x)
    if act == "RELU_N1_TO_1":
        return tf.clip_by_value(x, -1.0, 1.0)
    raise ModelError(f"fp32 reference: fused activation {act} is not supported")


def const_or_dynamic(fx: FloatContext, p: Any, ins: list[Any]) -> list[Any]:
    """All inputs in operator order: dynamic values from `ins`, constants dequantized."""
    tf = tf_module()
    dynamic = iter(ins)
    out = []
    for tid in p.op.inputs:
        if tid < 0:
            continue
        t = fx.graph.tensors[tid]
        out.append(tf.constant(dequantize(t)) if t.is_const else next(dynamic))
    return out
