"""Run a compiled model in numpy with each operator's integer reference.

This is the host-side definition of what the firmware computes; tests compare it with TFLite's
interpreter and with the firmware.
"""

from __future__ import annotations

import numpy as np

from .compiler import CompiledModel


def run_reference(model: CompiledModel, x: np.ndarray) -> np.ndarray:
    """One int8 input (the model input's shape, batch 1) -> the int8 output tensor."""
    graph = model.graph
    in_shape = graph.tensors[model.input].shape
    values: dict[int, np.ndarray] = {model.input: np.asarray(x, dtype=np.int8).reshape(in_shape)}
    for p in model.ops:
        out = p.opdef.reference(p.params, [values[t] for t in p.inputs])
        values[p.output] = np.asarray(out, dtype=np.int8).reshape(graph.tensors[p.output].shape)
    return values[model.output]
