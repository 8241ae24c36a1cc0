"""Helpers for the hardware-in-the-loop tests: build firmware for a model, open a board, and
compute the expected outputs with TFLite Micro's interpreter (the reference the firmware follows)
and with LiteRT's reference kernels (which differ from it in FULLY_CONNECTED's rounding)."""

from __future__ import annotations

import os
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


class ModelRun(ABC):
    """One interpreter on one model, fed the int8 tensor the firmware receives.

    For float-edged models the float input is fed so that the interpreter's own QUANTIZE
    produces that int8 tensor (checked), and `output` is the int8 tensor feeding the final
    DEQUANTIZE, the firmware's output. Every tensor stays readable after `run` (`tensor`), so
    two interpreters can be compared operator by operator."""

    def __init__(self, model: Path | bytes) -> None:
        from mcutrain.compile.compiler import compile_model

        self.data = model if isinstance(model, bytes) else model.read_bytes()
        compiled = compile_model(self.data)
        q_in = compiled.graph.tensors[compiled.input]
        self.int8_input, self.int8_output = compiled.input, compiled.output
        self.scale, self.zero_point = np.float32(q_in.scale), q_in.zero_point

    @abstractmethod
    def _invoke(self, feed: Callable[[type, tuple[int, ...]], np.ndarray]) -> type:
        """Sets the input to feed(dtype, shape) of the model's input tensor, runs the model and
        returns that dtype."""

    @abstractmethod
    def tensor(self, index: int) -> np.ndarray:
        """Tensor `index` of subgraph 0 after the last run."""

    def run(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.int8)

        def feed(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
            if dtype == np.float32:
                return ((x.astype(np.float32) - self.zero_point) * self.scale).reshape(shape)
            return x.reshape(shape)

        if self._invoke(feed) == np.float32:
            np.testing.assert_array_equal(self.tensor(self.int8_input).ravel(), x.ravel())

    def output(self, x: np.ndarray) -> np.ndarray:
        """The int8 output for the int8 input x."""
        self.run(x)
        return self.tensor(self.int8_output).astype(np.int8).copy()


class LiteRTRun(ModelRun):
    """LiteRT's reference kernels (OpResolverType.BUILTIN_REF)."""

    def __init__(self, model: Path | bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        super().__init__(model)
        self.interp = Interpreter(model_content=self.data, experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        self.interp.allocate_tensors()

    def _invoke(self, feed: Callable[[type, tuple[int, ...]], np.ndarray]) -> type:
        detail = self.interp.get_input_details()[0]
        self.interp.set_tensor(detail["index"], feed(detail["dtype"], tuple(detail["shape"])))
        self.interp.invoke()
        return detail["dtype"]

    def tensor(self, index: int) -> np.ndarray:
        return self.interp.get_tensor(index)


def tflm_interpreter(data: bytes) -> Any:
    """TFLite Micro's interpreter on a model, every tensor readable after invoke (GetTensor)."""
    from tflite_micro.python.tflite_micro import runtime

    # The arena holds every tensor at once (all preserved); TFLM's default, ten times the file's
    # size, need not suffice for a model with few weights and large activations.
    return runtime.Interpreter.from_bytes(
        data, arena_size=16 * len(data) + (1 << 20),
        intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)


class TFLMRun(ModelRun):
    """TFLite Micro's interpreter (PyPI tflite-micro: its reference kernels, built for the host).
    kPreserveAllTensors keeps every tensor in its own arena slot, so intermediate tensors (the
    int8 one before a float model's DEQUANTIZE) can be read back; the runtime's own
    get_output only gives the model's outputs."""

    def __init__(self, model: Path | bytes) -> None:
        super().__init__(model)
        self.interp = tflm_interpreter(self.data)

    def _invoke(self, feed: Callable[[type, tuple[int, ...]], np.ndarray]) -> type:
        detail = self.interp.get_input_details(0)
        self.interp.set_input(feed(detail["dtype"], tuple(detail["shape"])), 0)
        self.interp.invoke()
        return detail["dtype"]

    def tensor(self, index: int) -> np.ndarray:
        return np.asarray(self.interp.GetTensor(index, 0)["tensor_data"])


def tflite_reference(model: Path | bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """LiteRT's reference-kernel outputs, as int8, for int8 inputs of the model's int8 input."""
    run = LiteRTRun(model)
    return [run.output(x) for x in inputs]


def tflm_reference(model: Path | bytes, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """TFLite Micro's outputs, as int8, for int8 inputs of the model's int8 input."""
    run = TFLMRun(model)
    return [run.output(x) for x in inputs]
