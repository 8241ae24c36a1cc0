"""The operators' builtin options: which flatbuffer options table each operator carries and how
it becomes `Operator.options`, declared by the operator's own module.

An operator module (mcutrain.ops.<op>) gives its OpDef an OptionsDef; ops.base.register() puts
it here with declare(). The reader (tflite_reader) asks declared() while it reads, so a new
operator brings its options without a reader edit. The frontend sits below ops
(test/test_layout.py), so it never imports them; ops importing this module points down.

Why the reader can never run without the declarations: every import of the package runs
mcutrain/__init__.py first, and that loads every operator module (ops.load_all()), so by the time
any frontend module is usable all options are declared. The root is the package's composition
point, above every stage, and test_layout lets it import them. As a second guard, declared()
raises RuntimeError when no operator module has declared anything (a broken import order), so a
model can never be read silently with its options left empty.

The helpers below are the small API the parsers use: table() and required() fetch an options
table (required() for the ones TFLite zero-fills into parameters its kernels refuse, raising
MissingOptions, which the reader turns into its one-line ModelError), activation() and padding()
decode the enums as the IR spells them.

DEQUANTIZE is the one operator the frontend declares itself: no op module implements it, and
graph.strip_io_conversions removes it at a float output, but the reader still checks its options
type like every other operator's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tflite

OptionsParser = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class OptionsDef:
    """An operator's options: the BuiltinOptions type its table must have (another type is a
    read-time error unless flatbuffer_check can verify it), and the parser of that table into
    `Operator.options` (None: the operator has no fields to read, e.g. PAD, QUANTIZE)."""

    type: int  # a tflite.BuiltinOptions code
    parse: OptionsParser | None = None


# Declared by the operator modules through ops.base.register().
_DECLARED: dict[str, OptionsDef] = {}
# Operators the frontend handles itself (module docstring).
FRONTEND_OPERATORS: dict[str, OptionsDef] = {
    "DEQUANTIZE": OptionsDef(tflite.BuiltinOptions.DequantizeOptions),
}


def declare(opcode: str, options: OptionsDef) -> None:
    _DECLARED[opcode] = options


def declared(opcode: str) -> OptionsDef | None:
    """The OptionsDef of `opcode`, None for an operator without an options table (LOGISTIC) or
    one nobody implements (the compiler refuses those by name later)."""
    if not _DECLARED:
        raise RuntimeError("no operator declared its options: mcutrain.ops.load_all() has not run "
                           "(mcutrain/__init__.py runs it on import; keep that call)")
    return _DECLARED.get(opcode, FRONTEND_OPERATORS.get(opcode))


class MissingOptions(Exception):
    """Options TFLite zero-fills when absent, giving parameters its kernels refuse (stride 0,
    beta 0); the message names the options table."""


_ACTIVATIONS = {
    v: k for k, v in vars(tflite.ActivationFunctionType).items() if not k.startswith("_")
}
_PADDINGS = {v: k for k, v in vars(tflite.Padding).items() if not k.startswith("_")}


def table(op: Any, cls: type) -> Any | None:
    """The operator's options as `cls`, or None when absent or of another type (TFLite's
    builtin_options_as_X() also gives null then, and the defaults apply)."""
    raw = op.BuiltinOptions()
    if raw is None or int(op.BuiltinOptionsType()) != getattr(tflite.BuiltinOptions,
                                                                cls.__name__):
        return None
    opts = cls()
    opts.Init(raw.Bytes, raw.Pos)
    return opts


def required(op: Any, cls: type, fields: str) -> Any:
    """table(op, cls), or MissingOptions naming `fields` (what stays unknown without it)."""
    o = table(op, cls)
    if o is None:
        raise MissingOptions(f"{cls.__name__} ({fields} unknown)")
    return o


def padding(code: int) -> str:
    return _PADDINGS.get(int(code), f"UNKNOWN_PADDING_{code}")


def activation(code: int) -> str:
    return _ACTIVATIONS.get(int(code), f"UNKNOWN_ACTIVATION_{code}")


def activation_only(cls: type) -> OptionsParser:
    """Parser of an options table whose only field the IR keeps is the fused activation."""
    def parse(op: Any) -> dict[str, Any]:
        o = table(op, cls)
        return {"activation": activation(o.FusedActivationFunction()) if o else "NONE"}
    return parse
