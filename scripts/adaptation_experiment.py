#!/usr/bin/env python3
"""On-device adaptation experiment: the HAR model, sensor mounted differently (data/adapt_*.npz).

    python scripts/adaptation_experiment.py                       # fp32 TF + int8 numpy reference
    python scripts/adaptation_experiment.py --plot-only           # redraw the PNG from the JSON
    python scripts/adaptation_experiment.py --board-elf qemu-qas.elf --board-elf-noqas q-noqas.elf \
        --board-elf-fp32cls q-fp32cls.elf

Compares, on the same data orders (seeds 1, 2, 3: epoch e of seed s visits
`np.random.default_rng(s)`'s e-th permutation, exactly as `mcutrain train --seed s` does):
  - fp32 TF: mcutrain.train.fp32_reference, float training of the same parameters
    (train/har_adapt.json)
  - int8 + QAS, numpy: mcutrain.train.reference (the definition of the firmware's step)
  - int8 without QAS, numpy: the same with train/har_adapt_noqas.json
  - int8 + QAS with the classifier kept in fp32, numpy: train/har_adapt_fp32cls.json (the final
    FULLY_CONNECTED + SOFTMAX in float32, docs/training.md "fp32 classifier")
  - the same three on the emulated board: `mcutrain train --port qemu:ELF` (optional; build
    each ELF first with MCUTRAIN_MODEL=models/har_cnn1d_int8.tflite
    MCUTRAIN_TRAIN=train/har_adapt.json PLATFORMIO_BUILD_DIR=.pio/exp-har_adapt pio run -e qemu,
    and likewise for har_adapt_noqas.json and har_adapt_fp32cls.json)
Writes results/adaptation_fp32.json (fp32 only), results/adaptation.json (everything, including
the pretrained model's TFLite accuracies) and results/adaptation.png (adapt_test accuracy and loss
per epoch, mean over seeds, one thin line per seed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from mcutrain.compile.compiler import compile_model  # noqa: E402
from mcutrain.train.fp32_reference import quantize_input, train_fp32  # noqa: E402
from mcutrain.train.scheme import load_scheme  # noqa: E402

MODEL = ROOT / "models" / "har_cnn1d_int8.tflite"
SCHEME = ROOT / "train" / "har_adapt.json"
SCHEME_NOQAS = ROOT / "train" / "har_adapt_noqas.json"
SCHEME_FP32CLS = ROOT / "train" / "har_adapt_fp32cls.json"
# Batch-1 updates are often below half an int8 step: nearest rounding drops them, stochastic
# rounding keeps them in expectation.
SCHEME_NEAREST = ROOT / "train" / "har_adapt_nearest.json"
PRESETS = {"fp32 bias-only": ROOT / "train" / "har_bias_only.json",
           "fp32 last-2": ROOT / "train" / "har_last2.json"}
RESULTS = ROOT / "results"

Split = tuple[np.ndarray, np.ndarray]
Run = dict[str, Any]  # {"seed", "epochs": [{"epoch", "train_loss", "test_accuracy", ...}]}


def load(name: str) -> Split:
    d = np.load(ROOT / "data" / f"{name}.npz")
    return d["x"], d["y"]


def orders(seed: int, n: int, epochs: int) -> list[np.ndarray]:
    """The sample order of `mcutrain train --seed`: one permutation per epoch from one rng."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(epochs)]


# ---- the pretrained model (TFLite interpreter) ----

