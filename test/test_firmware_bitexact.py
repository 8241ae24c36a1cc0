"""The firmware's inference on the (emulated) board equals TFLite's interpreter byte for byte.

Every model the project ships or tests is built with `pio run`, booted on QEMU's Cortex-M7 (or
the board given with --port), and fed seeded random inputs plus real samples where the model has
them; each output must be identical to TFLite's reference kernels.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from firmware_support import open_board, port_scheme, tflite_reference
from mcutrain.compile.compiler import compile_model
from mcutrain.host.device import quantize_input
from mcutrain.host.protocol import DType, TensorDesc

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
THIRD_PARTY = MODELS / "third_party"

ALL_MODELS = sorted(
    [*THIRD_PARTY.glob("*.tflite"), *MODELS.glob("*.tflite"), *(MODELS / "test").glob("*.tflite")],
    key=lambda p: p.stat().st_size,
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "model" in metafunc.fixturenames:
        port = metafunc.config.getoption("--port")
        models = [Path(metafunc.config.getoption("--port-model"))] if port else ALL_MODELS
        metafunc.parametrize("model", models, ids=[m.stem for m in models])


def _real_samples(model: Path) -> list[np.ndarray]:
    if model.stem == "tflm_micro_speech_int8":
        return [np.fromfile(THIRD_PARTY / f"micro_speech_{w}_features_49x40_int8.bin",
                            dtype=np.int8) for w in ("yes", "no")]
    if model.stem.startswith("har_"):
        data = np.load(ROOT / "data" / "har_test.npz")
        compiled = compile_model(model)
        t = compiled.graph.tensors[compiled.input]
        desc = TensorDesc(DType.INT8, t.shape, t.scale, t.zero_point, t.nbytes)
        return [quantize_input(x, desc).reshape(t.shape) for x in data["x"][:4]]
    return []


def _samples(model: Path, shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(int.from_bytes(model.stem.encode()[:4], "little"))
    count = 2 if np.prod(shape) > 20000 else 6
    random = [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(count)]
    extremes = [np.full(shape, -128, np.int8), np.full(shape, 127, np.int8)]
    return _real_samples(model) + random + extremes


def test_firmware_matches_tflite(model: Path, request: pytest.FixtureRequest) -> None:
    compiled = compile_model(model)
    shape = compiled.graph.tensors[compiled.input].shape
    inputs = _samples(model, shape)
    expected = tflite_reference(model, inputs)
    scheme = port_scheme(request.config) if request.config.getoption("--port") else None
    with open_board(request.config, model, scheme) as board:
        info = board.info()
        assert info.model_sha256 == hashlib.sha256(model.read_bytes()).digest(), (
            "the board runs a different model than the test expects")
        for i, (x, want) in enumerate(zip(inputs, expected, strict=True)):
            got, count = board.infer(x.reshape(shape))
            assert got.tobytes() == want.tobytes(), (
                f"sample {i}: firmware {got.ravel()[:16]} != TFLite {want.ravel()[:16]}")
            assert count > 0
