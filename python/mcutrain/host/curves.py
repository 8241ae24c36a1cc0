"""Learning curves of `mcutrain train`: one JSON file with everything needed to replay the run
(per-epoch metrics, learning rates and the sample order) and a PNG plot (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class EpochRecord:
    """Metrics of one epoch; epoch 0 is the evaluation before any training (no train fields)."""

    epoch: int
    lr: float | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    counter_per_step: float | None = None  # instructions (QEMU) or cycles per TRAIN step
    seconds: float | None = None


@dataclass
class Curve:
    board: str
    model: str
    counter_unit: str
    loss: str
    schedule: str
    base_lr: float
    seed: int
    train_samples: int
    eval_samples: int
    epochs: list[EpochRecord] = field(default_factory=list)
    # order[e][k] = index (into the training set after --limit) of the k-th sample of epoch e+1,
    # so a float reference can replay exactly the same sequence of steps.
    order: list[list[int]] = field(default_factory=list)


def _finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def curve_json(curve: Curve) -> dict:
    data = asdict(curve)
    for rec in data["epochs"]:
        for key, value in rec.items():
            if isinstance(value, float):
                rec[key] = _finite_or_none(value)  # JSON has no NaN
    return data


def write_curve_json(curve: Curve, path: Path) -> None:
    path.write_text(json.dumps(curve_json(curve), indent=1) + "\n")


def load_curve_json(path: Path) -> Curve:
    data = json.loads(path.read_text())
    epochs = [EpochRecord(**rec) for rec in data.pop("epochs")]
    return Curve(**data, epochs=epochs)


def _series(curve: Curve, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in curve.epochs:
        value = getattr(rec, key)
        if value is not None and math.isfinite(value):
            xs.append(rec.epoch)
            ys.append(value)
    return xs, ys


def plot_curve(curve: Curve, path: Path) -> None:
    """Loss (left) and accuracy (right, classification only) per epoch, train and eval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classify = any(r.train_accuracy is not None or r.eval_accuracy is not None
                   for r in curve.epochs)
    fig, axes = plt.subplots(1, 2 if classify else 1, figsize=(10 if classify else 5.5, 4),
                             squeeze=False)
    panels = [("loss", axes[0][0])] + ([("accuracy", axes[0][1])] if classify else [])
    for metric, ax in panels:
        for split, style in (("train", "o-"), ("eval", "s--")):
            xs, ys = _series(curve, f"{split}_{metric}")
            if xs:
                ax.plot(xs, ys, style, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{curve.model} on {curve.board}: {curve.schedule} lr {curve.base_lr:g}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
