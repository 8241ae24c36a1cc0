#!/usr/bin/env python3
"""MobileNetV2 learning demo: the paper's sparse scheme adapts to a colour shift, on the board.

    python scripts/mobilenet_demo.py --board-elf ELF      # board (QEMU) + fp32 TF reference
    python scripts/mobilenet_demo.py                      # fp32 TF reference only
    python scripts/mobilenet_demo.py --plot-only          # redraw the PNG from the JSON

Task (offline, synthetic, deterministic): models/mobilenetv2_w035_128_int8.tflite was trained by
`scripts/make_models.py mobilenet` on 10 "colour blob" classes whose 4x4x3 templates come from
np.random.default_rng(1234). The shifted domain keeps each class's template but rotates its colour
channels (RGB -> GBR), as if the camera's channels were wired differently; fresh images
(labels, jitter, pixel noise) are drawn from np.random.default_rng(DATA_SEED) with the same
generator (0.6 * template + U(-0.4, 0.4) jitter, bilinear upsampling to 128x128, N(0, 0.1) noise).
A fixed train set and a disjoint test set; epoch e visits np.random.default_rng(ORDER_SEED)'s
e-th permutation of the train set, for the board and the fp32 reference alike.

Board: the ELF built for the model with train/mbv2_paper_50kb.json (int8 training, QAS,
stochastic rounding, batch-1 SGD at the scheme's lr), e.g.
    MCUTRAIN_MODEL=$PWD/models/mobilenetv2_w035_128_int8.tflite \
    MCUTRAIN_TRAIN=$PWD/train/mbv2_paper_50kb.json PLATFORMIO_BUILD_DIR=$PWD/.pio/demo-mbv2 \
    .venv/bin/pio run -e qemu           # -> .pio/demo-mbv2/qemu/firmware.elf
Test accuracy on the board comes from EVAL requests (forward only, no update).
fp32: mcutrain.train.fp32_reference.train_fp32, the float model of the same layers, channel
ratios and biases, plain SGD at the same lr, on the same (fake-quantized) inputs and order.
Writes results/mobilenet_demo.json and results/mobilenet_demo.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))

from mcutrain.compile.compiler import compile_model  # noqa: E402
from mcutrain.train.fp32_reference import quantize_input, train_fp32  # noqa: E402
from mcutrain.train.scheme import load_scheme  # noqa: E402

MODEL = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"
SCHEME = ROOT / "train" / "mbv2_paper_50kb.json"
RESULTS = ROOT / "results"
TEMPLATE_SEED = 1234  # scripts/make_models.py SEED: the pretrained task's templates
DATA_SEED = 2026
ORDER_SEED = 1
CHANNEL_ORDER = [1, 2, 0]  # RGB -> GBR

Split = tuple[np.ndarray, np.ndarray]


def shifted_templates() -> np.ndarray:
    """The pretrained task's class templates (first draw of make_models.blob_images' rng),
    colour channels rotated."""
    templates = np.random.default_rng(TEMPLATE_SEED).uniform(-1.0, 1.0, (10, 4, 4, 3))
    return templates.astype(np.float32)[..., CHANNEL_ORDER]


def blob_images(templates: np.ndarray, n: int, rng: np.random.Generator) -> Split:
    """make_models.blob_images' generator with given templates."""
    import tensorflow as tf  # noqa: PLC0415

    labels = rng.integers(0, len(templates), n)
    coarse = 0.6 * templates[labels] + rng.uniform(-0.4, 0.4, (n, 4, 4, 3)).astype(np.float32)
    images = np.array(tf.image.resize(coarse, (128, 128)))
    images += rng.normal(0.0, 0.1, images.shape).astype(np.float32)
    return np.clip(images, -1.0, 1.0).astype(np.float32), labels


def make_data(n_train: int, n_test: int) -> tuple[Split, Split]:
    x, y = blob_images(shifted_templates(), n_train + n_test, np.random.default_rng(DATA_SEED))
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def orders(n: int, epochs: int, every: int) -> list[np.ndarray]:
    """The visiting order (one permutation per epoch) cut into chunks of `every` steps: test
    accuracy is measured after each chunk."""
    rng = np.random.default_rng(ORDER_SEED)
    steps = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return [steps[i:i + every] for i in range(0, len(steps), every)]


def run_fp32(train: Split, test: Split, chunks: list[np.ndarray], lr: float | None
             ) -> dict[str, Any]:
    res = train_fp32(MODEL, load_scheme(SCHEME), train[0], train[1], chunks, lr=lr,
                     eval_sets={"test": test})
    ends = np.cumsum([0, *map(len, chunks)])
    rows = [{"step": int(ends[e]), "train_loss": r["train_loss"],
             "test_accuracy": r["test"]["accuracy"], "test_loss": r["test"]["loss"]}
            for e, r in enumerate(res["epochs"])]
    return {"seconds": round(res["seconds"], 1), "lr": res["lr"], "trainable": res["trainable"],
            "curve": rows}


