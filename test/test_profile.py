"""The PROFILE request: a custom_profile build counts each schedule step of an inference.

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
from mcutrain.host.device import open_device

ROOT = Path(__file__).resolve().parents[1]
WAND = ROOT / "models" / "third_party" / "arduino_magic_wand_int8.tflite"
MBV2 = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"


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
    # Counter resolution is 5 instructions per tick on QEMU (shift=3), and the runtime's own
    # work between steps (and each band's bookkeeping in a stream) is not in any step.
    assert sum(steps) <= total
    assert total - sum(steps) < 0.02 * total + 2000, (total, sum(steps))
    if model == MBV2:
        assert report["streams"], "the premise: MobileNetV2 runs row-streamed"


def test_an_unprofiled_build_answers_no_steps() -> None:
    elf = build_firmware(WAND)
    with open_device(f"qemu:{elf}") as dev:
        info = dev.info()
        dev.infer(np.zeros(info.input.shape, np.int8))
        assert dev.profile() == []
