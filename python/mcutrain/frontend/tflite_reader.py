"""Read a .tflite flatbuffer into the graph IR (mcutrain.frontend.graph).

Uses the `tflite` package (Python classes generated from TFLite's schema.fbs) on top of
`flatbuffers`, so reading a model never imports TensorFlow. Python flatbuffers does no
verification, so every access goes through guards: a corrupt or truncated file becomes one
ModelError naming the problem, never a traceback or a hang on a bogus vector length.

Before any accessor runs, flatbuffer_check walks the file the way TFLite's verifier does, and
every field the compiler uses is checked against what TFLite (Micro) accepts: finite, positive,
normal float32 scales; zero points inside the tensor type's range (int8 activations in
[-128, 127], biases 0); dimensions non-negative and tensors of a size a board could hold;
known paddings, activations and finite softmax betas.

Each operator's options table is declared and parsed by its own module under mcutrain.ops
(frontend/options.py: the registry, why it is always filled, and the parsers' helpers); this
module checks the declared type and turns the parser's refusals into one-line ModelErrors.

Tolerance follows TFLite Micro: old files that only fill `deprecated_builtin_code`, quantization
blocks with scales but no zero points, per-channel scales with a single zero point, and empty
quantization blocks on unquantized tensors are all accepted.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import tflite

from .flatbuffer_check import OPTIONS, FlatbufferError, check_model
from .graph import Graph, ModelError, Operator, Quant, Tensor
from .options import MissingOptions, declared

_TENSOR_TYPES: dict[int, str] = {
    tflite.TensorType.FLOAT32: "float32",
    tflite.TensorType.FLOAT16: "float16",
    tflite.TensorType.INT32: "int32",
    tflite.TensorType.UINT8: "uint8",
    tflite.TensorType.INT64: "int64",
    tflite.TensorType.BOOL: "bool",
    tflite.TensorType.INT16: "int16",
    tflite.TensorType.INT8: "int8",
    tflite.TensorType.FLOAT64: "float64",
}
_OPCODE_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}

# Zero-point range of each quantized tensor type (TFLite: int8 [-128, 127]; biases 0).
_ZERO_POINT_RANGE: dict[str, tuple[int, int]] = {
    "int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (0, 0),
}
_INT32 = (-(2**31), 2**31 - 1)
# No supported board holds a tensor anywhere near this; refusing early keeps numpy bounded.
MAX_TENSOR_ELEMENTS = 1 << 22
MAX_RANK = 8  # TFLite's kernels stop at 6 dimensions (5 for most)
_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)

# Errors the generated flatbuffer accessors raise on bytes that are not a valid model.
_DECODE_ERRORS = (struct.error, IndexError, ValueError, TypeError, OverflowError,
                  UnicodeDecodeError, AttributeError)


def read_tflite(source: str | Path | bytes) -> Graph:
    """Parse a .tflite file (path or bytes) into a Graph. Raises ModelError on bad input."""
    data = _load_bytes(source)
    name = Path(source).stem if not isinstance(source, bytes) else "model"
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(
            f"{name}: not a TFLite flatbuffer (expected the 'TFL3' identifier at byte 4; "
            f"file is {len(data)} bytes). Convert the model with tf.lite.TFLiteConverter."
        )
    try:
        check_model(data)
    except FlatbufferError as exc:
        raise ModelError(f"{name}: corrupt .tflite ({exc}); re-export the model") from None
    try:
        graph = _read_model(data, name)
    except ModelError:
        raise
    except _DECODE_ERRORS as exc:
        raise ModelError(
            f"{name}: corrupt or truncated .tflite ({type(exc).__name__}: {exc}); "
            "re-export the model"
        ) from None
    graph.sha256 = hashlib.sha256(data).digest()
    return graph


def _load_bytes(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    path = Path(source)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    return path.read_bytes()


def _checked_len(n: int, limit: int, what: str) -> int:
    """A vector length read from the file, bounded by the file size so garbage cannot hang us."""
    if n < 0 or n > limit:
        raise ModelError(f"corrupt .tflite: {what} claims {n} entries in a {limit}-byte file")
    return n


def _read_model(data: bytes, name: str) -> Graph:
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.Version() != 3:
        raise ModelError(f"{name}: TFLite schema version {model.Version()} is not supported")
    size = len(data)
    if _checked_len(model.SubgraphsLength(), size, "subgraphs") < 1:
        raise ModelError(f"{name}: model has no subgraph")
    opcodes = [_opcode_name(model.OperatorCodes(i))
               for i in range(_checked_len(model.OperatorCodesLength(), size, "operator codes"))]
    num_buffers = _checked_len(model.BuffersLength(), size, "buffers")
    buffers = [model.Buffers(i) for i in range(num_buffers)]
    sub = model.Subgraphs(0)
    tensors = [_read_tensor(sub.Tensors(i), i, buffers, data)
               for i in range(_checked_len(sub.TensorsLength(), size, "tensors"))]
    operators = [_read_operator(sub.Operators(i), i, opcodes, len(tensors))
                 for i in range(_checked_len(sub.OperatorsLength(), size, "operators"))]
    inputs = _int_vector(sub.InputsLength(), sub.Inputs, size, "subgraph inputs")
    outputs = _int_vector(sub.OutputsLength(), sub.Outputs, size, "subgraph outputs")
    for t in inputs + outputs:
        if not 0 <= t < len(tensors):
            raise ModelError(f"corrupt .tflite: subgraph refers to tensor {t} of {len(tensors)}")
    return Graph(name=name, tensors=tensors, operators=operators, inputs=inputs, outputs=outputs)


def _int_vector(length: int, getter: Callable[[int], int], limit: int, what: str) -> list[int]:
    return [int(getter(i)) for i in range(_checked_len(length, limit, what))]


def _opcode_name(code: Any) -> str:
    # Files from before schema 3a only carry the 8-bit deprecated field; newer ones carry both.
    # TFLite's GetBuiltinCode takes the larger of the two. The tflite package's BuiltinCode()
    # substitutes the deprecated field below 127, so read the raw field.
    slot = code._tab.Offset(10)
    raw = code._tab.Get(flatbuffers.number_types.Int32Flags, slot + code._tab.Pos) if slot else 0
    builtin = max(int(raw), int(code.DeprecatedBuiltinCode()))
    if builtin == tflite.BuiltinOperator.CUSTOM:
        custom = code.CustomCode()
        return f"CUSTOM({custom.decode(errors='replace') if custom else '?'})"
    return _OPCODE_NAMES.get(builtin, f"UNKNOWN_BUILTIN_{builtin}")


def _read_tensor(t: Any, index: int, buffers: list[Any], data: bytes) -> Tensor:
    type_code = int(t.Type())
    dtype = _TENSOR_TYPES.get(type_code, f"type{type_code}")
    shape = tuple(int(d) for d in _int_vector(t.ShapeLength(), t.Shape, len(data), "shape"))
    name = (t.Name() or b"").decode(errors="replace")
    label = f"tensor {index} '{name[:40]}'"
    _check_shape(shape, label)
    quant = _read_quant(t, label)
    if quant is not None:
        _check_quant(quant, dtype, label)
    tensor = Tensor(index=index, name=name, shape=shape, dtype=dtype, quant=quant)
    buffer_index = int(t.Buffer())
    if not 0 <= buffer_index < len(buffers):
        raise ModelError(f"corrupt .tflite: tensor {index} refers to buffer {buffer_index}")
    raw = _buffer_bytes(buffers[buffer_index], data)
    if raw is not None and len(raw) > 0:
        tensor.data = _constant_array(raw, tensor)
    return tensor


def _buffer_bytes(buffer: Any, data: bytes) -> bytes | None:
    # Models over 2 GB keep buffers after the flatbuffer (offset/size); handle both forms.
    offset = int(buffer.Offset()) if hasattr(buffer, "Offset") else 0
    if offset > 1:
        end = offset + int(buffer.Size())
        if end > len(data):
            raise ModelError(f"corrupt .tflite: buffer at offset {offset} runs past end of file")
        return data[offset:end]
    length = _checked_len(buffer.DataLength(), len(data), "buffer data")
    if length == 0:
        return None
    return buffer.DataAsNumpy().tobytes()


def _constant_array(raw: bytes, tensor: Tensor) -> np.ndarray:
    if tensor.dtype.startswith("type"):
        raise ModelError(
            f"tensor {tensor.index} '{tensor.name[:40]}' has unsupported type {tensor.dtype}"
        )
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    expected = tensor.num_elements * dtype.itemsize
    if len(raw) != expected:
        raise ModelError(
            f"corrupt .tflite: tensor {tensor.index} '{tensor.name[:40]}' of shape "
            f"{tensor.shape} needs {expected} bytes but its buffer has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(tensor.shape)


def _check_shape(shape: tuple[int, ...], label: str) -> None:
    if len(shape) > MAX_RANK:
        raise ModelError(f"{label} has rank {len(shape)}; the operators take at most "
                         f"{MAX_RANK} dimensions")
    if any(d < 0 for d in shape):
        raise ModelError(f"{label} has a negative dimension in shape {shape[:8]}; export the "
                         "model with fixed shapes")
    elements = 1
    for d in shape:
        elements *= d
    if elements > MAX_TENSOR_ELEMENTS:
        raise ModelError(f"{label} has {elements} elements, far more than a microcontroller "
                         "holds; the model is corrupt or far too large")


def _check_quant(q: Quant, dtype: str, label: str) -> None:
    """Scales and zero points TFLite Micro's kernels can use (see the module docstring)."""
    for s in np.asarray(q.scale, dtype=np.float64):
        if not (np.isfinite(s) and s >= _SMALLEST_NORMAL):
            raise ModelError(f"{label}: quantization scale {s:.4g} is not a positive normal "
                             "float32; re-quantize the model")
    low, high = _ZERO_POINT_RANGE.get(dtype, _INT32)
    for zp in q.zero_point:
        if not low <= int(zp) <= high:
            if dtype == "int32":
                raise ModelError(f"{label}: bias zero point {int(zp)} must be 0 (TFLite's bias "
                                 "convention); re-quantize the model")
            raise ModelError(f"{label}: zero point {int(zp)} is outside {dtype}'s "
                             f"[{low}, {high}]; re-quantize the model")


