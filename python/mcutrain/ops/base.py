"""The operator library's contract: one module per TFLite operator under mcutrain.ops.

Each module registers an OpDef with four functions, following TFLite Micro's Prepare/Eval split
but with Prepare run on the host at compile time ("prepare once, run blind"):

- prepare(op, graph) -> params: validate the operator and compute every constant the kernel needs
  (requantization significands and shifts, clamp bounds, padding, shapes, weights). Raises
  graph.ModelError with a one-line message for anything unsupported.
- reference(params, inputs) -> np.ndarray: the numpy integer reference. `inputs` are the operator's
  dynamic (non-constant) inputs in order, as int8 arrays of their TFLite shapes. Must equal TFLite's
  reference kernels bit for bit.
- emit(params, ctx, inputs, output) -> str: C++ statements that call the firmware kernel. `inputs`
  and `output` are C++ expressions of type int8_t* (pointers into the arena); constants go to flash
  through ctx.const_array().
- macs(params) -> int: multiply-accumulates of one forward pass (0 for data movement).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..graph import Graph, ModelError, Operator


class EmitContext(Protocol):
    def const_array(self, hint: str, array: np.ndarray) -> str:
        """Place `array` (int8/int16/int32/float32, any shape, flattened C order) in flash as a
        `static const` array and return its C++ symbol."""
        ...


Prepare = Callable[[Operator, Graph], Any]
Reference = Callable[[Any, list[np.ndarray]], np.ndarray]
Emit = Callable[[Any, EmitContext, list[str], str], str]
Macs = Callable[[Any], int]


@dataclass(frozen=True)
class OpDef:
    opcode: str
    prepare: Prepare
    reference: Reference
    emit: Emit
    macs: Macs
    header: str  # firmware header the emitted code needs, e.g. "kernels/conv2d.h"
    # True when the output is the input's bytes reinterpreted (RESHAPE): the memory planner gives
    # both tensors the same buffer and emit() returns "".
    aliases_input: bool = False


REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    REGISTRY[opdef.opcode] = opdef
    return opdef


def lookup(op: Operator) -> OpDef:
    from . import load_all

    load_all()
    if op.opcode not in REGISTRY:
        supported = ", ".join(sorted(REGISTRY))
        raise ModelError(
            f"operator {op.index} is {op.opcode}, which mcutrain does not support "
            f"(supported: {supported})"
        )
    return REGISTRY[op.opcode]


def c_int_list(values: Any) -> str:
    """`{1, 2, 3}` for brace initialisers in emitted code."""
    return "{" + ", ".join(str(int(v)) for v in np.asarray(values).ravel()) + "}"
