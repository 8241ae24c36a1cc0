"""C++ emission helpers shared by every emitter: flash constants, float literals, indentation.

The lowest layer of code generation: operator records (mcutrain.ops) and both source generators
(compile.codegen for inference, train.codegen for training) build their text with these, so a
constant is spelled the same way wherever it is emitted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..frontend.graph import ModelError

_C_TYPES = {
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int16): "int16_t",
    np.dtype(np.int32): "int32_t",
    np.dtype(np.float32): "float",
}
_VALUES_PER_LINE = 24


class ConstPool:
    """Collects the flash constants emitted by operators; identical arrays are stored once."""

    def __init__(self) -> None:
        self._symbols: dict[bytes, str] = {}
        self._definitions: list[str] = []
        self.nbytes = 0

    def const_array(self, hint: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if array.dtype not in _C_TYPES:
            raise TypeError(f"cannot place a {array.dtype} array in flash ({hint})")
        key = array.dtype.str.encode() + array.tobytes()
        if key in self._symbols:
            return self._symbols[key]
        symbol = f"k_{_identifier(hint)}_{len(self._definitions)}"
        self._symbols[key] = symbol
        self._definitions.append(_array_definition(symbol, array))
        self.nbytes += array.nbytes
        return symbol

    def definitions(self) -> str:
        return "\n".join(self._definitions)


def _identifier(hint: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in hint).strip("_")
    return cleaned[:32] or "const"


def c_float(value: float) -> str:
    """A float32 as a C++ literal that reads back to the same value (9 significant digits)."""
    if not np.isfinite(value):
        # Reached only by extreme but valid scales (e.g. a training coefficient 1/(sx*sw) past
        # float32's range): a model problem, so a ModelError rather than a traceback.
        raise ModelError(f"a float32 constant of the generated code is {value}: the model's "
                         "scales are too extreme (e.g. 1/scale overflows float32); re-quantize")
    text = f"{float(np.float32(value)):.9g}"
    if not any(c in text for c in ".e"):
        text += ".0"
    return text + "f"


def _format_value(value: np.generic) -> str:
    if isinstance(value, np.floating):
        return c_float(float(value))
    v = int(value)
    # INT32_MIN has no literal form in C++; spell it as an expression.
    return "(-2147483647 - 1)" if v == -(2**31) else str(v)


def _array_definition(symbol: str, array: np.ndarray) -> str:
    flat = array.ravel()
    ctype = _C_TYPES[array.dtype]
    lines = []
    for start in range(0, flat.size, _VALUES_PER_LINE):
        chunk = flat[start:start + _VALUES_PER_LINE]
        lines.append("    " + ", ".join(_format_value(v) for v in chunk) + ",")
    body = "\n".join(lines) if lines else "    0,"
    return (f"alignas(4) const {ctype} {symbol}[{max(flat.size, 1)}] = {{\n{body}\n}};\n")


def indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def write_if_changed(path: Path, text: str) -> bool:
    """Write only when the content differs, so an unchanged model triggers no recompilation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True
