#!/usr/bin/env python3
"""Speed and memory of the firmware on the emulated Cortex-M7, measured, into results/.

    python scripts/benchmark.py                    # everything: results/benchmark.{json,png}
    python scripts/benchmark.py --runs 5 --only har   # names containing "har" only

For every model in models/, models/test/ and models/third_party/ it builds an inference-only ELF
(`MCUTRAIN_TRAIN=`, build dir .pio/bench/<name>), boots it on QEMU (`-icount shift=3`: the
board's counter is retired instructions, resolution 5) and runs a few random int8 inputs. For
models/har_cnn1d_int8.tflite with each scheme in train/*.json, and for each (model, scheme) pair
of test/test_training_firmware.py's CASES, it builds a training ELF and runs a few TRAIN steps
from random inputs and labels. Recorded per build: MACs (forward; backward for training),
instructions per inference / training step, instructions per MAC, arena bytes, static SRAM
(.data + .bss, which holds the arena; the reserved .stack section is left out), the stack
high-water mark read by INFO after the runs, peak SRAM = static + stack high water, and flash.
Training builds add the report.json training section's byte counts.

The "reference" block is NOT measured here: it is quoted from MISSION.md section 6 (TFLite Micro
with its reference kernels and with CMSIS-NN on the same emulated board), so the plot can show
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

from mcutrain.device import Device, open_device  # noqa: E402
from mcutrain.firmware_size import firmware_size  # noqa: E402
from mcutrain.protocol import DeviceInfo, LossKind  # noqa: E402

MODEL_DIRS = ("models", "models/test", "models/third_party")
TRAIN_MODEL = "har_cnn1d_int8"
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

# Quoted from /work/shared/MISSION.md section 6, not measured by this script.
REFERENCE = {
    "source": "quoted from MISSION.md section 6 (not measured by scripts/benchmark.py)",
    "setup": "TensorFlow Lite Micro 90b983c2, CMSIS-NN 4ab83cc3, arm-none-eabi-gcc 12.2 -O2, "
             "QEMU mps2-an500 -icount shift=3, one inference",
    "models": [
        {"model": "MobileNetV2-w0.35 128x128x3", "macs": 18_950_000,
         "tflm_reference_instructions": 1_470_000_000, "cmsis_nn_instructions": 81_400_000,
         "arena_bytes": 312 * KB},
        {"model": "MLPerf Tiny VWW (MobileNetV1-0.25 96x96x3)", "macs": 7_490_000,
         "tflm_reference_instructions": 552_000_000, "cmsis_nn_instructions": 24_000_000,
         "arena_bytes": 101 * KB},
        {"model": "MLPerf Tiny ResNet-8 (CIFAR-10)", "macs": 12_500_000,
         "tflm_reference_instructions": 823_000_000, "cmsis_nn_instructions": 30_000_000,
         "arena_bytes": 55 * KB},
        {"model": "MLPerf Tiny DS-CNN KWS", "macs": 2_660_000,
         "tflm_reference_instructions": 198_000_000, "cmsis_nn_instructions": 7_600_000,
         "arena_bytes": 23 * KB},
    ],
    "targets": {
        "inference_instructions_vs_cmsis_nn": 0.3, "inference_arena_vs_tflm": 0.5,
        "mobilenetv2_train_step_instructions": 40_000_000,
        "mobilenetv2_train_step_sram_bytes": 141 * KB,
        "instructions_per_mac_floor": 0.5,
    },
}
REFERENCE_MATCH = "mobilenetv2"  # our model that the reference's first row describes


@dataclass(frozen=True)
class Job:
    """One firmware build to benchmark: a model, and a training scheme or None (inference)."""

    name: str
    model: Path
    scheme: Path | None = None

    @property
    def build_dir(self) -> Path:
        return BENCH_DIR / self.name


# ---- what to measure ----

def inference_jobs(root: Path = ROOT) -> list[Job]:
    models = sorted(p for d in MODEL_DIRS for p in (root / d).glob("*.tflite"))
    return [Job(m.stem, m) for m in models]


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
    model = root / "models" / f"{TRAIN_MODEL}.tflite"
    jobs = [Job(f"{TRAIN_MODEL}-train-{s.stem}", model, s)
            for s in sorted((root / "train").glob("*.json"))]
    for model_name, scheme_name in training_cases(test_file):
        m = root / "models" / f"{model_name}.tflite"
        jobs.append(Job(f"{m.stem}-fixture-{scheme_name}", m,
                        root / "test" / "fixtures" / "schemes" / f"{scheme_name}.json"))
    return jobs


# ---- aggregation (pure: unit-tested without QEMU) ----

def count_stats(counts: list[int]) -> dict[str, float]:
    if not counts:
        raise ValueError("no counter readings")
    return {"mean": round(float(np.mean(counts)), 1), "min": int(min(counts)),
            "max": int(max(counts)), "runs": len(counts)}


def per_mac(instructions: float, macs: int) -> float | None:
    return round(instructions / macs, 3) if macs else None


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
                     flash_bytes: int) -> dict[str, Any]:
    stats = count_stats(counts)
    return {"name": job.name, "model": str(job.model.relative_to(ROOT)), "macs": info.macs,
            "instructions": stats, "instructions_per_mac": per_mac(stats["mean"], info.macs),
            **memory_record(sections, flash_bytes, info)}


def training_record(job: Job, info: DeviceInfo, counts: list[int], sections: dict[str, int],
                    flash_bytes: int, report: dict[str, Any]) -> dict[str, Any]:
    stats = count_stats(counts)
    fwd, bwd = info.macs, info.train.backward_macs
    train_report = report.get("training") or {}
    assert job.scheme is not None
    return {"name": job.name, "model": str(job.model.relative_to(ROOT)),
            "scheme": str(job.scheme.relative_to(ROOT)), "forward_macs": fwd,
            "backward_macs": bwd, "instructions_per_step": stats,
            "instructions_per_mac": per_mac(stats["mean"], fwd + bwd),
            **memory_record(sections, flash_bytes, info),
            "report": {k: train_report.get(k) for k in REPORT_TRAIN_KEYS}}


# ---- building and running ----

def build(job: Job) -> Path:
    env = dict(os.environ, MCUTRAIN_MODEL=str(job.model), PLATFORMIO_BUILD_DIR=str(job.build_dir),
               MCUTRAIN_TRAIN=str(job.scheme) if job.scheme else "")
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
    if job.scheme is None:
        return inference_record(job, info, counts, size.sections, size.flash_bytes)
    report = json.loads((job.build_dir / ENV / "report.json").read_text())
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
            .replace("tflm_", ""))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inf, tr, ref = result["inference"], result["training"], result["reference"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 7.5), gridspec_kw={"width_ratios": [3, 2, 3]})
    fig.suptitle("mcutrain on the emulated Cortex-M7 (QEMU icount) — measured; TFLM rows quoted "
                 "from MISSION.md §6", fontsize=12)

    # (a) instructions per MAC
    ax = axes[0]
    rows = [(f"infer {_short(r['name'])}", r["instructions_per_mac"], "tab:blue") for r in inf]
    rows += [(f"train {_short(r['name'])}", r["instructions_per_mac"], "tab:orange") for r in tr]
    rows = [r for r in rows if r[1]]
    ax.barh(range(len(rows)), [r[1] for r in rows], color=[r[2] for r in rows])
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for r, (_, v, _) in enumerate(rows):
        ax.text(v, r, f" {v:.1f}", fontsize=6, va="center")
    ax.axvline(0.5, color="k", ls=":", lw=1, label="floor: 2 MACs per SMLAD (0.5)")
    ax.axvspan(2.4, 4.3, color="green", alpha=0.2, label="TFLM + CMSIS-NN 2.4-4.3 (quoted)")
    ax.axvspan(66, 78, color="red", alpha=0.2, label="TFLM reference 66-78 (quoted)")
    ax.set_xlim(0.3, 200)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2)
    ax.set_xlabel("instructions per MAC (training: per forward + backward MAC), log")
    ax.set_title("(a) instructions per MAC")

    # (b) MobileNetV2-w0.35 one inference vs the incumbent
    ax = axes[1]
    ours = next((r for r in inf if REFERENCE_MATCH in r["name"]), None)
    mref = ref["models"][0]
    bars = [("TFLM ref. (quoted)", mref["tflm_reference_instructions"], "tab:red"),
            ("TFLM+CMSIS-NN (quoted)", mref["cmsis_nn_instructions"], "tab:green")]
    if ours:
        bars.insert(0, ("mcutrain (measured)", ours["instructions"]["mean"], "tab:blue"))
    ax.bar(range(len(bars)), [b[1] / 1e6 for b in bars], color=[b[2] for b in bars])
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8, rotation=15)
    for i, b in enumerate(bars):
        ax.text(i, b[1] / 1e6, f"{b[1] / 1e6:,.0f} M", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("instructions per inference (M), log")
    title = "(b) MobileNetV2-w0.35 128x128, one inference"
    if ours:
        title += (f"\narena: ours {ours['arena_bytes'] / KB:.0f} KB, "
                  f"TFLM {mref['arena_bytes'] / KB:.0f} KB")
    ax.set_title(title, fontsize=10)

    # (c) peak SRAM
    ax = axes[2]
    rows = [(f"infer {_short(r['name'])}", r, "tab:blue") for r in inf]
    rows += [(f"train {_short(r['name'])}", r, "tab:orange") for r in tr]
    y = np.arange(len(rows))
    static = [r["static_sram_bytes"] / KB for _, r, _ in rows]
    stack = [r["stack_high_water_bytes"] / KB for _, r, _ in rows]
    ax.barh(y, static, color=[c for *_, c in rows], label="static (.data + .bss incl. arena)")
    ax.barh(y, stack, left=static, color="grey", label="stack high water")
    ax.set_yticks(y, [r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    for r, (_, rec, _) in enumerate(rows):
        ax.text(rec["peak_sram_bytes"] / KB, r, f" {rec['peak_sram_bytes'] / KB:.1f}",
                fontsize=6, va="center")
    if ours:
        row = next(i for i, (_, rec, _) in enumerate(rows) if rec is ours)
        ax.plot([mref["arena_bytes"] / KB], [row], "kx",
                label="TFLM arena alone, MobileNetV2 (quoted)")
    ax.axvline(TRAIN_SRAM_BUDGET / KB, color="k", ls="--", lw=1)
    ax.axvline(DEVICE_SRAM / KB, color="r", ls="-", lw=1)
    ax.text(TRAIN_SRAM_BUDGET / KB, -0.7, "256 KB", fontsize=8, ha="right")
    ax.text(DEVICE_SRAM / KB, -0.7, "320 KB (F746)", fontsize=8, ha="left")
    ax.set_xlabel("peak SRAM (KB)")
    ax.set_title("(c) peak SRAM = static + stack high-water mark")
    ax.legend(fontsize=7, loc="lower right")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ----

def _fmt(r: dict[str, Any], key: str) -> str:
    ipm = r["instructions_per_mac"]
    return (f"{r[key]['mean'] / 1e6:9.2f} M instr, {ipm if ipm is not None else '-':>7} instr/MAC, "
            f"peak SRAM {r['peak_sram_bytes'] / KB:6.1f} KB, flash {r['flash_bytes'] / KB:6.1f} KB")


def run_all(jobs: list[Job], runs: int, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    inf: list[dict] = []
    tr: list[dict] = []
    failures: list[dict] = []
    for i, job in enumerate(jobs, 1):
        kind = "train" if job.scheme else "infer"
        print(f"[{i}/{len(jobs)}] {kind} {job.name} ...", end=" ", flush=True)
        t0 = time.monotonic()
        try:
            rec = measure(job, runs, seed)
        except Exception as exc:  # noqa: BLE001 - one failing build must not lose the others
            print(f"FAILED ({exc.__class__.__name__})", flush=True)
            failures.append({"name": job.name, "kind": kind, "error": str(exc)[-2000:]})
            continue
        (tr if job.scheme else inf).append(rec)
        key = "instructions_per_step" if job.scheme else "instructions"
        print(f"{_fmt(rec, key)}  ({time.monotonic() - t0:.1f} s)", flush=True)
    return inf, tr, failures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="inferences / training steps per build")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs and labels")
    ap.add_argument("--only", default="", help="benchmark only builds whose name contains this")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmark.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "results" / "benchmark.png")
    args = ap.parse_args(argv)

    jobs = [j for j in inference_jobs() + training_jobs() if args.only in j.name]
    t0 = time.monotonic()
    inf, tr, failures = run_all(jobs, args.runs, args.seed)
    result = {"provenance": provenance(argv), "runs_per_build": args.runs, "seed": args.seed,
              "limits": {"train_sram_budget_bytes": TRAIN_SRAM_BUDGET,
                         "device_sram_bytes": DEVICE_SRAM, "flash_bytes": FLASH_LIMIT},
              "inference": inf, "training": tr, "failures": failures, "reference": REFERENCE,
              "jobs": [asdict(j) | {"model": str(j.model.relative_to(ROOT)),
                                    "scheme": str(j.scheme.relative_to(ROOT)) if j.scheme else None}
                       for j in jobs]}
    result["provenance"]["seconds"] = round(time.monotonic() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.plot)
    print(f"wrote {args.out} and {args.plot} in {result['provenance']['seconds']} s"
          + (f"; {len(failures)} FAILED: {[f['name'] for f in failures]}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
