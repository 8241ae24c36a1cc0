"""Graph IR: what the compiler knows about a model after reading it.

The reader (mcutrain.frontend.tflite_reader) fills these dataclasses from a .tflite flatbuffer;
every later stage (op preparation, memory planning, code generation, and later the training graph)
reads them. Tensors are referred to by index into Graph.tensors, as in TFLite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Long enough for the build's "does not fit" report, which names four tensors; short enough
# that a hostile file's 8 KB tensor name cannot flood the terminal.
MESSAGE_LIMIT = 1000


class ModelError(ValueError):
    """A model the compiler cannot take; the message names the problem and the fix.

    Messages quote names and values read from untrusted files, so the constructor makes every
    one a single printable line of at most MESSAGE_LIMIT characters: control characters become
    '?' (newlines and tabs a space) and the middle of an overlong message is elided."""

    def __init__(self, message: object = "") -> None:
        super().__init__(clean_message(str(message)))


def clean_message(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = "".join(c if c.isprintable() else (" " if c in "\n\r\t" else "?") for c in text)
    if len(text) <= limit:
        return text
    tail = limit // 5
    return text[: limit - tail - 5] + " ... " + text[-tail:]


@dataclass
class Quant:
    """Affine quantization: real = scale * (q - zero_point), per tensor or per channel on axis."""

    scale: np.ndarray  # float32, shape (1,) or (channels,)
    zero_point: np.ndarray  # int64, same shape as scale
    axis: int = 0

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str  # "int8", "int16", "int32", "int64", "uint8", "float32", ...
    quant: Quant | None = None
    data: np.ndarray | None = None  # constant contents (weights, biases, shape operands)

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def scale(self) -> float:
        """Per-tensor scale (activations). Raises for unquantized tensors."""
        if self.quant is None:
            raise ModelError(f"tensor {self.index} '{self.name[:40]}' has no quantization "
                             "parameters")
        return float(self.quant.scale[0])

    @property
    def zero_point(self) -> int:
        if self.quant is None:
            raise ModelError(f"tensor {self.index} '{self.name[:40]}' has no quantization "
                             "parameters")
        return int(self.quant.zero_point[0])

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.num_elements * np.dtype(self.dtype).itemsize


@dataclass
class Operator:
    """One node. `options` holds the builtin options with normalised keys, e.g. for CONV_2D:
    padding ("SAME"/"VALID"), stride_h, stride_w, dilation_h, dilation_w, activation
    ("NONE"/"RELU"/"RELU6"/"RELU_N1_TO_1"). Absent optional inputs are -1."""

    index: int
    opcode: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    name: str
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]
    sha256: bytes = b""
    # Set when a float QUANTIZE/DEQUANTIZE pair at the edges was removed: the host converts
    # floats with the int8 tensors' parameters, exactly as those operators would have.
    float_input: bool = False
    float_output: bool = False

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]

    def dynamic_inputs(self, op: Operator) -> list[int]:
        """Inputs computed at run time (activations), in operator order; constants excluded."""
        return [i for i in op.inputs if i >= 0 and not self.tensors[i].is_const]


def strip_io_conversions(graph: Graph) -> Graph:
    """Drop a float->int8 QUANTIZE at the input and an int8->float DEQUANTIZE at the output.

    The firmware exchanges int8 tensors only; the host quantizes and dequantizes with the int8
    tensors' parameters, which is exactly what the removed operators computed.
    """
    ops = list(graph.operators)
    inputs, outputs = list(graph.inputs), list(graph.outputs)
    float_input = float_output = False
    for position, tid in enumerate(inputs):
        users = [op for op in ops if tid in op.inputs]
        if (graph.tensors[tid].dtype == "float32" and len(users) == 1
                and users[0].opcode == "QUANTIZE" and len(users[0].outputs) == 1
                and graph.tensors[users[0].outputs[0]].dtype == "int8"):
            inputs[position] = users[0].outputs[0]
            ops.remove(users[0])
            float_input = True
    for position, tid in enumerate(outputs):
        producers = [op for op in ops if tid in op.outputs]
        if (graph.tensors[tid].dtype == "float32" and len(producers) == 1
                and producers[0].opcode == "DEQUANTIZE" and len(producers[0].inputs) == 1
                and producers[0].inputs[0] >= 0
                and graph.tensors[producers[0].inputs[0]].dtype == "int8"):
            outputs[position] = producers[0].inputs[0]
            ops.remove(producers[0])
            float_output = True
    return Graph(name=graph.name, tensors=graph.tensors, operators=ops, inputs=inputs,
                 outputs=outputs, sha256=graph.sha256, float_input=float_input,
                 float_output=float_output)


def check_deployable(graph: Graph) -> None:
    """The firmware runs one int8 input to one int8 output with batch 1; say so plainly if not."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ModelError(
            f"{graph.name}: model has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; "
            "mcutrain supports exactly one of each"
        )
    # Before the edge checks: a 16x8 model with float edges is already full-integer, and
    # "convert with full-integer quantization" would send its author in a circle.
    int16 = [t for t in graph.tensors if t.dtype == "int16" and t.quant is not None
             and not t.is_const]
    if int16:
        raise ModelError(
            f"{graph.name}: tensor '{int16[0].name[:40]}' is an int16 activation: int16 "
            "activations (16x8 quantization) are not supported, only int8 activations; convert "
            "with supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8] and "
            "inference_input_type=inference_output_type=tf.int8"
        )
    for role, tid in (("input", graph.inputs[0]), ("output", graph.outputs[0])):
        t = graph.tensors[tid]
        if t.dtype != "int8" or t.quant is None:
            raise ModelError(
                f"{graph.name}: model {role} '{t.name[:40]}' is {t.dtype}"
                f"{'' if t.quant else ' without quantization'}; convert with full-integer "
                "quantization (converter.optimizations=[tf.lite.Optimize.DEFAULT] and a "
                "representative_dataset)"
            )
        if t.shape and t.shape[0] != 1:
            raise ModelError(f"{graph.name}: model {role} has batch {t.shape[0]}; export batch 1")
    for op in graph.operators:
        for tid in op.outputs:
            t = graph.tensors[tid]
            if t.dtype != "int8":
                raise ModelError(
                    f"operator {op.index} ({op.opcode}) produces a {t.dtype} tensor "
                    f"'{t.name[:40]}'; "
                    "mcutrain runs int8 activations only"
                )
