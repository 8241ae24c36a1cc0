"""Training schemes: parsing, validation with clear messages, and resolution against a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcutrain.frontend.graph import ModelError
from mcutrain.train.scheme import load_scheme, parse_scheme, plan_layers

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
    ({"preset": "nope"}, '"preset" must be one of'),
    ({"weights": [{"layer": 0, "ratio": 0.3}]}, "ratio must be one of .* got the number 0.3"),
    ({"momentum": 0.9}, "momentum"),
    ({"lr": float("nan")}, '"lr" must be a finite number'),
    ({"lr": -1}, '"lr" must be a finite number'),
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


@pytest.mark.parametrize("raw, message", [
    ({"qas": "false"}, '"qas" must be true or false, got the string "false"'),
    ({"qas": 0}, '"qas" must be true or false, got the number 0'),
    ({"bias_layers": "three"}, '"bias_layers" must be a whole number >= 0, got the string'),
    ({"bias_layers": True}, '"bias_layers" must be a whole number >= 0, got true'),
    ({"bias_layers": 2.0}, '"bias_layers" must be a whole number >= 0, got the number 2.0'),
    ({"layers": -1, "preset": "last-k"}, '"layers" must be a whole number >= 0'),
    ({"seed": 1.5}, '"seed" must be a whole number'),
    ({"seed": 2 ** 32}, '"seed"'),
    ({"lr": None}, '"lr" must be a finite number >= 0, got null'),
    ({"lr": "0.1"}, '"lr" must be a finite number >= 0, got the string "0.1"'),
    ({"lr": True}, '"lr" must be a finite number >= 0, got true'),
    ({"momentum": "0"}, '"momentum" must be a number'),
    ({"preset": 3}, '"preset" must be one of'),
    ({"loss": None}, '"loss" must be one of'),
    ({"weights": {"layer": 1}}, '"weights" must be a list'),
    ({"weights": [3]}, 'weights[0] must be an object'),
    ({"weights": [{"layer": True}]}, 'weights[0].layer must be a layer index or tensor name, got'),
    ({"weights": [{"layer": 1.0}]}, 'weights[0].layer must be a layer index'),
    ({"weights": [{"layer": 1, "ratio": "1"}]}, 'weights[0].ratio must be one of'),
    ({"weights": [{"layer": 1, "ratio": True}]}, 'weights[0].ratio must be one of'),
    ({"weights": [{"layer": 1}, {"layer": 2, "ration": 0.5}]},
     'weights[1] has unknown key "ration"'),
    ({"preset": "full", "weights": [{"layer": 1}]}, '"weights" applies only to preset'),
    ({"preset": "sparse", "layers": 2, "bias_layers": 1}, '"layers" applies only to preset'),
])
def test_scheme_values_are_validated_strictly(raw: dict, message: str) -> None:
    with pytest.raises(ModelError) as err:
        parse_scheme(raw, name="har_adapt")
    text = str(err.value)
    assert text.startswith("har_adapt: ") and "\n" not in text
    assert message in text, text


def test_ints_and_integral_json_numbers_that_are_valid_still_load() -> None:
    s = parse_scheme({"bias_layers": 2, "lr": 1, "momentum": 0, "qas": False, "seed": 0,
                      "weights": [{"layer": -1, "ratio": 1}, {"layer": "conv3", "ratio": 0.125}]})
    assert (s.bias_layers, s.lr, s.qas, s.seed) == (2, 1.0, False, 0)
    assert isinstance(s.lr, float) and s.weights[0].ratio == 1.0


@pytest.mark.parametrize("weights, message", [
    ([{"layer": 3}, {"layer": -1}], 'weights lists layer 3 ("fc") twice (as 3 and -1)'),
    ([{"layer": "conv3"}, {"layer": 2, "ratio": 0.5}],
     'weights lists layer 2 ("conv3") twice (as "conv3" and 2)'),
])
def test_duplicate_layers_are_refused(weights: list, message: str) -> None:
    with pytest.raises(ModelError) as err:
        plan_layers(parse_scheme({"weights": weights}, name="s"), LAYERS)
    assert str(err.value).startswith("s: ") and message in str(err.value), str(err.value)


def test_unknown_layer_name_lists_the_valid_names() -> None:
    with pytest.raises(ModelError) as err:
        plan_layers(parse_scheme({"weights": [{"layer": "conv9"}]}), LAYERS)
    message = str(err.value)
    assert "no parametric layer writes tensor 'conv9'" in message
    assert "conv1, conv2, conv3, fc" in message and "mcutrain layers" in message, message


def test_unknown_layer_name_list_is_shortened_for_big_models() -> None:
    many = [(i, f"model/block_{i}/conv2d/Relu", 8) for i in range(60)]
    with pytest.raises(ModelError) as err:
        plan_layers(parse_scheme({"weights": [{"layer": "nope"}]}), many)
    message = str(err.value)
    assert "model/block_0/conv2d/Relu" in message and "model/block_59/conv2d/Relu" in message
    assert "model/block_30/" not in message and "60 layers" in message
    assert len(message) < 600 and "\n" not in message, message


def test_scheme_file_that_is_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "latin.json"
    bad.write_bytes(b'{"loss": "\xe9"}')
    with pytest.raises(ModelError, match="not valid JSON"):
        load_scheme(bad)


def test_layer_may_be_named_by_the_first_part_of_a_fused_tensor_name() -> None:
    fused = [(0, "m/conv1/Relu;m/conv1/BiasAdd", 8), (3, "m/fc/MatMul;m/fc/BiasAdd", 2)]
    scheme = parse_scheme({"weights": [{"layer": "m/conv1/Relu"}]})
    assert [p.step for p in plan_layers(scheme, fused)] == [0]
    full = parse_scheme({"weights": [{"layer": "m/fc/MatMul;m/fc/BiasAdd"}]})
    assert [p.step for p in plan_layers(full, fused)] == [3]


@pytest.mark.parametrize("raw, message", [
    ({"bias_layers": 5}, '"bias_layers" is 5 but the model has 4 parametric layers'),
    ({"preset": "last-k", "layers": 9}, '"layers" is 9 but the model has 4 parametric layers'),
])
def test_counts_beyond_the_model_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        plan_layers(parse_scheme(raw), LAYERS)
