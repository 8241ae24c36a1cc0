"""Code generation: a compiled model becomes one straight-line C++ file.

The output (written into the PlatformIO build directory, never the source tree) holds the weights
and per-operator constants as `static const` arrays in flash, one static arena in SRAM, the
ModelDesc the runtime reports over INFO, and model_invoke(): one kernel call per operator with
arena offsets fixed at compile time. No interpreter, no allocator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .compiler import CompiledModel
from .graph import ModelError, Tensor

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


def tensor_desc(t: Tensor) -> str:
    dims = list(t.shape) + [0] * (6 - len(t.shape))
    scale = c_float(t.quant.scale[0]) if t.quant is not None else "0.0f"
    zero_point = int(t.quant.zero_point[0]) if t.quant is not None else 0
    return (f"{{DType::kInt8, {len(t.shape)}, {{{', '.join(map(str, dims))}}}, {scale}, "
            f"{zero_point}, {t.nbytes}u}}")


def generate_model_source(model: CompiledModel) -> tuple[str, int]:
    """The model's C++ source text and the bytes of flash constants it defines."""
    pool = ConstPool()
    calls = []
    headers = sorted({p.opdef.header for p in model.ops if p.opdef.header})
    for step, p in enumerate(model.ops):
        ins = [_arena_ptr(model, t) for t in p.inputs]
        out = _arena_ptr(model, p.output)
        body = p.opdef.emit(p.params, pool, ins, out).strip()
        comment = f"  // [{step}] {p.op.opcode} (operator {p.op.index}) -> tensor {p.output}"
        calls.append(comment + ("\n" + indent(body, 2) if body else " (aliases its input)"))
    arena_bytes = max(model.arena_bytes, 16)
    text = _TEMPLATE.format(
        includes="\n".join(f'#include "{h}"' for h in headers),
        constants=pool.definitions(),
        arena_bytes=arena_bytes,
        name=source_name(model),
        model_desc=model_desc(model, arena_bytes, pool.nbytes),
        input_offset=model.offset_of(model.input),
        output_offset=model.offset_of(model.output),
        calls="\n".join(calls),
    )
    return text, pool.nbytes


def _arena_ptr(model: CompiledModel, tensor_id: int) -> str:
    return f"(g_arena + {model.offset_of(tensor_id)})"


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


def source_name(model: CompiledModel) -> str:
    """The model's name as it may appear inside a C++ string literal and a comment."""
    return model.graph.name.replace("\\", "_").replace('"', "_")


def model_desc(model: CompiledModel, arena_bytes: int, weight_bytes: int) -> str:
    """The `kModel` definition the runtime reports over INFO (shared by both templates)."""
    g = model.graph
    digest = ", ".join(str(b) for b in g.sha256.ljust(32, b"\0"))
    fields = [f'"{source_name(model)}"', f"{{{digest}}}", f"{arena_bytes}u", f"{weight_bytes}u",
              f"{model.macs}ull", tensor_desc(g.tensors[model.input]),
              tensor_desc(g.tensors[model.output])]
    return "const ModelDesc kModel = {\n" + "".join(f"    {f},\n" for f in fields) + "};"


_TEMPLATE = """\
// Generated by mcutrain from {name}.tflite. Do not edit: it is rewritten on every build.
#include <cstdint>

#include "runtime/model.h"
{includes}

namespace mt {{
namespace {{

// Every run-time tensor lives at a fixed offset in this arena (see report.json for the plan).
alignas(16) int8_t g_arena[{arena_bytes}];

{constants}
}}  // namespace

{model_desc}

int8_t* model_input() {{ return g_arena + {input_offset}; }}
const int8_t* model_output() {{ return g_arena + {output_offset}; }}

Status model_invoke() {{
{calls}
  return Status::kOk;
}}

// Built without a training scheme (custom_train / MCUTRAIN_TRAIN): training requests are refused.
const TrainDesc kTrain = {{false, LossKind::kNone, 0, 0, 0.0f, 0, 0, 0}};
Status model_train_step(const uint8_t*, bool, TrainResult*) {{ return Status::kUnknownRequest; }}
void model_train_reset() {{}}
Status model_set_lr(float) {{ return Status::kUnknownRequest; }}
float model_lr() {{ return 0.0f; }}
const uint8_t* model_train_state() {{ return nullptr; }}

}}  // namespace mt
"""
