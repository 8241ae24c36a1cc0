"""mcutrain: compile an int8 TFLite model into firmware that runs (and later trains) it on a
Cortex-M7 within 256 KB, and drive that firmware from the host over serial.

The package root is the composition point above every pipeline stage: it loads every operator
module, so the operators' registry (ops.REGISTRY) and their options declarations, which the
reader uses (frontend/options.py), are complete before any stage runs. Importing any submodule
runs this first.
"""

from . import ops as _ops

__version__ = "0.1.0"

_ops.load_all()
