"""Helpers for the hardware-in-the-loop tests: build firmware for a model, open a board, and
compute the expected outputs with TFLite's own interpreter (reference kernels)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from mcutrain.host.device import Device, open_device

ROOT = Path(__file__).resolve().parents[1]


def build_firmware(model: Path, env: str = "qemu", scheme: Path | None = None,
                   input_rows: bool = False, kernels: str = "optimized",
                   profile: bool = False) -> Path:
    """Build the firmware for `model` (and training `scheme`, if given; pulling its input row
    by row with `input_rows`; with `kernels` = "reference" on the reference kernels only; with
    `profile` counting each step) in its own build dir, kept between runs so rebuilds are
    incremental."""
    tag = model.stem if scheme is None else f"{model.stem}-{scheme.stem}"
    tag += "-rows" if input_rows else ""
    tag += "-refk" if kernels == "reference" else ""
    tag += "-profile" if profile else ""
    build_root = ROOT / ".pio" / "models" / tag
    environ = dict(os.environ, MCUTRAIN_MODEL=str(model), PLATFORMIO_BUILD_DIR=str(build_root),
                   MCUTRAIN_TRAIN=str(scheme) if scheme else "",
                   MCUTRAIN_INPUT="rows" if input_rows else "whole",
                   MCUTRAIN_KERNELS=kernels, MCUTRAIN_PROFILE="on" if profile else "off")
    proc = subprocess.run(
        [sys.executable, "-m", "platformio", "run", "-s", "-e", env, "-d", str(ROOT)],
        env=environ, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        log = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        pytest.fail(f"pio run failed for {model.name}:\n{log}")
    elf = build_root / env / "firmware.elf"
    assert elf.is_file(), f"pio run succeeded but {elf} is missing"
    return elf


def port_scheme(config: pytest.Config) -> Path | None:
    """The training scheme of the board under test (--port-scheme; '' for none)."""
    chosen = config.getoption("--port-scheme")
    return Path(chosen) if chosen else None


@contextmanager
def open_board(config: pytest.Config, model: Path, scheme: Path | None = None,
               timeout: float = 60.0) -> Iterator[Device]:
    """The real board from --port, or QEMU booted with freshly built firmware for `model` (and
    `scheme`). A training build is reset first, so it runs the flashed weights."""
    port = config.getoption("--port")
    target = port if port else f"qemu:{build_firmware(model, scheme=scheme)}"
    with open_device(target, timeout=timeout) as device:
        if device.info().train.enabled:
            device.reset()
        yield device


def tflite_reference(model: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """TFLite's reference-kernel outputs, as int8, for int8 inputs of the model's int8 input.

    For float-edged models the float input is fed so that TFLite's own QUANTIZE produces the int8
    tensor the firmware receives, and the int8 tensor feeding the final DEQUANTIZE is read back.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from mcutrain.compile.compiler import compile_model

    compiled = compile_model(model)
    interp = Interpreter(model_path=str(model), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    q_in = compiled.graph.tensors[compiled.input]
    outputs = []
    for x in inputs:
        x = np.asarray(x, dtype=np.int8).reshape(detail["shape"])
        if detail["dtype"] == np.float32:
            feed = ((x.astype(np.float32) - q_in.zero_point) * np.float32(q_in.scale))
            interp.set_tensor(detail["index"], feed.astype(np.float32))
        else:
            interp.set_tensor(detail["index"], x)
        interp.invoke()
        if detail["dtype"] == np.float32:
            quantized = interp.get_tensor(compiled.input)
            np.testing.assert_array_equal(quantized.reshape(x.shape), x)
        outputs.append(interp.get_tensor(compiled.output).astype(np.int8).copy())
    return outputs
