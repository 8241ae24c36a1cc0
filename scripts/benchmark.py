#!/usr/bin/env python3
"""Speed and memory of the firmware on the emulated Cortex-M7, measured, into results/.

    python scripts/benchmark.py                       # everything: results/benchmark.{json,png}
    python scripts/benchmark.py --runs 5 --only har   # names containing "har" only
    python scripts/benchmark.py --model my.tflite --scheme my.json --out my_results
    python scripts/benchmark.py --plot-only           # redraw results/benchmark.png from its JSON

By default, for every model in models/, models/test/ and models/third_party/ it builds an
inference-only ELF (`MCUTRAIN_TRAIN=`, build dir .pio/bench/<name>), boots it on QEMU
(`-icount shift=3`: the board's counter is retired instructions, resolution 5) and runs a few
random int8 inputs. For each scheme in train/*.json on its model (SCHEME_MODELS, else
models/har_cnn1d_int8.tflite), and for
each (model, scheme) pair of test/test_training_firmware.py's CASES, it builds a training ELF and
runs a few TRAIN steps from random inputs and labels. With --model it benchmarks that model
instead (inference, plus one training build per --scheme). Recorded per build: MACs (forward;
backward for training), instructions per inference / training step, instructions per MAC, arena
bytes, static SRAM (.data + .bss, which holds the arena; the reserved .stack section is left
out), the stack high-water mark read by INFO after the runs, peak SRAM = static + stack high
water, and flash. Training builds add the report.json training section's byte counts.

The "reference" block is NOT measured here: it holds TensorFlow Lite Micro's figures on the same
emulated board, stated with their build conditions in docs/benchmark.md, so the plot can show
where the project stands against the incumbent.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from mcutrain.compile.firmware_size import firmware_size  # noqa: E402
from mcutrain.host.device import Device, open_device  # noqa: E402
from mcutrain.host.profile import labelled, per_kernel, per_mac  # noqa: E402
from mcutrain.host.protocol import DeviceInfo, LossKind  # noqa: E402

MODEL_DIRS = ("models", "models/test", "models/third_party")
TRAIN_MODEL = "har_cnn1d_int8"
# train/ schemes written for another model than TRAIN_MODEL, by file stem.
SCHEME_MODELS = {"mbv2_paper_50kb": "mobilenetv2_w035_128_int8"}
TRAIN_CASES_FILE = ROOT / "test" / "test_training_firmware.py"
FIXTURE_SCHEMES = ROOT / "test" / "fixtures" / "schemes"
BENCH_DIR = ROOT / ".pio" / "bench"
ENV = "qemu"
KB = 1024
TRAIN_SRAM_BUDGET = 256 * KB  # the paper's budget
DEVICE_SRAM = 320 * KB  # STM32F746
FLASH_LIMIT = 1024 * KB
REPORT_TRAIN_KEYS = ("arena_bytes", "state_bytes", "saved_activation_bytes", "mask_bytes",
                     "peak_gradient_bytes", "peak_sram_bytes", "backward_macs")

# TensorFlow Lite Micro on the same emulated board; docs/benchmark.md states how it was built and
# counted. Not measured by this script. "ours" names the shipped model a row describes, if any.
REFERENCE = {
    "source": "docs/benchmark.md (not measured by scripts/benchmark.py)",
    "setup": "TensorFlow Lite Micro 90b983c2 release build, CMSIS-NN 4ab83cc3, arm-none-eabi-gcc "
             "12.2 -O2, QEMU mps2-an500 -icount shift=3, one inference",
    "models": [
        {"model": "MobileNetV2-w0.35 128x128x3", "ours": "mobilenetv2_w035_128_int8",
         "macs": 18_950_000, "tflm_reference_instructions": 343_200_000,
         "cmsis_nn_instructions": 80_600_000, "arena_bytes": 312 * KB},
        {"model": "MLPerf Tiny VWW (MobileNetV1-0.25 96x96x3)", "ours": None, "macs": 7_490_000,
         "tflm_reference_instructions": 103_200_000, "cmsis_nn_instructions": 24_000_000,
         "arena_bytes": 101 * KB},
        {"model": "MLPerf Tiny ResNet-8 (CIFAR-10)", "ours": None, "macs": 12_500_000,
         "tflm_reference_instructions": 109_400_000, "cmsis_nn_instructions": 30_000_000,
         "arena_bytes": 55 * KB},
        {"model": "MLPerf Tiny DS-CNN KWS", "ours": None, "macs": 2_660_000,
         "tflm_reference_instructions": 44_200_000, "cmsis_nn_instructions": 7_600_000,
         "arena_bytes": 23 * KB},
        {"model": "HAR 1-D CNN", "ours": "har_cnn1d_int8", "macs": 110_000,
         "tflm_reference_instructions": 1_590_000, "cmsis_nn_instructions": 460_000,
         "arena_bytes": 4 * KB},
    ],
    "targets": {
        "inference_instructions_vs_cmsis_nn": 0.3, "inference_arena_vs_tflm": 0.5,
        "mobilenetv2_train_step_instructions": 40_000_000,
        "mobilenetv2_train_step_sram_bytes": 141 * KB,
        "instructions_per_mac_floor": 0.5,
    },
}


@dataclass(frozen=True)
class Job:
    """One firmware build to benchmark: a model, and a training scheme or None (inference)."""

    name: str
    model: Path
    scheme: Path | None = None
    # The firmware pulls its input from the host row by row (custom_input = rows): measured for
    # its SRAM; its instruction counts include the board's wait for the host's rows.
    input_rows: bool = False
    # custom_kernels: "optimized" (the Cortex-M7 variants where they serve) or "reference".
    kernels: str = "optimized"
    # custom_profile = on: the build counts each step of an inference or a training step (the
    # PROFILE request).
    profile: bool = False

    @property
    def build_dir(self) -> Path:
        return BENCH_DIR / self.name


# ---- what to measure ----

def _models(root: Path) -> list[Path]:
    return sorted(p for d in MODEL_DIRS for p in (root / d).glob("*.tflite"))


def inference_jobs(root: Path = ROOT) -> list[Job]:
    return [Job(m.stem, m) for m in _models(root)]


def profile_jobs(root: Path = ROOT) -> list[Job]:
    """Every model twice more, profiled layer by layer: on the optimized kernels and on the
    reference kernels alone, for instructions per MAC per kernel variant."""
    return [Job(f"{m.stem}-profile{'-ref-kernels' if kernels == 'reference' else ''}", m,
                kernels=kernels, profile=True)
            for m in _models(root) for kernels in ("optimized", "reference")]


# Training builds profiled step by step, forward and backward, on both kernel choices: (model
# stem, train/ scheme stem).
PROFILED_TRAINING = (("har_cnn1d_int8", "har_adapt"),
                     ("mobilenetv2_w035_128_int8", "mbv2_paper_50kb"))


def training_profile_jobs(root: Path = ROOT) -> list[Job]:
    return [Job(f"{model}-train-{scheme}-profile{'-ref-kernels' if kernels == 'reference' else ''}",
                root / "models" / f"{model}.tflite", root / "train" / f"{scheme}.json",
                kernels=kernels, profile=True)
            for model, scheme in PROFILED_TRAINING for kernels in ("optimized", "reference")]


# Builds repeated with the input pulled row by row (docs/memory.md): (model stem, train/ scheme
# stem or None for inference).
PULLED_INPUT = (("mobilenetv2_w035_128_int8", None),
                ("mobilenetv2_w035_128_int8", "mbv2_paper_50kb"))


def pulled_input_jobs(root: Path = ROOT) -> list[Job]:
    jobs = []
    for model_name, scheme_name in PULLED_INPUT:
        model = root / "models" / f"{model_name}.tflite"
        if scheme_name is None:
            jobs.append(Job(f"{model_name}-input-rows", model, input_rows=True))
        else:
            jobs.append(Job(f"{model_name}-train-{scheme_name}-input-rows", model,
                            root / "train" / f"{scheme_name}.json", input_rows=True))
    return jobs


def training_cases(test_file: Path = TRAIN_CASES_FILE) -> list[tuple[str, str]]:
    """The (model, scheme) pairs of the training firmware test's CASES, read without importing
    it (it imports pytest and the reference): a literal list assigned to CASES."""
    tree = ast.parse(test_file.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "CASES" for t in node.targets):
            return [(str(m), str(s)) for m, s in ast.literal_eval(node.value)]
    raise ValueError(f"{test_file} has no literal CASES list")


def training_jobs(root: Path = ROOT, test_file: Path = TRAIN_CASES_FILE) -> list[Job]:
    jobs = []
    for s in sorted((root / "train").glob("*.json")):
        model_name = SCHEME_MODELS.get(s.stem, TRAIN_MODEL)
        jobs.append(Job(f"{model_name}-train-{s.stem}",
                        root / "models" / f"{model_name}.tflite", s))
    for model_name, scheme_name in training_cases(test_file):
        m = root / "models" / f"{model_name}.tflite"
        jobs.append(Job(f"{m.stem}-fixture-{scheme_name}", m,
                        root / "test" / "fixtures" / "schemes" / f"{scheme_name}.json"))
    return jobs


def custom_jobs(model: Path, schemes: list[Path]) -> list[Job]:
    """A user's model: one inference build, and one training build per scheme."""
    jobs = [Job(model.stem, model)]
    jobs += [Job(f"{model.stem}-train-{s.stem}", model, s) for s in schemes]
    if len({j.name for j in jobs}) != len(jobs):
        raise ValueError(f"two --scheme files are named {[s.name for s in schemes]}: "
                         "give each scheme its own file name")
    return jobs


