"""Byte-level edits of real .tflite files for the hostile-model tests: locate a field of a
flatbuffer table with the `tflite` accessors, then overwrite it in place."""

from __future__ import annotations

import struct
from typing import Any

import tflite


def model(data: bytes | bytearray) -> Any:
    return tflite.Model.GetRootAsModel(bytes(data), 0)


def field_pos(table: Any, slot: int) -> int:
    """Absolute byte position of a present field (slot = its vtable offset: 4, 6, 8, ...)."""
    offset = table._tab.Offset(slot)
    assert offset, f"field at vtable offset {slot} is absent (default value)"
    return table._tab.Pos + offset


def vector_pos(table: Any, slot: int) -> int:
    """Absolute byte position of the first element of a present vector field."""
    offset = table._tab.Offset(slot)
    assert offset, f"vector at vtable offset {slot} is absent"
    return table._tab.Vector(offset)


def vtable_pos(table: Any) -> int:
    return table._tab.Pos - struct.unpack_from("<i", table._tab.Bytes, table._tab.Pos)[0]


def put(data: bytearray, pos: int, fmt: str, value: object) -> bytearray:
    struct.pack_into("<" + fmt, data, pos, value)
    return data


def tensor(data: bytes | bytearray, index: int) -> Any:
    return model(data).Subgraphs(0).Tensors(index)


def operator(data: bytes | bytearray, index: int) -> Any:
    return model(data).Subgraphs(0).Operators(index)


# vtable slots of the schema's tables (schema.fbs field order: slot = 4 + 2 * field id)
TENSOR_SHAPE, TENSOR_TYPE, TENSOR_BUFFER, TENSOR_NAME, TENSOR_QUANT = 4, 6, 8, 10, 12
QUANT_SCALE, QUANT_ZERO_POINT = 8, 10
OP_OPCODE_INDEX, OP_INPUTS, OP_OUTPUTS, OP_OPTIONS = 4, 6, 8, 12
OPCODE_DEPRECATED, OPCODE_BUILTIN = 4, 10


def set_scale(data: bytes, index: int, value: float, element: int = 0) -> bytes:
    q = tensor(data, index).Quantization()
    out = bytearray(data)
    return bytes(put(out, vector_pos(q, QUANT_SCALE) + 4 * element, "f", value))


def set_zero_point(data: bytes, index: int, value: int, element: int = 0) -> bytes:
    q = tensor(data, index).Quantization()
    out = bytearray(data)
    return bytes(put(out, vector_pos(q, QUANT_ZERO_POINT) + 8 * element, "q", value))


def set_type(data: bytes, index: int, type_code: int) -> bytes:
    out = bytearray(data)
    return bytes(put(out, field_pos(tensor(data, index), TENSOR_TYPE), "b", type_code))


def set_op_input(data: bytes, op_index: int, position: int, tensor_index: int) -> bytes:
    out = bytearray(data)
    pos = vector_pos(operator(data, op_index), OP_INPUTS) + 4 * position
    return bytes(put(out, pos, "i", tensor_index))
