"""The whole-model numpy reference (what the firmware must compute) equals TFLite's interpreter.

Faster than the emulated-board test and independent of it: when both fail, the operator's
semantics are wrong; when only the board fails, the C++ kernel or the code generator is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_support import tflite_reference
from mcutrain.compile.compiler import compile_model
from mcutrain.compile.reference import run_reference

MODELS = Path(__file__).resolve().parents[1] / "models"
ALL = sorted([*MODELS.glob("*.tflite"), *MODELS.glob("*/*.tflite")])


@pytest.mark.parametrize("model", ALL, ids=[m.stem for m in ALL])
def test_numpy_reference_matches_tflite(model: Path) -> None:
    compiled = compile_model(model)
    shape = compiled.graph.tensors[compiled.input].shape
    rng = np.random.default_rng(7)
    count = 2 if np.prod(shape) > 20000 else 10
    inputs = [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(count)]
    for x, want in zip(inputs, tflite_reference(model, inputs), strict=True):
        np.testing.assert_array_equal(run_reference(compiled, x), want.reshape(
            compiled.graph.tensors[compiled.output].shape))
