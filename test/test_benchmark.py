"""scripts/benchmark.py's job list, parsing and aggregation, without building or running QEMU.
No timing is asserted: the numbers themselves live in results/benchmark.json."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from mcutrain.protocol import CounterUnit, DeviceInfo, DType, LossKind, TensorDesc, TrainInfo

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["benchmark"] = bench  # dataclasses look their module up while being created
_spec.loader.exec_module(bench)


def _info(macs: int = 1000, backward: int = 0, arena: int = 4096, stack: int = 500) -> DeviceInfo:
    tensor = TensorDesc(DType.INT8, (1, 4), 0.5, 0, 4)
    train = TrainInfo(enabled=bool(backward), loss=LossKind.CROSS_ENTROPY, num_classes=3,
                      backward_macs=backward)
    return DeviceInfo(1, CounterUnit.INSTRUCTIONS, 256, 0xFF, "qemu", "m", b"\0" * 32, arena, 0,
                      macs, tensor, tensor, stack, 16384, train)


SECTIONS = {".text": 9000, ".data": 100, ".bss": 5000, ".stack": 16384}


def test_training_cases_read_from_the_real_test() -> None:
    cases = bench.training_cases()
    assert cases and all(isinstance(m, str) and isinstance(s, str) for m, s in cases)
    for model, scheme in cases:
        assert (ROOT / "models" / f"{model}.tflite").is_file()
        assert (ROOT / "test" / "fixtures" / "schemes" / f"{scheme}.json").is_file()


def test_training_cases_needs_a_literal_list(tmp_path: Path) -> None:
    f = tmp_path / "t.py"
    f.write_text("CASES = [('a', 'b'), ('c/d', 'e')]\n")
    assert bench.training_cases(f) == [("a", "b"), ("c/d", "e")]
    f.write_text("CASES = make_cases()\n")
    with pytest.raises(ValueError):
        bench.training_cases(f)


def test_jobs_cover_every_model_and_scheme_with_unique_build_dirs() -> None:
    inf = bench.inference_jobs()
    names = {j.model.name for j in inf}
    shipped = {p.name for d in bench.MODEL_DIRS for p in (ROOT / d).glob("*.tflite")}
    assert names == shipped and all(j.scheme is None for j in inf)
    tr = bench.training_jobs()
    schemes = {j.scheme.name for j in tr if j.scheme and j.scheme.parent.name == "train"}
    assert schemes == {p.name for p in (ROOT / "train").glob("*.json")}
    assert len(tr) == len(schemes) + len(bench.training_cases())
    all_jobs = inf + tr
    assert len({j.build_dir for j in all_jobs}) == len(all_jobs)
    assert all(j.build_dir.parent == ROOT / ".pio" / "bench" for j in all_jobs)


def test_count_stats() -> None:
    assert bench.count_stats([10, 20, 30]) == {"mean": 20.0, "min": 10, "max": 30, "runs": 3}
    with pytest.raises(ValueError):
        bench.count_stats([])
    assert bench.per_mac(2500.0, 1000) == 2.5
    assert bench.per_mac(5.0, 0) is None


def test_peak_sram_is_static_plus_stack_high_water_not_reserved_stack() -> None:
    mem = bench.memory_record(SECTIONS, 12345, _info(stack=640))
    assert mem["static_sram_bytes"] == 5100
    assert mem["peak_sram_bytes"] == 5100 + 640
    assert mem["stack_reserved_bytes"] == 16384
    assert mem["flash_bytes"] == 12345 and mem["arena_bytes"] == 4096


def test_inference_and_training_records() -> None:
    job = bench.Job("m", ROOT / "models" / "har_cnn1d_int8.tflite")
    rec = bench.inference_record(job, _info(macs=1000), [4000, 4010], SECTIONS, 9000)
    assert rec["model"] == "models/har_cnn1d_int8.tflite"
    assert rec["instructions"]["mean"] == 4005.0 and rec["instructions_per_mac"] == 4.005

    tjob = bench.Job("m-t", job.model, ROOT / "train" / "har_adapt.json")
    report = {"training": {"arena_bytes": 7, "state_bytes": 8, "saved_activation_bytes": 9,
                           "mask_bytes": 1, "peak_gradient_bytes": 2, "peak_sram_bytes": 3,
                           "backward_macs": 500, "trained": []}}
    trec = bench.training_record(tjob, _info(macs=1000, backward=500), [3000], SECTIONS, 9000,
                                 report)
    assert trec["scheme"] == "train/har_adapt.json"
    assert trec["forward_macs"] == 1000 and trec["backward_macs"] == 500
    assert trec["instructions_per_mac"] == 2.0  # per forward + backward MAC
    assert set(trec["report"]) == set(bench.REPORT_TRAIN_KEYS)
    assert trec["report"]["saved_activation_bytes"] == 9


def test_reference_block_is_labelled_as_quoted() -> None:
    ref = bench.REFERENCE
    assert "MISSION.md" in ref["source"] and "not measured" in ref["source"]
    mnv2 = ref["models"][0]
    assert mnv2["cmsis_nn_instructions"] == 81_400_000 and mnv2["arena_bytes"] == 312 * 1024


def test_committed_results_have_the_expected_shape() -> None:
    path = ROOT / "results" / "benchmark.json"
    assert path.is_file(), "results/benchmark.json is committed: run scripts/benchmark.py"
    data = json.loads(path.read_text())
    assert {"provenance", "inference", "training", "reference"} <= set(data)
    assert data["provenance"]["git_commit"] and data["provenance"]["command"]
    for rec in data["inference"] + data["training"]:
        assert rec["peak_sram_bytes"] == rec["static_sram_bytes"] + rec["stack_high_water_bytes"]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    job = bench.Job("mobilenetv2_x", ROOT / "models" / "har_cnn1d_int8.tflite")
    inf = bench.inference_record(job, _info(), [4000], SECTIONS, 9000)
    tjob = bench.Job("m-t", job.model, ROOT / "train" / "har_adapt.json")
    tr = bench.training_record(tjob, _info(backward=10), [3000], SECTIONS, 9000, {})
    out = tmp_path / "b.png"
    bench.plot({"inference": [inf], "training": [tr], "reference": bench.REFERENCE}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
