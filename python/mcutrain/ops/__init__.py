"""Operator library: importing a module registers its OpDef (see ops/base.py for the contract).

Beside the operator modules sit what they are built from, the numeric mirrors of the firmware's
shared kernel headers (quant.py: fixed_point.h, train_math.py: train_math.h) and the C++ emission
helpers (cxx.py). They import only frontend.graph, so every later stage may use them.
"""

from __future__ import annotations

import importlib
import pkgutil

_loaded = False
_NOT_OPERATORS = ("base", "common", "cxx", "float_common", "quant", "train_math")


def load_all() -> None:
    """Import every operator module once so REGISTRY is complete."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_OPERATORS:
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True