def tflite_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """TFLite's reference kernels, which the firmware matches bit for bit (the default optimized
    kernels round differently and flip a few windows)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # noqa: PLC0415

    graph = compile_model(MODEL).graph
    interp = Interpreter(model_path=str(MODEL),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    preds = []
    for q in quantize_input(graph, x):
        interp.set_tensor(i["index"], q[None])
        interp.invoke()
        preds.append(int(np.argmax(interp.get_tensor(o["index"])[0])))
    return float(np.mean(np.array(preds) == y))


def pretrained(train: Split, test: Split) -> dict[str, float]:
    har = load("har_test")
    rot = np.load(ROOT / "data" / "adapt_train.npz")["rotation"]
    return {
        "har_test (original mounting)": tflite_accuracy(*har),
        "har_test rotated (= adapt_train + adapt_test)": tflite_accuracy(
            (har[0].astype(np.float64) @ rot.T.astype(np.float64)).astype(np.float32), har[1]),
        "adapt_train": tflite_accuracy(*train),
        "adapt_test": tflite_accuracy(*test),
    }


# ---- fp32 TensorFlow reference ----

def run_fp32(scheme_path: Path, seed: int, epochs: int, train: Split, test: Split) -> Run:
    scheme = load_scheme(scheme_path)
    res = train_fp32(MODEL, scheme, train[0], train[1], orders(seed, len(train[1]), epochs),
                     eval_sets={"test": test, "train": train})
    rows = [{"epoch": e, "train_loss": r["train_loss"],
             "train_accuracy": r["train"]["accuracy"],
             "test_accuracy": r["test"]["accuracy"], "test_loss": r["test"]["loss"]}
            for e, r in enumerate(res["epochs"])]
    return {"seed": seed, "lr": res["lr"], "seconds": res["seconds"], "epochs": rows,
            "trainable": res["trainable"]}


# ---- HOOK (int8 numpy reference): mcutrain.train.reference ----
# One TrainingReference per run, fed the int8 windows in the same order. The loss/accuracy of an
# epoch are the int8 step results; the held-out test is evaluated with update=False steps.

def run_int8_numpy(scheme_path: Path, seed: int, epochs: int, train: Split, test: Split) -> Run:
    from mcutrain.train.reference import TrainingReference  # noqa: PLC0415
    from mcutrain.train.training_graph import build_training  # noqa: PLC0415

    compiled = compile_model(MODEL)
    ref = TrainingReference(build_training(compiled, load_scheme(scheme_path)))
    xq, xtq = quantize_input(compiled.graph, train[0]), quantize_input(compiled.graph, test[0])
    start = time.perf_counter()

    def evaluate() -> tuple[float, float]:
        steps = [ref.step(xtq[i], int(test[1][i]), update=False) for i in range(len(xtq))]
        return (float(np.mean([s.prediction == t for s, t in zip(steps, test[1], strict=True)])),
                float(np.mean([s.loss for s in steps])))

    acc, loss = evaluate()
    rows = [{"epoch": 0, "train_loss": None, "test_accuracy": acc, "test_loss": loss}]
    for e, order in enumerate(orders(seed, len(train[1]), epochs), start=1):
        steps = [ref.step(xq[i], int(train[1][i])) for i in order]
        acc, loss = evaluate()
        rows.append({"epoch": e, "train_loss": float(np.mean([s.loss for s in steps])),
                     "train_accuracy": float(np.mean([s.prediction == train[1][i]
                                                      for s, i in zip(steps, order, strict=True)])),
                     "test_accuracy": acc, "test_loss": loss})
    return {"seed": seed, "seconds": time.perf_counter() - start, "epochs": rows}


# ---- HOOK (emulated board): `mcutrain train --port qemu:ELF` ----
# The ELF must be built for MODEL with the matching scheme (see the module docstring). The CLI
# uses the same orders (np.random.default_rng(seed).permutation per epoch) and writes curve.json.

def run_board(elf: Path, seed: int, epochs: int) -> Run:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "mcutrain.host.cli", "train", "--port", f"qemu:{elf}",
               "--data", str(ROOT / "data" / "adapt_train.npz"),
               "--eval", str(ROOT / "data" / "adapt_test.npz"), "--epochs", str(epochs),
               "--seed", str(seed), "--out", out, "--quiet"]
        env = {"PYTHONPATH": str(ROOT / "python")}
        subprocess.run(cmd, check=True, env={**__import__("os").environ, **env})
        curve = json.loads((Path(out) / "curve.json").read_text())
    rows = [{"epoch": r["epoch"], "train_loss": r["train_loss"],
             "train_accuracy": r["train_accuracy"], "test_accuracy": r["eval_accuracy"],
             "test_loss": r["eval_loss"], "counter_per_step": r["counter_per_step"]}
            for r in curve["epochs"]]
    return {"seed": seed, "epochs": rows}


# ---- report ----

def summary(runs: list[Run]) -> list[float]:
    """Mean adapt_test accuracy per epoch over seeds."""
    acc = np.array([[r["test_accuracy"] for r in run["epochs"]] for run in runs])
    return [round(float(a), 4) for a in acc.mean(0)]


def plot_title(train_windows: int) -> str:
    return f"HAR, sensor remounted: {train_windows} training windows, batch-1 SGD"


def plot(methods: dict[str, list[Run]], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 5.4), layout="constrained")
    fig.suptitle(title)
    for k, (name, runs) in enumerate(methods.items()):
        color = f"C{k}"
        for key, ax in (("test_accuracy", ax_acc), ("test_loss", ax_loss)):
            curves = np.array([[r[key] for r in run["epochs"]] for run in runs], dtype=float)
            epochs = np.arange(curves.shape[1])
            for c in curves:
                ax.plot(epochs, c, color=color, alpha=0.25, lw=0.8)
            ax.plot(epochs, curves.mean(0), color=color, lw=2, marker="o", label=name)
    ax_acc.set(xlabel="epoch", ylabel="adapt_test accuracy")
    ax_acc.set_title("(a) accuracy (thin: one line per seed)", fontsize=10)
    # The int8-classifier loss comes from the int8 softmax output (capped at ln 512; the fp32
    # classifier's float loss is not), so a confidently wrong window costs less than in float:
    # compare the loss curves within a family only.
    ax_loss.set(xlabel="epoch", yscale="log", ylabel="adapt_test cross-entropy, log")
    ax_loss.set_title("(b) loss (int8 classifier's capped at ln 512)", fontsize=10)
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    # Below both panels: inside either, ten entries would cover the curves.
    fig.legend(*ax_acc.get_legend_handles_labels(), loc="outside lower center", ncol=4,
               fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_from_json(results: Path = RESULTS) -> None:
    """Redraw adaptation.png from adaptation.json: no training, same curves."""
    data = json.loads((results / "adaptation.json").read_text())
    plot(data["methods"], results / "adaptation.png", plot_title(data["train_windows"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 numpy reference")
    parser.add_argument("--board-elf", type=Path, help="QEMU ELF built with har_adapt.json")
    parser.add_argument("--board-elf-noqas", type=Path, help="... with har_adapt_noqas.json")
    parser.add_argument("--board-elf-fp32cls", type=Path,
                        help="... with har_adapt_fp32cls.json")
    parser.add_argument("--plot-only", action="store_true",
                        help="train nothing: redraw results/adaptation.png from "
                             "results/adaptation.json")
    args = parser.parse_args()
    if args.plot_only:
        if not (RESULTS / "adaptation.json").is_file():
            sys.exit("adaptation_experiment: --plot-only: no results/adaptation.json to plot "
                     "(run the experiment first)")
        plot_from_json()
        print("wrote results/adaptation.png from results/adaptation.json")
        return

    train, test = load("adapt_train"), load("adapt_test")
    before = pretrained(train, test)
    for name, acc in before.items():
        print(f"pretrained int8 (TFLite) on {name}: {acc:.4f}")

    runners: dict[str, Callable[[int], Run]] = {
        "fp32 TF": lambda s: run_fp32(SCHEME, s, args.epochs, train, test)}
    runners.update({name: (lambda s, p=p: run_fp32(p, s, args.epochs, train, test))
                    for name, p in PRESETS.items()})
    if not args.no_int8:
        runners["int8 + QAS (numpy)"] = lambda s: run_int8_numpy(SCHEME, s, args.epochs,
                                                                 train, test)
        runners["int8 no QAS (numpy)"] = lambda s: run_int8_numpy(SCHEME_NOQAS, s, args.epochs,
                                                                  train, test)
        runners["int8 + QAS, nearest rounding (numpy)"] = lambda s: run_int8_numpy(
            SCHEME_NEAREST, s, args.epochs, train, test)
        runners["int8 + QAS, fp32 classifier (numpy)"] = lambda s: run_int8_numpy(
            SCHEME_FP32CLS, s, args.epochs, train, test)
    if args.board_elf:
        runners["int8 + QAS (board)"] = lambda s: run_board(args.board_elf, s, args.epochs)
    if args.board_elf_noqas:
        runners["int8 no QAS (board)"] = lambda s: run_board(args.board_elf_noqas, s,
                                                             args.epochs)
    if args.board_elf_fp32cls:
        runners["int8 + QAS, fp32 classifier (board)"] = lambda s: run_board(
            args.board_elf_fp32cls, s, args.epochs)

    methods: dict[str, list[Run]] = {}
    for name, run in runners.items():
        methods[name] = [run(s) for s in args.seeds]
        print(f"{name:22s} adapt_test accuracy per epoch (mean of seeds {args.seeds}): "
              f"{summary(methods[name])}")

    RESULTS.mkdir(exist_ok=True)
    common = {"model": str(MODEL.relative_to(ROOT)), "scheme": json.loads(SCHEME.read_text()),
              "train_windows": len(train[1]), "test_windows": len(test[1]),
              "seeds": args.seeds, "order": "epoch e of seed s: e-th np.random.default_rng(s)"
                                            ".permutation(len(adapt_train))",
              "pretrained_tflite_accuracy": before}
    fp32 = {**common, "fp32": methods["fp32 TF"],
            "fp32_test_accuracy_mean": summary(methods["fp32 TF"])}
    (RESULTS / "adaptation_fp32.json").write_text(json.dumps(fp32, indent=1) + "\n")
    everything = {**common, "methods": methods,
                  "test_accuracy_mean": {k: summary(v) for k, v in methods.items()}}
    (RESULTS / "adaptation.json").write_text(json.dumps(everything, indent=1) + "\n")
    plot(methods, RESULTS / "adaptation.png", plot_title(len(train[1])))
    print("wrote results/adaptation_fp32.json, results/adaptation.json, results/adaptation.png")


if __name__ == "__main__":
    main()
