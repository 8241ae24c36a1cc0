"""Training schemes: which parameters a training step updates, and how.

A scheme is a small JSON file (format in docs/training.md) named by the PlatformIO option
`custom_train` or the environment variable MCUTRAIN_TRAIN. Layers are the parametric operators
(CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) in execution order, addressed by index (negative
from the end) or by the name of their output tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..frontend.graph import ModelError

PRESETS = ("bias-only", "last-k", "sparse", "full")
RATIOS = (1.0, 0.5, 0.25, 0.125)
CLASSIFIERS = ("int8", "fp32")
OPTIMIZERS = ("sgd",)
LOSSES = ("cross_entropy", "mse")
ROUNDINGS = ("stochastic", "nearest")
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
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    return parse_scheme(raw, name=path.stem)


def parse_scheme(raw: Any, name: str = "scheme") -> Scheme:
    """Check every value's JSON type and range (no coercion: "false" is not false, true is not
    1) and build the Scheme; every problem is a one-line ModelError prefixed with `name`."""
    if not isinstance(raw, dict):
        raise ModelError(f"{name}: a training scheme is a JSON object, got {_describe(raw)}")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ModelError(f"{name}: unknown scheme keys {unknown} (known: {sorted(_KEYS)})")

    def get(key: str, check: Callable[[Any], bool], want: str, default: Any) -> Any:
        value = raw.get(key, default)
        if not check(value):
            raise ModelError(f'{name}: "{key}" must be {want}, got {_describe(value)}')
        return value

    preset = get("preset", _one_of(PRESETS), _choices(PRESETS), "sparse")
    for key, owner in (("weights", "sparse"), ("layers", "last-k")):
        if key in raw and preset != owner:
            raise ModelError(f'{name}: "{key}" applies only to preset "{owner}", not "{preset}"')
    count = "a whole number >= 0"
    scheme = Scheme(
        preset=preset,
        bias_layers=get("bias_layers", _count, count, 0),
        layers=get("layers", _count, count, 0),
        weights=_weight_updates(name, raw.get("weights", [])),
        classifier=get("classifier", _one_of(CLASSIFIERS), _choices(CLASSIFIERS), "int8"),
        lr=float(get("lr", _rate, "a finite number >= 0", 0.01)),
        optimizer=get("optimizer", _one_of(OPTIMIZERS), _choices(OPTIMIZERS), "sgd"),
        momentum=float(get("momentum", _number, "a number", 0.0)),
        loss=get("loss", _one_of(LOSSES), _choices(LOSSES), "cross_entropy"),
        rounding=get("rounding", _one_of(ROUNDINGS), _choices(ROUNDINGS), "stochastic"),
        qas=get("qas", _is_bool, "true or false", True),
        seed=get("seed", _seed, "a whole number from 0 to 4294967295", 1),
        name=name)
    _validate(scheme)
    return scheme


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _seed(v: Any) -> bool:
    return _is_int(v) and 0 <= v < 2 ** 32


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _rate(v: Any) -> bool:
    return _number(v) and v >= 0


def _one_of(allowed: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in allowed


def _choices(allowed: tuple[Any, ...]) -> str:
    return "one of " + ", ".join(f'"{a}"' if isinstance(a, str) else f"{a:g}" for a in allowed)


def _describe(v: Any) -> str:
    """A JSON value as a user wrote it, for error messages."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, str):
        return f"the string {json.dumps(v)}"
    if isinstance(v, int | float):
        return f"the number {v}"
    return "a list" if isinstance(v, list) else "an object"


def _weight_updates(name: str, raw: Any) -> tuple[WeightUpdate, ...]:
    if not isinstance(raw, list):
        raise ModelError(f'{name}: "weights" must be a list of {{"layer": ..., "ratio": ...}} '
                         f"objects, got {_describe(raw)}")
    return tuple(_weight_update(f"{name}: weights[{i}]", w) for i, w in enumerate(raw))


def _weight_update(where: str, raw: Any) -> WeightUpdate:
    if not isinstance(raw, dict):
        raise ModelError(f"{where} must be an object like {{\"layer\": -1, \"ratio\": 1}}, got "
                         f"{_describe(raw)}")
    extra = sorted(set(raw) - {"layer", "ratio"})
    if extra:
        raise ModelError(f'{where} has unknown key "{extra[0]}" (an entry has "layer" and '
                         'optionally "ratio")')
    if "layer" not in raw:
        raise ModelError(f"{where} needs a 'layer' (index or tensor name)")
    layer = raw["layer"]
    if not (_is_int(layer) or isinstance(layer, str)):
        raise ModelError(f"{where}.layer must be a layer index or tensor name, got "
                         f"{_describe(layer)} (see `mcutrain layers MODEL.tflite`)")
    ratio = raw.get("ratio", 1.0)
    if not (_number(ratio) and ratio in RATIOS):
        raise ModelError(f"{where}.ratio must be {_choices(RATIOS)}, got {_describe(ratio)}")
    return WeightUpdate(layer=layer, ratio=float(ratio))


def _validate(s: Scheme) -> None:
    checks = [
        (s.momentum == 0.0, "momentum is not supported yet; use 0"),
        (s.classifier == "int8" or s.loss == "cross_entropy",
         "classifier 'fp32' needs loss 'cross_entropy'"),
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
    for key, value in (("bias_layers", scheme.bias_layers), ("layers", scheme.layers)):
        if value > count:
            raise ModelError(f'{scheme.name}: "{key}" is {value} but the model has {count} '
                             f"parametric layers (use at most {count})")
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
        seen: dict[int, int | str] = {}
        for update in scheme.weights:
            i = _resolve_layer(scheme, update.layer, parametric)
            if i in seen:
                short = parametric[i][1].split(";")[0]
                raise ModelError(
                    f'{scheme.name}: weights lists layer {i} ("{short}") twice (as '
                    f"{json.dumps(seen[i])} and {json.dumps(update.layer)}); give each layer "
                    "once")
            seen[i] = update.layer
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
        if layer in names:
            return names.index(layer)
        # TFLite joins fused tensor names with ';': the first part (what `mcutrain layers`
        # shows) names the layer too when it is unique.
        short = [i for i, name in enumerate(names) if name.split(";")[0] == layer]
        if len(short) == 1:
            return short[0]
        names = [name.split(";")[0] for name in names]
        if layer not in names:
            raise ModelError(f"{scheme.name}: no parametric layer writes tensor '{layer}'; the "
                             f"{len(names)} layers are: {_name_list(names)} (indices and shapes: "
                             "`mcutrain layers MODEL.tflite`)")
        raise ModelError(f"{scheme.name}: {len(short)} layers write a tensor named '{layer}'; "
                         "use the index (see `mcutrain layers MODEL.tflite`)")
    if not -len(parametric) <= layer < len(parametric):
        raise ModelError(f"{scheme.name}: layer {layer} out of range: the model has "
                         f"{len(parametric)} parametric layers ({-len(parametric)} to "
                         f"{len(parametric) - 1}; see `mcutrain layers MODEL.tflite`)")
    return layer % len(parametric)


def _name_list(names: list[str], keep: int = 3) -> str:
    """All names when few, else the first and last `keep`: one readable line."""
    if len(names) <= 2 * keep + 2:
        return ", ".join(names)
    return f"{', '.join(names[:keep])}, ..., {', '.join(names[-keep:])}"
