"""The PROFILE request: a custom_profile build counts each schedule step of an inference, and a
training build also the loss and each backward step of a TRAIN.

The per-step counts are what the benchmark's per-kernel instructions per MAC come from, so they
are checked against the whole inference's count from INFER (they must add up to it, less only
the little the runtime does between steps), step for step against report.json, and on a
row-streamed model, whose steps run in bands. A build without profiling answers no steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from firmware_support import build_firmware
from mcutrain.host import kept_board
from mcutrain.host.cli import main as cli_main
from mcutrain.host.device import open_device

ROOT = Path(__file__).resolve().parents[1]
WAND = ROOT / "models" / "third_party" / "arduino_magic_wand_int8.tflite"
MBV2 = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"
HAR = ROOT / "models" / "har_cnn1d_int8.tflite"
HAR_ADAPT = ROOT / "train" / "har_adapt.json"
HAR_TEST = ROOT / "data" / "har_test.npz"


def _profiled_inference(model: Path, seed: int = 0) -> tuple[list[int], int, dict]:
    elf = build_firmware(model, profile=True)
    report = json.loads((elf.parent / "report.json").read_text())
    with open_device(f"qemu:{elf}") as dev:
        info = dev.info()
        x = np.random.default_rng(seed).integers(-128, 128, size=info.input.shape, dtype=np.int8)
        _, total = dev.infer(x)
        return dev.profile(), total, report


@pytest.mark.parametrize("model", [WAND, MBV2], ids=lambda p: p.stem)
def test_step_counts_add_up_to_the_inference(model: Path) -> None:
    steps, total, report = _profiled_inference(model)
    operators = report["operators"]
    assert len(steps) == len(operators)
    # Every step that runs a kernel takes time; an aliasing step (RESHAPE) none.
    for count, op in zip(steps, operators, strict=True):
        if op["macs"] > 0:
            assert count > 0, op
        # Below the 0.5 instructions per MAC floor (two MACs per SMLAD) a count would belong to
        # another step; far above it, it would hold another step's work too.
        if op["macs"] >= 10_000:
            assert 0.5 <= count / op["macs"] <= 60, (op, count)
    # Each band's bookkeeping in a stream is not in any step either.
    _assert_adds_up(steps, total)
    if model == MBV2:
        assert report["streams"], "the premise: MobileNetV2 runs row-streamed"


def _assert_adds_up(steps: list[int], total: int) -> None:
    # Counter resolution is 5 instructions per tick on QEMU (shift=3), and the runtime's own
    # work between steps is not in any step.
    assert sum(steps) <= total
    assert total - sum(steps) < 0.02 * total + 2000, (total, sum(steps))


def test_a_training_step_is_counted_forward_loss_and_backward() -> None:
    elf = build_firmware(HAR, scheme=HAR_ADAPT, profile=True)
    report = json.loads((elf.parent / "report.json").read_text())
    operators, backward = report["operators"], report["training"]["backward_steps"]
    with open_device(f"qemu:{elf}") as dev:
        info = dev.info()
        x = np.random.default_rng(1).integers(-128, 128, size=info.input.shape, dtype=np.int8)
        trained = dev.train(x, 1)
        steps = dev.profile()
        _, inferred = dev.infer(x)
        inference_steps = dev.profile()
    assert len(steps) == len(operators) + 1 + len(backward)
    _assert_adds_up(steps, trained.counter)
    forward, loss, back = (steps[:len(operators)], steps[len(operators)],
                           steps[len(operators) + 1:])
    assert all(n > 0 for n, op in zip(forward, operators, strict=True) if op["macs"] > 0)
    assert loss > 0
    # Every backward step of this scheme runs a kernel (bias, weight or input gradient).
    assert all(n > 0 for n in back), back
    assert len(report["training"]["forward_kernels"]) == len(operators)
    for n, b in zip(back, backward, strict=True):
        if b["macs"] >= 10_000:
            assert 0.5 <= n / b["macs"] <= 60, (b, n)
    # An INFER on the same build counts the forward steps only, afresh.
    assert len(inference_steps) == len(steps)
    _assert_adds_up(inference_steps, inferred)
    assert not any(inference_steps[len(operators):])
    assert all(n > 0 for n, op in zip(inference_steps[:len(operators)], operators, strict=True)
               if op["macs"] > 0)


def test_an_unprofiled_build_answers_no_steps() -> None:
    elf = build_firmware(WAND)
    with open_device(f"qemu:{elf}") as dev:
        info = dev.info()
        dev.infer(np.zeros(info.input.shape, np.int8))
        assert dev.profile() == []


def test_cli_profile_labels_the_last_training_step(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    elf = build_firmware(HAR, scheme=HAR_ADAPT, profile=True)
    port = f"qemu:{elf}"
    kept_board.stop(elf)
    try:
        assert cli_main(["profile", "--port", port]) == 1
        assert "nothing has run since the board started" in capsys.readouterr().err
        assert cli_main(["train", "--port", port, "--data", str(HAR_TEST), "--epochs", "1",
                         "--limit", "2", "--quiet", "--out", str(tmp_path)]) == 0
        capsys.readouterr()
        assert cli_main(["profile", "--port", port, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["rows"]
        assert [r["pass"] for r in rows].count("backward") == 4
        assert rows[-1]["opcode"] == "CONV_2D" and rows[-1]["instructions"] > 0
        assert cli_main(["profile", "--port", port]) == 0
        table = capsys.readouterr().out
        assert "backward" in table and "instructions" in table and "per kernel:" in table
        assert cli_main(["profile", "--port", port, "--report", str(HAR_ADAPT)]) == 1
        assert "is not a build's report.json" in capsys.readouterr().err
    finally:
        kept_board.stop(elf)
