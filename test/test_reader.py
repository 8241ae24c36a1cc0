"""The TFLite reader: real third-party files, and bad input that must fail cleanly."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mcutrain.compile.compiler import compile_model
from mcutrain.frontend.graph import ModelError
from mcutrain.frontend.tflite_reader import read_tflite
from mcutrain.ops.base import lookup

MODELS = Path(__file__).resolve().parents[1] / "models"
MAGIC_WAND = MODELS / "third_party" / "arduino_magic_wand_int8.tflite"
MICRO_SPEECH = MODELS / "third_party" / "tflm_micro_speech_int8.tflite"
HELLO_WORLD = MODELS / "third_party" / "tflm_hello_world_int8.tflite"


def test_reads_micro_speech_structure() -> None:
    g = read_tflite(MICRO_SPEECH)
    assert [op.opcode for op in g.operators] == [
        "RESHAPE", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX"]
    dw = g.operators[1]
    assert dw.options["depth_multiplier"] == 8
    assert (dw.options["stride_h"], dw.options["padding"]) == (2, "SAME")
    filt = g.tensors[dw.inputs[1]]
    assert filt.shape == (1, 10, 8, 8) and filt.data is not None
    assert filt.quant is not None and filt.quant.per_channel and filt.quant.axis == 3
    inp = g.tensors[g.inputs[0]]
    assert inp.shape == (1, 1960) and inp.dtype == "int8"
    assert inp.zero_point == -128 and inp.scale == pytest.approx(0.101716, rel=1e-5)


def test_constant_data_matches_buffer() -> None:
    g = read_tflite(HELLO_WORLD)
    weights = [t for t in g.tensors if t.is_const and t.dtype == "int8"]
    assert {t.shape for t in weights} == {(16, 1), (16, 16), (1, 16)}
    assert all(t.data.dtype == np.int8 and t.data.shape == t.shape for t in weights)


def test_unsupported_operator_is_one_line_naming_it() -> None:
    g = read_tflite(MAGIC_WAND)
    g.operators[3].opcode = "TANH"
    with pytest.raises(ModelError) as err:
        lookup(g.operators[3])
    message = str(err.value)
    assert "operator 3 is TANH" in message and "CONV_2D" in message and "\n" not in message


def test_not_a_flatbuffer() -> None:
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        read_tflite(b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_missing_file() -> None:
    with pytest.raises(ModelError, match="not found"):
        read_tflite(MODELS / "nope.tflite")


@pytest.mark.parametrize("keep", [12, 100, 1000, 5000, 15000])
def test_truncated_file_is_a_clear_error(keep: int) -> None:
    data = MAGIC_WAND.read_bytes()[:keep]
    with pytest.raises(ModelError, match="corrupt|truncated|not a TFLite"):
        compile_model(data)


def test_random_corruption_never_tracebacks_or_hangs() -> None:
    rng = np.random.default_rng(0)
    original = np.frombuffer(MICRO_SPEECH.read_bytes(), dtype=np.uint8)
    start = time.monotonic()
    for _ in range(60):
        data = original.copy()
        spots = rng.integers(8, data.size, size=8)
        data[spots] = rng.integers(0, 256, size=spots.size, dtype=np.uint8)
        try:
            compile_model(data.tobytes())
        except ModelError:
            pass  # a clear error is the right answer; succeeding on harmless flips is fine too
    assert time.monotonic() - start < 60, "reader took pathologically long on corrupt input"


# ---- the operators' options, declared by their op modules (frontend/options.py) ----


def test_each_operator_module_declares_the_options_the_reader_uses() -> None:
    from mcutrain.frontend.options import declared
    from mcutrain.ops.base import REGISTRY

    with_options = {k: v for k, v in REGISTRY.items() if v.options is not None}
    assert {"CONV_2D", "SOFTMAX", "PAD", "QUANTIZE"} <= set(with_options)
    for opcode, opdef in with_options.items():
        assert declared(opcode) is opdef.options, opcode
    assert declared("LOGISTIC") is None  # no options table, nothing to check


def test_importing_only_the_reader_still_parses_options() -> None:
    # A fresh interpreter that names nothing but the reader: the package root loads the ops.
    import subprocess
    import sys

    code = ("from mcutrain.frontend.tflite_reader import read_tflite; "
            f"print(read_tflite({str(MICRO_SPEECH)!r}).operators[1].options['depth_multiplier'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "8", done.stderr[-400:]


def test_reader_refuses_to_read_without_declared_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcutrain.frontend import options

    monkeypatch.setattr(options, "_DECLARED", {})
    with pytest.raises(RuntimeError, match=r"no operator declared its options.*load_all"):
        read_tflite(MICRO_SPEECH)
