"""Training schemes: which parameters a training step updates, and how.

A scheme is a small JSON file (format in docs/training.md) named by the PlatformIO option
`custom_train` or the environment variable MCUTRAIN_TRAIN. Layers are the parametric operators
(CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) in execution order, addressed by index (negative
from the end) or by the name of their output tensor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .graph import ModelError

PARAMETRIC = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
PRESETS = ("bias-only", "last-k", "sparse", "full")
RATIOS = (1.0, 0.5, 0.25, 0.125)
CLASSIFIERS = ("int8", "fp32")
_KEYS = {"preset", "bias_layers", "layers", "weights", "classifier", "lr", "optimizer", "momentum",
         "loss", "rounding", "qas", "seed"}


@dataclass(frozen=True)
class WeightUpdate:
    layer: int | str
    ratio: float = 1.0


@dataclass(frozen=True)
class Scheme:
    preset: str = "sparse"
    bias_layers: int = 0
    layers: int = 0  # last-k: how many trailing parametric layers train weights and biases
    weights: tuple[WeightUpdate, ...] = field(default_factory=tuple)
    classifier: str = "int8"
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.0
    loss: str = "cross_entropy"
    rounding: str = "stochastic"
    qas: bool = True
    seed: int = 1
    name: str = "scheme"


@dataclass(frozen=True)
class LayerPlan:
    """What one parametric operator trains: n_train output channels of its weights (0 = frozen)
    and whether its bias trains."""

    step: int  # position in the compiled operator schedule
    n_train: int
    train_bias: bool


def load_scheme(path: str | Path) -> Scheme:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"training scheme not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    return parse_scheme(raw, name=path.stem)


def parse_scheme(raw: Any, name: str = "scheme") -> Scheme:
    if not isinstance(raw, dict):
        raise ModelError(f"{name}: a training scheme is a JSON object")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ModelError(f"{name}: unknown scheme keys {unknown} (known: {sorted(_KEYS)})")
    weights = tuple(_weight_update(name, w) for w in raw.get("weights", []))
    scheme = Scheme(
        preset=str(raw.get("preset", "sparse")), bias_layers=int(raw.get("bias_layers", 0)),
        layers=int(raw.get("layers", 0)), weights=weights,
        classifier=str(raw.get("classifier", "int8")), lr=float(raw.get("lr", 0.01)),
        optimizer=str(raw.get("optimizer", "sgd")), momentum=float(raw.get("momentum", 0.0)),
        loss=str(raw.get("loss", "cross_entropy")),
        rounding=str(raw.get("rounding", "stochastic")), qas=bool(raw.get("qas", True)),
        seed=int(raw.get("seed", 1)), name=name)
    _validate(scheme)
    return scheme


def _weight_update(name: str, raw: Any) -> WeightUpdate:
    if not isinstance(raw, dict) or "layer" not in raw:
        raise ModelError(f"{name}: each weights entry needs a 'layer' (index or tensor name)")
    ratio = float(raw.get("ratio", 1.0))
    if ratio not in RATIOS:
        raise ModelError(f"{name}: channel ratio {ratio} is not one of {RATIOS}")
    layer = raw["layer"]
    return WeightUpdate(layer=layer if isinstance(layer, str) else int(layer), ratio=ratio)


def _validate(s: Scheme) -> None:
    checks = [
        (s.preset in PRESETS, f"preset '{s.preset}' is not one of {PRESETS}"),
        (s.optimizer == "sgd", f"optimizer '{s.optimizer}' is not supported (sgd)"),
        (s.momentum == 0.0, "momentum is not supported yet; use 0"),
        (s.classifier in CLASSIFIERS, f"classifier '{s.classifier}' is not one of "
                                      f"{CLASSIFIERS}"),
        (s.classifier == "int8" or s.loss == "cross_entropy",
         "classifier 'fp32' needs loss 'cross_entropy'"),
        (s.loss in ("cross_entropy", "mse"), f"loss '{s.loss}' is not cross_entropy or mse"),
        (s.rounding in ("stochastic", "nearest"), f"rounding '{s.rounding}' is not "
                                                  "stochastic or nearest"),
        (math.isfinite(s.lr) and s.lr >= 0, f"learning rate {s.lr} must be finite and >= 0"),
        (s.bias_layers >= 0 and s.layers >= 0, "bias_layers and layers must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ModelError(f"{s.name}: {message}")


def plan_layers(scheme: Scheme, parametric: list[tuple[int, str, int]]) -> list[LayerPlan]:
    """Resolve a scheme against a model's parametric operators.

    `parametric` lists (schedule step, output tensor name, output channels) in execution order.
    Returns one LayerPlan per operator that trains anything. With classifier 'fp32' the last
    parametric operator is the float classifier (always trained in full, planned by
    training_graph), so it gets no LayerPlan whatever the scheme says about it.
    """
    count = len(parametric)
    n_train = [0] * count
    bias = [False] * count
    if scheme.preset == "full":
        n_train = [c for _, _, c in parametric]
        bias = [True] * count
    elif scheme.preset == "last-k":
        for i in range(max(0, count - scheme.layers), count):
            n_train[i], bias[i] = parametric[i][2], True
    for i in range(max(0, count - scheme.bias_layers), count):
        bias[i] = True
    if scheme.preset in ("sparse", "bias-only"):
        if scheme.preset == "bias-only" and scheme.weights:
            raise ModelError(f"{scheme.name}: preset bias-only cannot list weights")
        for update in scheme.weights:
            i = _resolve_layer(scheme, update.layer, parametric)
            n_train[i] = max(1, math.ceil(update.ratio * parametric[i][2]))
    planned = count - 1 if scheme.classifier == "fp32" else count
    plans = [LayerPlan(step=parametric[i][0], n_train=n_train[i], train_bias=bias[i])
             for i in range(planned) if n_train[i] or bias[i]]
    if not plans and scheme.classifier != "fp32":
        raise ModelError(f"{scheme.name}: the scheme trains nothing")
    return plans


def _resolve_layer(scheme: Scheme, layer: int | str, parametric: list[tuple[int, str, int]]) -> int:
    if isinstance(layer, str):
        names = [name for _, name, _ in parametric]
        if layer not in names:
            raise ModelError(f"{scheme.name}: no parametric layer writes tensor '{layer}'")
        return names.index(layer)
    if not -len(parametric) <= layer < len(parametric):
        raise ModelError(f"{scheme.name}: layer {layer} out of range: the model has "
                         f"{len(parametric)} parametric layers")
    return layer % len(parametric)