def run_board(elf: Path, train: Split, test: Split, chunks: list[np.ndarray],
              lr: float | None) -> dict[str, Any]:
    from mcutrain.host.device import open_device  # noqa: PLC0415

    graph = compile_model(MODEL).graph
    xq, xtq = quantize_input(graph, train[0]), quantize_input(graph, test[0])
    start = time.perf_counter()
    with open_device(f"qemu:{elf}", timeout=120) as board:
        board.reset()
        rate = board.set_lr(lr) if lr is not None else None

        def evaluate() -> tuple[float, float]:
            replies = [board.eval(xtq[i], int(test[1][i])) for i in range(len(xtq))]
            return (float(np.mean([r.prediction == t for r, t in zip(replies, test[1],
                                                                       strict=True)])),
                    float(np.mean([r.loss for r in replies])))

        acc, loss = evaluate()
        rows = [{"step": 0, "train_loss": None, "test_accuracy": acc, "test_loss": loss}]
        print(f"board step 0: test accuracy {acc:.3f}", flush=True)
        for order in chunks:
            replies = [board.train(xq[i], int(train[1][i])) for i in order]
            acc, loss = evaluate()
            rows.append({"step": rows[-1]["step"] + len(order),
                         "train_loss": float(np.mean([r.loss for r in replies])),
                         "train_accuracy": float(np.mean(
                             [r.prediction == train[1][i] for r, i in zip(replies, order,
                                                                           strict=True)])),
                         "test_accuracy": acc, "test_loss": loss,
                         "counter_per_step": int(np.mean([r.counter for r in replies]))})
            print(f"board step {rows[-1]['step']}: test accuracy {acc:.3f}", flush=True)
    return {"seconds": round(time.perf_counter() - start, 1), "lr": rate, "curve": rows}


def plot(methods: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for name, run in methods.items():
        rows = run["curve"]
        ax.plot([r["step"] for r in rows], [r["test_accuracy"] for r in rows], marker="o",
                label=name)
    ax.axhline(0.1, color="grey", lw=0.8, ls=":", label="chance (10 classes)")
    ax.set(xlabel="training steps (batch 1)", ylabel="test accuracy", ylim=(0, 1.02))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def title(n_train: int) -> str:
    return f"MobileNetV2-w0.35, mbv2_paper_50kb, colour-rotated blobs ({n_train} train images)"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    return out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=200, help="training images")
    parser.add_argument("--test", type=int, default=50, help="test images")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between test evals")
    parser.add_argument("--lr", type=float, help="learning rate (default: the scheme's)")
    parser.add_argument("--board-elf", type=Path, help="QEMU ELF built with the paper scheme")
    parser.add_argument("--plot-only", action="store_true",
                        help="train nothing: redraw the PNG from results/mobilenet_demo.json")
    args = parser.parse_args()
    if args.plot_only:
        saved = json.loads((RESULTS / "mobilenet_demo.json").read_text())
        plot(saved["methods"], RESULTS / "mobilenet_demo.png", title(saved["data"]["train_images"]))
        return
    train, test = make_data(args.train, args.test)
    methods: dict[str, dict[str, Any]] = {}
    chunks = orders(len(train[1]), args.epochs, args.eval_every)
    methods["fp32 TF (same scheme)"] = run_fp32(train, test, chunks, args.lr)
    print("fp32 test accuracy per eval:",
          [r["test_accuracy"] for r in methods["fp32 TF (same scheme)"]["curve"]], flush=True)
    if args.board_elf:
        methods["int8 board (QEMU)"] = run_board(args.board_elf, train, test, chunks, args.lr)
    RESULTS.mkdir(exist_ok=True)
    data = {
        "command": "python scripts/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": commit(), "model": str(MODEL.relative_to(ROOT)),
        "scheme": json.loads(SCHEME.read_text()),
        "data": {"task": "10-class synthetic colour blobs at 128x128 (make_models.blob_images' "
                         "generator), domain shift: the pretrained templates (rng seed "
                         f"{TEMPLATE_SEED}) with colour channels rotated {CHANNEL_ORDER}",
                 "data_seed": DATA_SEED, "train_images": len(train[1]),
                 "test_images": len(test[1]),
                 "order": f"epoch e: e-th np.random.default_rng({ORDER_SEED}).permutation"
                          " of the train set; test accuracy after every eval_every steps"},
        "epochs": args.epochs, "eval_every_steps": args.eval_every,
        "test_accuracy": {k: {"before": v["curve"][0]["test_accuracy"],
                              "after": v["curve"][-1]["test_accuracy"]}
                          for k, v in methods.items()},
        "methods": methods,
    }
    (RESULTS / "mobilenet_demo.json").write_text(json.dumps(data, indent=1) + "\n")
    plot(methods, RESULTS / "mobilenet_demo.png", title(len(train[1])))
    print(json.dumps(data["test_accuracy"]))
    print("wrote results/mobilenet_demo.json, results/mobilenet_demo.png")


if __name__ == "__main__":
    main()