def repo_path(path: Path) -> str:
    """`path` relative to the repository if it is inside it (shipped files), else absolute."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ---- aggregation (pure: unit-tested without QEMU) ----

def count_stats(counts: list[int]) -> dict[str, float]:
    if not counts:
        raise ValueError("no counter readings")
    return {"mean": round(float(np.mean(counts)), 1), "min": int(min(counts)),
            "max": int(max(counts)), "runs": len(counts)}


def static_sram(sections: dict[str, int]) -> int:
    """.data + .bss: the arena and every other static; the reserved stack is counted by use."""
    return sections.get(".data", 0) + sections.get(".bss", 0)


def memory_record(sections: dict[str, int], flash_bytes: int, info: DeviceInfo) -> dict[str, int]:
    static = static_sram(sections)
    return {"arena_bytes": info.arena_bytes, "static_sram_bytes": static,
            "stack_high_water_bytes": info.stack_used_bytes,
            "stack_reserved_bytes": sections.get(".stack", 0),
            "peak_sram_bytes": static + info.stack_used_bytes, "flash_bytes": flash_bytes}


def inference_record(job: Job, info: DeviceInfo, counts: list[int], sections: dict[str, int],
                     flash_bytes: int, report: dict[str, Any]) -> dict[str, Any]:
    stats = count_stats(counts)
    return {"name": job.name, "model": repo_path(job.model), "kernels": job.kernels,
            "macs": info.macs,
            "instructions": stats, "instructions_per_mac": per_mac(stats["mean"], info.macs),
            **memory_record(sections, flash_bytes, info), **streaming_record(report)}


def training_record(job: Job, info: DeviceInfo, counts: list[int], sections: dict[str, int],
                    flash_bytes: int, report: dict[str, Any]) -> dict[str, Any]:
    stats = count_stats(counts)
    fwd, bwd = info.macs, info.train.backward_macs
    train_report = report.get("training") or {}
    assert job.scheme is not None
    return {"name": job.name, "model": repo_path(job.model),
            "scheme": repo_path(job.scheme), "forward_macs": fwd,
            "backward_macs": bwd, "instructions_per_step": stats,
            "instructions_per_mac": per_mac(stats["mean"], fwd + bwd),
            **memory_record(sections, flash_bytes, info),
            "report": {k: train_report.get(k) for k in REPORT_TRAIN_KEYS},
            **streaming_record(report)}


def profile_record(job: Job, counts: list[int], steps: list[int],
                   report: dict[str, Any]) -> dict[str, Any]:
    """A profiled build: each step's instructions in the last inference or training step
    (mcutrain.host.profile: forward steps with the kernel variant that ran each, then a training
    build's loss and backward steps), and their sums per (pass, opcode, kernel)."""
    rows = labelled(report, steps)
    return {"name": job.name, "model": repo_path(job.model),
            "scheme": repo_path(job.scheme) if job.scheme else None, "kernels": job.kernels,
            "instructions": count_stats(counts), "steps": rows, "per_kernel": per_kernel(rows)}


def streaming_record(report: dict[str, Any]) -> dict[str, Any]:
    """The linked SRAM breakdown and the row-streamed chains of a build's report.json, with the
    MACs the bands recompute (0 when every row is computed once), and whether the input is
    pulled row by row (then the instruction counts include the wait for the host's rows)."""
    streams = report.get("streams", [])
    return {"sram": report.get("sram"),
            "input_pulled": any(s.get("pulls_input") for s in streams),
            "row_streamed_steps": [[s["first_step"], s["last_step"]] for s in streams],
            "recompute_macs": sum(s["executed_macs"] - s["macs"] for s in streams)}


# ---- building and running ----

def build(job: Job) -> Path:
    env = dict(os.environ, MCUTRAIN_MODEL=str(job.model), PLATFORMIO_BUILD_DIR=str(job.build_dir),
               MCUTRAIN_TRAIN=str(job.scheme) if job.scheme else "",
               MCUTRAIN_INPUT="rows" if job.input_rows else "whole",
               MCUTRAIN_KERNELS=job.kernels, MCUTRAIN_PROFILE="on" if job.profile else "off")
    cmd = [sys.executable, "-m", "platformio", "run", "-s", "-e", ENV, "-d", str(ROOT)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"build of {job.name} failed:\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return job.build_dir / ENV / "firmware.elf"


def random_input(rng: np.random.Generator, info: DeviceInfo) -> np.ndarray:
    return rng.integers(-128, 128, size=info.input.shape, dtype=np.int8)


def random_label(rng: np.random.Generator, info: DeviceInfo) -> int | np.ndarray:
    if info.train.loss == LossKind.MEAN_SQUARED_ERROR:
        return rng.normal(size=int(np.prod(info.output.shape))).astype(np.float32)
    return int(rng.integers(0, info.train.num_classes))


def run_inference(board: Device, runs: int, rng: np.random.Generator) -> list[int]:
    info = board.info()
    return [board.infer(random_input(rng, info))[1] for _ in range(runs)]


def run_training(board: Device, runs: int, rng: np.random.Generator) -> list[int]:
    info = board.info()
    return [board.train(random_input(rng, info), random_label(rng, info)).counter
            for _ in range(runs)]


def measure(job: Job, runs: int, seed: int) -> dict[str, Any]:
    elf = build(job)
    size = firmware_size(elf)
    rng = np.random.default_rng(seed)
    with open_device(f"qemu:{elf}", timeout=300) as board:
        counts = (run_training if job.scheme else run_inference)(board, runs, rng)
        info = board.info()  # after the runs: the stack high-water mark covers them
        steps = board.profile() if job.profile else []
    report = json.loads((job.build_dir / ENV / "report.json").read_text())
    if job.profile:
        return profile_record(job, counts, steps, report)
    if job.scheme is None:
        return inference_record(job, info, counts, size.sections, size.flash_bytes, report)
    return training_record(job, info, counts, size.sections, size.flash_bytes, report)


# ---- provenance ----

def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else ""


def provenance(argv: list[str]) -> dict[str, Any]:
    dirty = _first_line(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "command": shlex.join(["python", "scripts/benchmark.py", *argv]),
        "git_commit": _first_line(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(dirty),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": f"{platform.system()} {platform.machine()}, python {platform.python_version()}",
        "toolchain": {
            "arm-none-eabi-gcc": _first_line(["arm-none-eabi-gcc", "--version"]),
            "qemu-system-arm": _first_line(["qemu-system-arm", "--version"]),
            "platformio": _first_line([sys.executable, "-m", "platformio", "--version"]),
        },
        "board": "QEMU mps2-an500 -cpu cortex-m7 -icount shift=3 (instructions, resolution 5)",
        "units": "instructions = retired instructions counted by SysTick under QEMU icount; "
                 "bytes; peak SRAM = .data + .bss + stack high-water mark",
    }


# ---- plot ----

def _short(name: str) -> str:
    return (name.replace("_int8", "").replace("-fixture-", " / ").replace("-train-", " / ")
            .replace("tflm_", "").replace("mobilenetv2_w035_128", "mbv2")
            .replace("-input-rows", ", rows"))


def _rows(result: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """One (label, record, colour) per build: inference builds, then training builds."""
    rows = [(f"infer {_short(r['name'])}", r, "tab:blue") for r in result["inference"]]
    return rows + [(f"train {_short(r['name'])}", r, "tab:orange") for r in result["training"]]


def _matched(result: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(our inference record, reference row) for each reference model that was measured."""
    ours = {r["name"]: r for r in result["inference"]}
    return [(ours[m["ours"]], m) for m in result["reference"]["models"] if m.get("ours") in ours]


def _per_mac_span(ref: dict[str, Any], key: str) -> tuple[float, float]:
    values = [m[key] / m["macs"] for m in ref["models"]]
    return min(values), max(values)


def _legends_below(fig: Any, legends: list[tuple[Any, int]]) -> None:
    """Each (axes, columns) legend just below its axes' tick labels and x label, which a fixed
    axes fraction would cover in a short figure (tick labels keep their size in inches)."""
    from matplotlib.transforms import ScaledTranslation

    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    for ax, ncol in legends:
        below = (ax.bbox.y0 - ax.get_tightbbox(renderer).y0) / fig.dpi + 0.08
        offset = ax.transAxes + ScaledTranslation(0, -below, fig.dpi_scale_trans)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0),
                  bbox_transform=offset, ncol=ncol)


def _plot_per_mac(ax: Any, result: dict[str, Any]) -> None:
    rows = [(label, rec["instructions_per_mac"], colour) for label, rec, colour in _rows(result)
            if rec["instructions_per_mac"]]
    ax.barh(range(len(rows)), [r[1] for r in rows], color=[r[2] for r in rows])
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for r, (_, v, _) in enumerate(rows):
        ax.text(v, r, f" {v:.1f}", fontsize=6, va="center")
    ref = result["reference"]
    ax.axvline(0.5, color="k", ls=":", lw=1, label="floor: 2 MACs per SMLAD (0.5)")
    lo, hi = _per_mac_span(ref, "cmsis_nn_instructions")
    ax.axvspan(lo, hi, color="green", alpha=0.2, label=f"TFLM + CMSIS-NN {lo:.1f}-{hi:.1f}")
    lo, hi = _per_mac_span(ref, "tflm_reference_instructions")
    ax.axvspan(lo, hi, color="red", alpha=0.2, label=f"TFLM reference kernels {lo:.0f}-{hi:.0f}")
    ax.set_xlim(0.3, 200)
    ax.set_xlabel("instructions per MAC (training: per forward + backward MAC), log")
    ax.set_title("(a) instructions per MAC")


def _plot_incumbent(ax: Any, result: dict[str, Any]) -> bool:
    """Our inference against TFLite Micro's for the models both measured; False if none."""
    matched = _matched(result)
    if not matched:
        ax.set_axis_off()
        ax.set_title("(b) no TFLite Micro figures\nfor the models benchmarked", fontsize=10)
        return False
    series = [("mcutrain (measured)", "tab:blue", lambda o, m: o["instructions"]["mean"]),
              ("TFLM reference kernels", "tab:red", lambda o, m: m["tflm_reference_instructions"]),
              ("TFLM + CMSIS-NN", "tab:green", lambda o, m: m["cmsis_nn_instructions"])]
    width = 0.27
    for k, (label, colour, value) in enumerate(series):
        xs = [i + (k - 1) * width for i in range(len(matched))]
        vs = [value(o, m) / 1e6 for o, m in matched]
        ax.bar(xs, vs, width, color=colour, label=label)
        for x, v in zip(xs, vs, strict=True):
            ax.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(matched)),
                  [f"{m['model']}\narena: ours {o['arena_bytes'] / KB:.1f} KB,\n"
                   f"TFLM {m['arena_bytes'] / KB:.0f} KB" for o, m in matched], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("instructions per inference (M), log")
    ax.set_title("(b) one inference against TensorFlow Lite Micro", fontsize=10)
    return True


# The model whose layers panel (d) compares kernel by kernel.
KERNEL_MODEL = "mobilenetv2_w035_128_int8"
KERNEL_SCHEME = "mbv2_paper_50kb"  # whose training profile gives panel (d) its backward rows
MIN_KERNEL_MACS = 1000


def kernel_comparison(result: dict[str, Any], model: str = KERNEL_MODEL,
                      scheme: str = KERNEL_SCHEME
                      ) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
    """(operator, reference-kernels row, optimized row) of `model`'s profiled builds, busiest
    operator first: its inference layers, then the backward steps of its `scheme` training
    profile ("CONV_2D backward", ...). A row sums the per_kernel entries of one operator; None
    when that build has no such layer."""
    def builds(training: bool) -> dict[str, dict[str, Any]]:
        return {p["kernels"]: p for p in result.get("profiles", [])
                if Path(p["model"]).stem == model
                and (Path(p["scheme"]).stem == scheme if training and p.get("scheme")
                     else not training and not p.get("scheme"))}

    def by_opcode(build: dict[str, Any], pass_: str) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for k in build["per_kernel"]:
            if k.get("pass", "forward") != pass_:
                continue
            m = merged.setdefault(k["opcode"], {"kernel": k["kernel"], "macs": 0,
                                                "instructions": 0})
            m["macs"] += k["macs"]
            m["instructions"] += k["instructions"]
            if k["kernel"] not in m["kernel"].split("+"):
                m["kernel"] += f"+{k['kernel']}"
        for m in merged.values():
            m["instructions_per_mac"] = per_mac(m["instructions"], m["macs"])
        return merged

    rows = []
    for training, pass_, suffix in ((False, "forward", ""), (True, "backward", " backward")):
        pair = builds(training)
        if "reference" not in pair or "optimized" not in pair:
            continue
        ref, opt = by_opcode(pair["reference"], pass_), by_opcode(pair["optimized"], pass_)
        order = sorted(ref, key=lambda op: -ref[op]["instructions"])
        # Operators with a nominal MAC count (SOFTMAX's one per class) say nothing per MAC.
        rows += [(op + suffix, ref.get(op), opt.get(op)) for op in order
                 if ref[op]["macs"] >= MIN_KERNEL_MACS]
    return rows


def _plot_kernels(ax: Any, result: dict[str, Any]) -> bool:
    rows = kernel_comparison(result)
    if not rows:
        ax.set_axis_off()
        ax.set_title(f"(d) no per-layer profiles\nof {_short(KERNEL_MODEL)}", fontsize=10)
        return False
    y = np.arange(len(rows))
    for k, (key, colour, label) in enumerate([(1, "tab:red", "reference kernels"),
                                             (2, "tab:blue", "optimized (Cortex-M7) kernels")]):
        vals = [r[key]["instructions_per_mac"] if r[key] else 0 for r in rows]
        ax.barh(y + (k - 0.5) * 0.4, vals, 0.4, color=colour, label=label)
        for yy, v, r in zip(y, vals, rows, strict=True):
            if v:
                ax.text(v, yy + (k - 0.5) * 0.4, f" {v:.2f} {r[key]['kernel']}", fontsize=6,
                        va="center")
    ax.set_yticks(y, [f"{op}\n{opt['macs'] / 1e6:.2f} M MACs" if opt else op
                      for op, _, opt in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.3, 200)
    ax.axvline(0.5, color="k", ls=":", lw=1, label="floor (0.5)")
    ax.set_xlabel("instructions per MAC, log")
    ax.set_title(f"(d) per kernel, {_short(KERNEL_MODEL)}'s layers\n(backward: the "
                 f"{KERNEL_SCHEME} step)", fontsize=10)
    return True


def _plot_sram(ax: Any, result: dict[str, Any]) -> None:
    rows = _rows(result)
    y = np.arange(len(rows))
    static = [rec["static_sram_bytes"] / KB for _, rec, _ in rows]
    stack = [rec["stack_high_water_bytes"] / KB for _, rec, _ in rows]
    ax.barh(y, static, color=[c for *_, c in rows], label="static (.data + .bss incl. arena)")
    ax.barh(y, stack, left=static, color="grey", label="stack high water")
    ax.set_yticks(y, [label for label, *_ in rows], fontsize=7)
    ax.invert_yaxis()
    records = [rec for _, rec, _ in rows]
    peak = max([rec["peak_sram_bytes"] / KB for rec in records], default=0.0)
    xmax = max(DEVICE_SRAM / KB, peak) * 1.1
    for r, rec in enumerate(records):
        v = rec["peak_sram_bytes"] / KB
        # A long bar's number goes inside it, clear of the 256 / 320 KB lines beyond its end.
        inside = v > 0.5 * xmax
        ax.text(v, r, f"{v:.1f} " if inside else f" {v:.1f}", fontsize=6, va="center",
                ha="right" if inside else "left", color="white" if inside else "black")
    ax.axvline(TRAIN_SRAM_BUDGET / KB, color="k", ls="--", lw=1,
               label=f"{TRAIN_SRAM_BUDGET // KB} KB training budget")
    ax.axvline(DEVICE_SRAM / KB, color="r", ls="-", lw=1,
               label=f"{DEVICE_SRAM // KB} KB: STM32F746 SRAM")
    ax.set_xlim(0, xmax)
    ax.set_xlabel("peak SRAM (KB)")
    ax.set_title("(c) peak SRAM = static + stack high-water mark")


def figure(result: dict[str, Any]) -> Any:
    """The benchmark plot of a result dict (as written to benchmark.json), not yet saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(5.0, 3.0 + 0.24 * len(_rows(result)))
    fig, axes = plt.subplots(1, 4, figsize=(23, height), layout="constrained",
                             gridspec_kw={"width_ratios": [3, 2, 3, 2]})
    fig.suptitle("mcutrain on the emulated Cortex-M7 (QEMU icount), measured by "
                 f"scripts/benchmark.py; TensorFlow Lite Micro figures: "
                 f"{result['reference']['source'].split(' (')[0]}", fontsize=12)
    _plot_per_mac(axes[0], result)
    has_incumbent = _plot_incumbent(axes[1], result)
    _plot_sram(axes[2], result)
    has_kernels = _plot_kernels(axes[3], result)
    _legends_below(fig, [(axes[0], 2), (axes[2], 2)] + [(axes[1], 1)] * has_incumbent
                   + [(axes[3], 1)] * has_kernels)
    return fig


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ----

def _fmt(r: dict[str, Any], key: str) -> str:
    ipm = r["instructions_per_mac"]
    return (f"{r[key]['mean'] / 1e6:9.2f} M instr, {ipm if ipm is not None else '-':>7} instr/MAC, "
            f"peak SRAM {r['peak_sram_bytes'] / KB:6.1f} KB, flash {r['flash_bytes'] / KB:6.1f} KB")


def _reason(error: str) -> str:
    """The build's own one-line message (the pre-build hook's `mcutrain: ...`), if it has one."""
    lines = [line for line in error.splitlines() if line.startswith("mcutrain:")]
    return f": {lines[0]}" if lines else ""


def run_all(jobs: list[Job], runs: int, seed: int
            ) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    inf: list[dict] = []
    tr: list[dict] = []
    profiles: list[dict] = []
    failures: list[dict] = []
    for i, job in enumerate(jobs, 1):
        kind = "profile" if job.profile else ("train" if job.scheme else "infer")
        print(f"[{i}/{len(jobs)}] {kind} {job.name} ...", end=" ", flush=True)
        t0 = time.monotonic()
        try:
            rec = measure(job, runs, seed)
        except Exception as exc:  # noqa: BLE001 - one failing build must not lose the others
            print(f"FAILED ({exc.__class__.__name__}{_reason(str(exc))})", flush=True)
            failures.append({"name": job.name, "kind": kind, "error": str(exc)[-2000:]})
            continue
        if job.profile:
            profiles.append(rec)
            top = ", ".join(f"{k['opcode']}/{k['kernel']} {k['instructions_per_mac']}"
                            for k in rec["per_kernel"][:3] if k["instructions_per_mac"])
            print(f"{rec['instructions']['mean'] / 1e6:9.2f} M instr; instr/MAC {top}  "
                  f"({time.monotonic() - t0:.1f} s)", flush=True)
            continue
        (tr if job.scheme else inf).append(rec)
        key = "instructions_per_step" if job.scheme else "instructions"
        print(f"{_fmt(rec, key)}  ({time.monotonic() - t0:.1f} s)", flush=True)
    return inf, tr, profiles, failures


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="inferences / training steps per build")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs and labels")
    ap.add_argument("--only", default="", help="benchmark only builds whose name contains this")
    ap.add_argument("--model", type=Path, metavar="PATH.tflite",
                    help="benchmark this int8 model instead of the shipped ones "
                         "(one inference-only build)")
    ap.add_argument("--scheme", type=Path, action="append", default=[], metavar="PATH.json",
                    help="with --model: also a training build of the model with this training "
                         "scheme (docs/training.md); repeat for several")
    ap.add_argument("--out", type=Path, default=ROOT / "results", metavar="DIR",
                    help="write DIR/benchmark.json and DIR/benchmark.png (default: results/)")
    ap.add_argument("--plot-only", action="store_true",
                    help="build and run nothing: redraw DIR/benchmark.png from DIR/benchmark.json")
    return ap


def _file_error(option: str, path: Path, suffix: str, what: str) -> str | None:
    if not path.is_file():
        return f"{option} {path}: no such file (give the path of {what})"
    if path.suffix != suffix:
        return f"{option} {path}: not a {suffix} file (give the path of {what})"
    return None


def check_args(args: argparse.Namespace) -> str | None:
    """The one-line problem with the command line, or None."""
    if args.runs < 1:
        return f"--runs {args.runs}: give at least 1 run per build"
    if args.plot_only:
        if args.model or args.scheme or args.only:
            return "--plot-only measures nothing: drop --model, --scheme and --only"
        if not (args.out / "benchmark.json").is_file():
            return (f"--plot-only: no {args.out / 'benchmark.json'} to plot "
                    "(run the benchmark first, or give its --out DIR)")
        return None
    if args.scheme and not args.model:
        return "--scheme trains the model given with --model: add --model PATH.tflite"
    if args.model:
        error = _file_error("--model", args.model, ".tflite", "an int8 .tflite model")
        if error:
            return error
    for scheme in args.scheme:
        error = _file_error("--scheme", scheme, ".json", "a training scheme, docs/training.md")
        if error:
            return error
    return None


def select_jobs(args: argparse.Namespace) -> list[Job]:
    if args.model:
        jobs = custom_jobs(args.model.resolve(), [s.resolve() for s in args.scheme])
    else:
        jobs = (inference_jobs() + training_jobs() + pulled_input_jobs() + profile_jobs()
                + training_profile_jobs())
    return [j for j in jobs if args.only in j.name]


def job_record(job: Job) -> dict[str, Any]:
    return asdict(job) | {"model": repo_path(job.model),
                          "scheme": repo_path(job.scheme) if job.scheme else None}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    error = check_args(args)
    jobs: list[Job] = []
    if error is None and not args.plot_only:
        try:
            jobs = select_jobs(args)
        except ValueError as exc:
            error = str(exc)
        if error is None and not jobs:
            error = f"--only {args.only!r}: no build is named like that (drop it or fix it)"
    if error:
        print(f"benchmark: {error}", file=sys.stderr)
        return 2
    json_path, png_path = args.out / "benchmark.json", args.out / "benchmark.png"
    if args.plot_only:
        plot(json.loads(json_path.read_text()), png_path)
        print(f"wrote {png_path} from {json_path}")
        return 0

    t0 = time.monotonic()
    inf, tr, profiles, failures = run_all(jobs, args.runs, args.seed)
    result = {"provenance": provenance(argv), "runs_per_build": args.runs, "seed": args.seed,
              "limits": {"train_sram_budget_bytes": TRAIN_SRAM_BUDGET,
                         "device_sram_bytes": DEVICE_SRAM, "flash_bytes": FLASH_LIMIT},
              "inference": inf, "training": tr, "profiles": profiles, "failures": failures,
              "reference": REFERENCE,
              "jobs": [job_record(j) for j in jobs]}
    result["provenance"]["seconds"] = round(time.monotonic() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, png_path)
    print(f"wrote {json_path} and {png_path} in {result['provenance']['seconds']} s"
          + (f"; {len(failures)} FAILED: {[f['name'] for f in failures]}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
