"""Training schemes: parsing, validation with clear messages, and resolution against a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcutrain.graph import ModelError
from mcutrain.scheme import load_scheme, parse_scheme, plan_layers

# (step, output tensor name, output channels) of a 4-layer model
LAYERS = [(0, "conv1", 16), (2, "conv2", 32), (4, "conv3", 64), (7, "fc", 3)]


def plans(raw: dict) -> list[tuple[int, int, bool]]:
    return [(p.step, p.n_train, p.train_bias) for p in plan_layers(parse_scheme(raw), LAYERS)]


def test_sparse_scheme_resolves_ratios_and_bias_depth() -> None:
    raw = {"preset": "sparse", "bias_layers": 2,
           "weights": [{"layer": -1}, {"layer": "conv3", "ratio": 0.25}]}
    assert plans(raw) == [(4, 16, True), (7, 3, True)]


def test_presets() -> None:
    assert plans({"preset": "bias-only", "bias_layers": 3}) == [
        (2, 0, True), (4, 0, True), (7, 0, True)]
    assert plans({"preset": "last-k", "layers": 2}) == [(4, 64, True), (7, 3, True)]
    assert plans({"preset": "full"}) == [(0, 16, True), (2, 32, True), (4, 64, True), (7, 3, True)]


@pytest.mark.parametrize("raw, message", [
    ({"preset": "nope"}, "preset 'nope'"),
    ({"weights": [{"layer": 0, "ratio": 0.3}]}, "ratio 0.3"),
    ({"momentum": 0.9}, "momentum"),
    ({"lr": float("nan")}, "learning rate"),
    ({"lr": -1}, "learning rate"),
    ({"rounding": "floor"}, "rounding"),
    ({"color": "red"}, "unknown scheme keys"),
    ({"weights": [{"ratio": 1}]}, "needs a 'layer'"),
])
def test_bad_schemes_are_one_line_errors(raw: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_scheme(raw)


@pytest.mark.parametrize("raw, message", [
    ({"weights": [{"layer": 9}]}, "out of range"),
    ({"weights": [{"layer": "nope"}]}, "no parametric layer"),
    ({"preset": "sparse"}, "trains nothing"),
])
def test_resolution_errors(raw: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        plan_layers(parse_scheme(raw), LAYERS)


def test_load_scheme_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_scheme(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_scheme(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"bias_layers": 1, "lr": 0.1}))
    assert load_scheme(good).name == "good" and load_scheme(good).lr == 0.1
