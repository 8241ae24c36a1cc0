"""scripts/benchmark.py: its job list, command line, aggregation and plot without QEMU, and one
benchmark of a user's model on QEMU. No timing is asserted: the numbers themselves live in
results/benchmark.json."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from mcutrain.host.protocol import CounterUnit, DeviceInfo, DType, LossKind, TensorDesc, TrainInfo
from plot_layout import figure_texts, layout_problems, saved_figure

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "models" / "har_cnn1d_int8.tflite"
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


def test_every_train_scheme_job_names_a_model_the_scheme_is_written_for() -> None:
    """A train/ scheme addresses layers of one model: its benchmark job must build it on that
    model (the MobileNetV2 scheme's layer -17 does not exist on the HAR model)."""
    from mcutrain.compile.compiler import compile_model
    from mcutrain.train.scheme import load_scheme
    from mcutrain.train.training_graph import build_training

    for job in bench.training_jobs():
        if job.scheme is not None and job.scheme.parent.name == "train":
            build_training(compile_model(job.model), load_scheme(job.scheme))


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
    streamed = {"sram": {"total_bytes": 5}, "streams": [
        {"first_step": 0, "last_step": 3, "macs": 900, "executed_macs": 900}]}
    rec = bench.inference_record(job, _info(macs=1000), [4000, 4010], SECTIONS, 9000, streamed)
    assert rec["row_streamed_steps"] == [[0, 3]] and rec["recompute_macs"] == 0
    assert rec["sram"] == {"total_bytes": 5}
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


def _millions(cell: str) -> float:
    value, unit = cell.split()
    return float(value) * {"M": 1e6, "KB": 1024}[unit]


def test_reference_figures_are_those_the_repository_documents() -> None:
    ref = bench.REFERENCE
    doc = ROOT / ref["source"].split(" (")[0]
    assert doc.is_file() and doc.is_relative_to(ROOT), ref["source"]
    assert "not measured" in ref["source"]
    rows = {cells[0]: cells[1:] for line in doc.read_text().splitlines()
            if (cells := [c.strip() for c in line.strip().strip("|").split("|")])}
    for m in ref["models"]:
        macs, tflm, cmsis, arena = rows[m["model"]][:4]
        assert _millions(macs) == pytest.approx(m["macs"], rel=1e-9), m["model"]
        assert _millions(tflm) == pytest.approx(m["tflm_reference_instructions"], rel=1e-9)
        assert _millions(cmsis) == pytest.approx(m["cmsis_nn_instructions"], rel=1e-9)
        assert _millions(arena) == m["arena_bytes"]
        assert m["ours"] is None or (ROOT / "models" / f"{m['ours']}.tflite").is_file()


def test_committed_results_have_the_expected_shape() -> None:
    path = ROOT / "results" / "benchmark.json"
    assert path.is_file(), "results/benchmark.json is committed: run scripts/benchmark.py"
    data = json.loads(path.read_text())
    assert {"provenance", "inference", "training", "reference"} <= set(data)
    assert data["provenance"]["git_commit"] and data["provenance"]["command"]
    for rec in data["inference"] + data["training"]:
        assert rec["peak_sram_bytes"] == rec["static_sram_bytes"] + rec["stack_high_water_bytes"]
        assert rec["input_pulled"] == rec["name"].endswith("-input-rows"), rec["name"]
    assert data["reference"] == bench.REFERENCE, "re-run scripts/benchmark.py"


def _small_result() -> dict:
    job = bench.Job("my_model", HAR)
    inf = bench.inference_record(job, _info(), [4000], SECTIONS, 9000, {})
    tjob = bench.Job("my_model-train-s", job.model, ROOT / "train" / "har_adapt.json")
    tr = bench.training_record(tjob, _info(backward=10), [3000], SECTIONS, 9000, {})
    return {"inference": [inf], "training": [tr], "reference": bench.REFERENCE}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "b.png"
    bench.plot(_small_result(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_committed_plot_labels_do_not_collide(tmp_path: Path) -> None:
    data = json.loads((ROOT / "results" / "benchmark.json").read_text())
    fig = saved_figure(lambda: bench.plot(data, tmp_path / "b.png"))
    assert layout_problems(fig) == []


def test_plot_of_one_custom_model_labels_do_not_collide(tmp_path: Path) -> None:
    fig = saved_figure(lambda: bench.plot(_small_result(), tmp_path / "b.png"))
    assert layout_problems(fig) == []


def test_plot_names_only_documents_inside_the_repository(tmp_path: Path) -> None:
    data = json.loads((ROOT / "results" / "benchmark.json").read_text())
    texts = " ".join(figure_texts(saved_figure(lambda: bench.plot(data, tmp_path / "b.png"))))
    named = re.findall(r"[\w./-]+\.(?:md|py|json)\b", texts)
    assert named, "the plot names where its figures come from"
    assert all((ROOT / n).is_file() for n in named), named
    assert "§" not in texts and "/work/" not in texts


# ---- command line ----

def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = bench.main(args)
    return status, capsys.readouterr().err


@pytest.mark.parametrize(("args", "named"), [
    (["--scheme", "train/har_adapt.json"], "--model"),
    (["--model", "no/such.tflite"], "no such file"),
    (["--model", "train/har_adapt.json"], "not a .tflite"),
    (["--model", str(HAR), "--scheme", "no/such.json"], "no such file"),
    (["--model", str(HAR), "--scheme", str(HAR)], "not a .json"),
    (["--only", "no build has this name"], "--only"),
    (["--runs", "0"], "--runs"),
    (["--plot-only"], "no "),
    (["--plot-only", "--model", str(HAR)], "--plot-only"),
])
def test_bad_command_lines_fail_in_one_line_and_write_nothing(
        args: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _run_main([*args, "--out", str(tmp_path / "out")], capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("benchmark: ") and named in err, err
    assert not (tmp_path / "out").exists()


def test_every_option_has_help() -> None:
    actions = [a for a in bench.parser()._actions if a.dest != "help"]
    assert {a.dest for a in actions} >= {"model", "scheme", "out", "plot_only"}
    assert all(a.help for a in actions), [a.dest for a in actions if not a.help]


def test_default_and_custom_job_lists() -> None:
    ap = bench.parser()
    default = ap.parse_args([])
    assert default.out == ROOT / "results"
    assert bench.select_jobs(default) == (bench.inference_jobs() + bench.training_jobs()
                                          + bench.pulled_input_jobs() + bench.profile_jobs()
                                          + bench.training_profile_jobs())
    profiled = bench.profile_jobs()
    assert {(j.model, j.kernels) for j in profiled} == {
        (j.model, k) for j in bench.inference_jobs() for k in ("optimized", "reference")}
    assert all(j.profile and j.scheme is None for j in profiled)
    trained = bench.training_profile_jobs()
    assert {(j.scheme.stem, j.kernels) for j in trained} == {
        (s, k) for _, s in bench.PROFILED_TRAINING for k in ("optimized", "reference")}
    assert all(j.profile and j.scheme.is_file() and j.model.is_file() for j in trained)
    pulled = bench.pulled_input_jobs()
    assert pulled and all(j.input_rows and j.name.endswith("-input-rows") for j in pulled)
    assert {j.scheme.name for j in pulled if j.scheme} == {"mbv2_paper_50kb.json"}
    custom = ap.parse_args(["--model", str(HAR), "--scheme", "train/har_adapt.json",
                            "--scheme", "train/har_bias_only.json"])
    jobs = bench.select_jobs(custom)
    assert [j.name for j in jobs] == ["har_cnn1d_int8", "har_cnn1d_int8-train-har_adapt",
                                      "har_cnn1d_int8-train-har_bias_only"]
    assert all(j.model == HAR and (j.scheme is None or j.scheme.is_absolute()) for j in jobs)
    with pytest.raises(ValueError, match="file name"):
        bench.custom_jobs(HAR, [Path("a/s.json"), Path("b/s.json")])


def test_plot_only_redraws_the_png_from_the_json(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(ROOT / "results" / "benchmark.json", tmp_path / "benchmark.json")
    status, _ = _run_main(["--plot-only", "--out", str(tmp_path)], capsys)
    assert status == 0
    assert (tmp_path / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmark.json", "benchmark.png"]


def test_benchmark_of_a_users_model_and_scheme_on_qemu(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model and a scheme outside the repository, as a user's would be."""
    model = shutil.copy(HAR, tmp_path / "my_har.tflite")
    scheme = shutil.copy(ROOT / "train" / "har_bias_only.json", tmp_path / "my_bias.json")
    out = tmp_path / "out"
    status = bench.main(["--model", str(model), "--scheme", str(scheme), "--runs", "2",
                         "--out", str(out)])
    capsys.readouterr()
    assert status == 0
    data = json.loads((out / "benchmark.json").read_text())
    assert [r["name"] for r in data["inference"]] == ["my_har"]
    assert [r["name"] for r in data["training"]] == ["my_har-train-my_bias"]
    assert data["inference"][0]["model"] == str(model) and data["failures"] == []
    assert data["training"][0]["scheme"] == str(scheme)
    assert data["inference"][0]["instructions"]["runs"] == 2
    assert data["inference"][0]["macs"] == data["training"][0]["forward_macs"] > 0
    assert data["training"][0]["backward_macs"] > 0
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_record_sums_steps_per_kernel_and_compares_variants() -> None:
    report = {"operators": [
        {"step": 0, "opcode": "CONV_2D", "macs": 1000, "kernel": "m7"},
        {"step": 1, "opcode": "RESHAPE", "macs": 0, "kernel": "ref"},
        {"step": 2, "opcode": "CONV_2D", "macs": 3000, "kernel": "ref"},
        {"step": 3, "opcode": "DEPTHWISE_CONV_2D", "macs": 2000, "kernel": "m7"}]}
    job = bench.Job("m-profile", HAR, kernels="optimized", profile=True)
    rec = bench.profile_record(job, [9100], [2000, 0, 30000, 6000], report)
    assert rec["kernels"] == "optimized" and rec["instructions"]["mean"] == 9100
    assert [r["instructions"] for r in rec["steps"]] == [2000, 0, 30000, 6000]
    assert rec["per_kernel"][0] == {"pass": "forward", "opcode": "CONV_2D", "kernel": "ref",
                                    "steps": 1,
                                    "macs": 3000, "instructions": 30000,
                                    "instructions_per_mac": 10.0}
    with pytest.raises(ValueError, match="3 steps"):
        bench.profile_record(job, [1], [1, 2, 3], report)
    ref = bench.profile_record(bench.Job("m-profile-ref-kernels", HAR, kernels="reference",
                                         profile=True), [1], [9000, 0, 27000, 40000],
                               {"operators": [{**op, "kernel": "ref"}
                                              for op in report["operators"]]})
    result = {"profiles": [{**rec, "model": "models/m.tflite"},
                           {**ref, "model": "models/m.tflite"}]}
    rows = bench.kernel_comparison(result, "m")
    assert [op for op, *_ in rows] == ["DEPTHWISE_CONV_2D", "CONV_2D"]
    conv_ref, conv_opt = rows[1][1], rows[1][2]
    assert conv_ref["instructions_per_mac"] == 9.0 and conv_opt["kernel"] == "ref+m7"
    assert conv_opt["instructions_per_mac"] == 8.0
    assert bench.kernel_comparison({"profiles": [rec]}, "m") == []


def test_a_training_profile_lists_forward_loss_and_backward_steps() -> None:
    report = {"operators": [
        {"step": 0, "opcode": "CONV_2D", "macs": 1000, "kernel": "m7"},
        {"step": 1, "opcode": "FULLY_CONNECTED", "macs": 100, "kernel": "ref"}],
        "training": {"forward_kernels": ["ref", "ref"], "backward_steps": [
            {"step": 1, "opcode": "FULLY_CONNECTED", "kernel": "ref", "macs": 300},
            {"step": 0, "opcode": "CONV_2D", "kernel": "ref", "macs": 2000}]}}
    job = bench.Job("m-train-s-profile", HAR, ROOT / "train" / "har_adapt.json", profile=True)
    rec = bench.profile_record(job, [50000], [9000, 800, 50, 1500, 38000], report)
    # The training build's forward kernels, not the inference build's (a trained layer's
    # variant must serve its SRAM weights).
    assert [(r["pass"], r["opcode"], r["kernel"]) for r in rec["steps"]] == [
        ("forward", "CONV_2D", "ref"), ("forward", "FULLY_CONNECTED", "ref"),
        ("loss", "LOSS", "ref"), ("backward", "FULLY_CONNECTED", "ref"),
        ("backward", "CONV_2D", "ref")]
    assert rec["scheme"] == "train/har_adapt.json"
    assert rec["per_kernel"][0] == {"pass": "backward", "opcode": "CONV_2D", "kernel": "ref",
                                    "steps": 1, "macs": 2000, "instructions": 38000,
                                    "instructions_per_mac": 19.0}
    with pytest.raises(ValueError, match="4 steps, report.json lists 5"):
        bench.profile_record(job, [1], [1, 2, 3, 4], report)
    # A training profile is not an inference profile of the same model, and gives backward
    # rows only for the scheme asked for.
    reference = {**rec, "kernels": "reference", "model": "models/m.tflite"}
    both = {"profiles": [{**rec, "model": "models/m.tflite"}, reference]}
    assert bench.kernel_comparison(both, "m", scheme="other") == []
    rows = bench.kernel_comparison(both, "m", scheme="har_adapt")
    assert [op for op, *_ in rows] == ["CONV_2D backward"]
    assert rows[0][1]["instructions_per_mac"] == 19.0
