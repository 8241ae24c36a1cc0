"""What a refused training scheme tells the user: whether any scheme could fit, and the buffers
that dominate named by layer and tensor, not by internal buffer names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcutrain.compile.compiler import compile_model
from mcutrain.compile.report import BoardLimits, inference_ram, short_name
from mcutrain.frontend.graph import ModelError
from mcutrain.train.report import check_training_fits, training_ram
from mcutrain.train.scheme import parse_scheme
from mcutrain.train.training_graph import build_training

ROOT = Path(__file__).resolve().parents[1]
F746 = BoardLimits("f746", 320 * 1024, 1024 * 1024)
INTERNAL_NAME = re.compile(r"\b(?:[tgm]\d+(?:_c\d+)?|cls_work|cls_dx)\b")


def refusal(model, raw: dict, limits: BoardLimits = F746) -> str:
    program = build_training(model, parse_scheme(raw, name="s"))
    with pytest.raises(ModelError) as err:
        check_training_fits(program, 0, limits)
    return str(err.value)


def test_forward_pass_over_budget_says_no_scheme_can_help() -> None:
    model = compile_model(ROOT / "models" / "mobilenetv2_w035_128_int8.tflite")
    forward = inference_ram(model, F746).total
    # A budget the streamed forward pass alone exceeds (it fits the F746's 256 KB).
    tight = BoardLimits("f746", F746.ram_bytes, F746.flash_bytes, train_ram_bytes=forward - 4096)
    message = refusal(model, {"preset": "bias-only", "bias_layers": 1}, tight)
    assert "no training scheme can fit" in message and f"needs {forward} B" in message, message
    assert "Train fewer" not in message and "input resolution or width" in message, message
    assert "custom_train_ram" in message, message
    first, last = model.streams[0].first, model.streams[0].last
    assert f"Steps {first}..{last} already run row-streamed" in message, message
    peak = sorted(model.planner.live_at(model.planner.peak_step()), key=lambda p: -p.size)[0]
    name = short_name(model.graph.tensors[int(peak.name[1:])].name)
    assert f"'{name}' ({peak.size} B)" in message, message
    assert not INTERNAL_NAME.search(message) and "\n" not in message and len(message) < 900


def test_live_buffers_are_named_by_layer_and_tensor() -> None:
    har = compile_model(ROOT / "models" / "har_cnn1d_int8.tflite")
    # A budget between the forward pass's need and the full scheme's, whatever those are.
    need = training_ram(build_training(har, parse_scheme({"preset": "full"}, name="s")), F746)
    budget = need.total - 1024
    tight = BoardLimits("f746", 320 * 1024, 1024 * 1024, train_ram_bytes=budget)
    assert inference_ram(har, tight).total < budget
    message = refusal(har, {"preset": "full"}, tight)
    assert "Train fewer or later layers" in message and "mcutrain layers" in message, message
    assert not INTERNAL_NAME.search(message), message
    # The largest buffer at the peak is a gradient; it is named by the tensor and its layer
    # with both scheme indices, and the state by the layers whose copies it holds.
    assert re.search(r"\d+ B gradient of 'har_cnn1d_1/[\w/]+' \((?:output of|input of) "
                     r"layer \d+/-\d+ CONV_2D\)", message), message
    assert re.search(r"trainable copies: layer \d+/-\d+ \w+ weights \d+ B", message), message
    assert "\n" not in message and len(message) < 900, len(message)
