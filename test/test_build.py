"""`pio run` as users run it: both boards link within the STM32F746's memory, rebuilds are
incremental, and a model that cannot fit stops the build before compiling with the numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_support import build_firmware
from mcutrain.compile.firmware_size import firmware_size
from tflite_convert import convert_full_int8

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "har_cnn1d_int8.tflite"
MOBILENET = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"
F746_FLASH = 1024 * 1024
F746_RAM = 320 * 1024
TRAIN_RAM = 256 * 1024


def pio_run(build_dir: Path, model: Path | None, env: str = "qemu") -> subprocess.CompletedProcess:
    environ = dict(os.environ, PLATFORMIO_BUILD_DIR=str(build_dir))
    environ.pop("MCUTRAIN_MODEL", None)
    if model is not None:
        environ["MCUTRAIN_MODEL"] = str(model)
    return subprocess.run([sys.executable, "-m", "platformio", "run", "-e", env, "-d", str(ROOT)],
                          env=environ, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("env", ["disco_f746ng", "qemu"])
def test_default_training_build_links_within_256k(env: str, tmp_path: Path) -> None:
    proc = pio_run(tmp_path, None, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{DEFAULT_MODEL.name}: model code generated" in proc.stdout
    report = json.loads((tmp_path / env / "report.json").read_text())
    assert report["training"]["scheme"] == "har_adapt"
    size = firmware_size(tmp_path / env / "firmware.elf")
    assert size.flash_bytes <= F746_FLASH and size.ram_bytes <= TRAIN_RAM, size
    # The pre-check's sum bounds what the linker placed on both boards (so what it accepts links)
    # and is not loose by more than the runtime allowance's headroom.
    from mcutrain.compile.compiler import compile_model
    from mcutrain.compile.report import BoardLimits
    from mcutrain.train.report import training_ram
    from mcutrain.train.scheme import load_scheme
    from mcutrain.train.training_graph import build_training

    program = build_training(compile_model(DEFAULT_MODEL), load_scheme(ROOT / "train" /
                                                                       "har_adapt.json"))
    # The stack the link step sized from compiled stack use (test_stack_reserve.py checks it).
    stack = report["stack"]["reserved_bytes"]
    need = training_ram(program, BoardLimits(env, F746_RAM, F746_FLASH, stack_bytes=stack)).total
    assert need - 1024 < size.linked_ram_bytes <= need, (need, size)
    assert f"mcutrain: SRAM {size.linked_ram_bytes} B linked = arena " in proc.stdout
    assert f"+ stack {stack} + runtime statics" in proc.stdout


def test_mobilenetv2_inference_fits_the_f746() -> None:
    size = firmware_size(build_firmware(MOBILENET))
    assert size.ram_bytes <= F746_RAM and size.flash_bytes <= F746_FLASH, size
    from mcutrain.compile.compiler import compile_model
    from mcutrain.compile.report import BoardLimits, inference_ram

    elf = build_firmware(MOBILENET)
    stack = json.loads((elf.parent / "report.json").read_text())["stack"]["reserved_bytes"]
    need = inference_ram(compile_model(MOBILENET), BoardLimits("f746", F746_RAM, F746_FLASH,
                                                               stack_bytes=stack))
    assert size.linked_ram_bytes <= need.total <= F746_RAM, (need, size)


def test_unchanged_model_regenerates_and_recompiles_nothing(tmp_path: Path) -> None:
    first = pio_run(tmp_path, DEFAULT_MODEL)
    assert first.returncode == 0 and "model code generated" in first.stdout
    # The configured scheme belongs to the configured model: swapping the model drops it.
    assert "building inference only" in first.stdout
    second = pio_run(tmp_path, DEFAULT_MODEL)
    assert second.returncode == 0 and "model code up to date" in second.stdout
    assert "Compiling" not in second.stdout, second.stdout
    other = ROOT / "models" / "third_party" / "tflm_micro_speech_int8.tflite"
    third = pio_run(tmp_path, other)
    assert third.returncode == 0 and f"{other.name}: model code generated" in third.stdout
    assert "generated_obj/model.o" in third.stdout


@pytest.fixture(scope="module")
def too_big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wide convolution at 96x96: its input and output need ~460 KB of SRAM together."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((96, 96, 8), batch_size=1)
    model = tf.keras.Model(inputs, tf.keras.layers.Conv2D(42, 3, padding="same")(inputs))

    def calibration():
        for _ in range(4):
            yield [np.random.default_rng(0).normal(size=(1, 96, 96, 8)).astype(np.float32)]

    path = tmp_path_factory.mktemp("big") / "too_big.tflite"
    path.write_bytes(convert_full_int8(tf.lite.TFLiteConverter.from_keras_model(model),
                                       calibration))
    return path


def test_model_that_does_not_fit_stops_the_build_with_the_numbers(
        too_big_model: Path, tmp_path: Path) -> None:
    proc = pio_run(tmp_path, too_big_model)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "too_big does not fit" in log and "B over" in log, log[-2000:]
    assert "dominated by" in log and "(387072 B)" in log, log[-2000:]
    assert "Compiling" not in log, "the build compiled before refusing the model"


@pytest.mark.parametrize("scheme", ['{"bias_layers": "three"}', '{"lr": null}',
                                    '{"weights": [{"layer": "no/such/tensor"}]}'])
def test_bad_scheme_stops_the_build_with_one_line_and_no_traceback(
        scheme: str, tmp_path: Path) -> None:
    path = tmp_path / "bad_scheme.json"
    path.write_text(scheme)
    environ = dict(os.environ, PLATFORMIO_BUILD_DIR=str(tmp_path / "build"),
                   MCUTRAIN_TRAIN=str(path))
    environ.pop("MCUTRAIN_MODEL", None)
    proc = subprocess.run([sys.executable, "-m", "platformio", "run", "-e", "qemu", "-d",
                           str(ROOT)], env=environ, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    errors = [line for line in log.splitlines() if line.startswith("mcutrain: error: ")]
    assert len(errors) == 1 and errors[0].startswith("mcutrain: error: bad_scheme: "), log[-2000:]
    assert "Traceback" not in log and "Compiling" not in log, log[-2000:]


def test_ram_precheck_agrees_with_the_linker_at_the_boundary(tmp_path: Path) -> None:
    """The stack reservation moves the RAM boundary byte by byte: with the stack that leaves
    exactly what the pre-check says the model and runtime need, the firmware links; one byte
    more and the pre-check refuses (before compiling), instead of `ld` failing after it."""
    from mcutrain.compile.compiler import compile_model
    from mcutrain.compile.report import BoardLimits, inference_ram

    need = inference_ram(compile_model(DEFAULT_MODEL), BoardLimits("f746", F746_RAM, F746_FLASH,
                                                                    stack_bytes=0))
    stack = F746_RAM - need.total
    environ = dict(os.environ, PLATFORMIO_BUILD_DIR=str(tmp_path), MCUTRAIN_TRAIN="",
                   MCUTRAIN_MODEL=str(DEFAULT_MODEL))
    for extra, fits in ((0, True), (1, False)):
        environ["PLATFORMIO_BUILD_FLAGS"] = f"-Wl,--defsym=__stack_size__={stack + extra}"
        proc = subprocess.run([sys.executable, "-m", "platformio", "run", "-e", "qemu", "-d",
                               str(ROOT)], env=environ, capture_output=True, text=True,
                              timeout=900)
        log = proc.stdout + proc.stderr
        assert (proc.returncode == 0) == fits, log[-3000:]
        if fits:
            used = firmware_size(tmp_path / "qemu" / "firmware.elf").linked_ram_bytes
            assert used <= F746_RAM, used
        else:
            assert "har_cnn1d_int8 does not fit" in log and "(1 B over)" in log, log[-3000:]
            assert f"stack {stack + 1}" in log and "Compiling" not in log, log[-3000:]
            assert "RAM overflow" not in log, log[-3000:]


def test_stack_size_is_read_like_the_linker_reads_it() -> None:
    from mcutrain.compile.firmware_size import DEFAULT_STACK_BYTES, stack_bytes_from_flags
    from mcutrain.frontend.graph import ModelError

    script = (ROOT / "firmware" / "bsp" / "cortex_m7_sections.ld").read_text()
    assert f"__stack_size__ : {DEFAULT_STACK_BYTES // 1024}K;" in script
    assert stack_bytes_from_flags(["-O2", "-Wl,--gc-sections"]) == DEFAULT_STACK_BYTES
    assert stack_bytes_from_flags(["-Wl,--defsym=__stack_size__=8K"]) == 8192
    assert stack_bytes_from_flags(["-Wl,--defsym,__stack_size__=0x1000", "-g"]) == 4096
    assert stack_bytes_from_flags(["-Wl,--defsym=__stack_size__=1", "-Wl,--defsym="
                                   "__stack_size__=12345"]) == 12345
    with pytest.raises(ModelError, match="cannot read the stack size 'lots'"):
        stack_bytes_from_flags(["-Wl,--defsym=__stack_size__=lots"])


def test_inference_fit_check_counts_arena_runtime_and_stack_exactly() -> None:
    from mcutrain.compile.compiler import compile_model
    from mcutrain.compile.report import RUNTIME_STATIC_RAM, BoardLimits, check_fits, inference_ram
    from mcutrain.frontend.graph import ModelError

    model = compile_model(DEFAULT_MODEL)
    need = inference_ram(model, BoardLimits("f746", F746_RAM, F746_FLASH)).total
    assert need == -(-model.arena_bytes // 16) * 16 + RUNTIME_STATIC_RAM + 16 * 1024
    check_fits(model, 0, BoardLimits("b", need, F746_FLASH))
    with pytest.raises(ModelError, match=r"needs \d+ B of SRAM \(arena \d+ \+ runtime 1024 \+ "
                                         r"stack 16384\) but the board has \d+ B \(1 B over\)"):
        check_fits(model, 0, BoardLimits("b", need - 1, F746_FLASH))