def _read_quant(t: Any, name: str) -> Quant | None:
    q = t.Quantization()
    if q is None or q.ScaleLength() == 0:
        return None  # unquantized tensor, or an empty block left by some converters
    scale = q.ScaleAsNumpy().astype(np.float32)
    zero_point = (q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength() > 0
                  else np.zeros(1, dtype=np.int64))
    if zero_point.size == 1 and scale.size > 1:
        zero_point = np.full(scale.shape, zero_point[0], dtype=np.int64)
    if zero_point.size != scale.size:
        raise ModelError(
            f"{name}: {scale.size} quantization scales but {zero_point.size} zero points"
        )
    return Quant(scale=scale, zero_point=zero_point, axis=int(q.QuantizedDimension()))


def _read_operator(op: Any, index: int, opcodes: list[str], num_tensors: int) -> Operator:
    code_index = int(op.OpcodeIndex())
    if not 0 <= code_index < len(opcodes):
        raise ModelError(f"corrupt .tflite: operator {index} has opcode index {code_index}")
    opcode = opcodes[code_index]
    limit = num_tensors + 16
    inputs = _int_vector(op.InputsLength(), op.Inputs, limit, f"operator {index} inputs")
    outputs = _int_vector(op.OutputsLength(), op.Outputs, limit, f"operator {index} outputs")
    for t in inputs + outputs:
        if t >= num_tensors or t < -1:
            raise ModelError(f"corrupt .tflite: operator {index} ({opcode}) refers to tensor {t}")
    if not outputs or -1 in outputs:
        raise ModelError(f"corrupt .tflite: operator {index} ({opcode}) has outputs {outputs[:4]}; "
                         "every operator writes at least one real tensor")
    spec = declared(opcode)
    # Options of another operator's type: TFLite's verifier checks them as that type and the
    # operator then ignores them. flatbuffer_check knows only the types in its OPTIONS, so
    # refuse the others rather than accept what TFLite's verifier might reject.
    carried = int(op.BuiltinOptionsType())
    if (spec is not None and carried not in (tflite.BuiltinOptions.NONE, spec.type)
            and carried not in OPTIONS):
        raise ModelError(f"corrupt .tflite: operator {index} ({opcode}) carries options of "
                         f"type {carried}, not its own ({spec.type})")
    if spec is None or spec.parse is None:
        return Operator(index=index, opcode=opcode, inputs=inputs, outputs=outputs)
    try:
        options = spec.parse(op)
    except MissingOptions as exc:
        raise ModelError(f"operator {index} ({opcode}) has no {exc}; TFLite would run it with "
                         "zeroed options and refuse it too") from None
    return Operator(index=index, opcode=opcode, inputs=inputs, outputs=outputs, options=options)
