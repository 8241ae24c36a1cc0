"""train/mbv2_paper_50kb.json is the paper's MobileNetV2 "sparse_50kb" scheme (Lin et al. 2022,
tiny-training): biases of the last 16 convolutions and the classifier; weights of the classifier
and of convolutions 36, 39, 41, 42, 45, 48, 49 (counted from 0 at the input over all 52 CONV_2D and
DEPTHWISE_CONV_2D operators) at channel ratios 1, 1, 1/4, 1/8, 1/8, 1/8, 1/8.

The expected layers are found here by walking the model's operators from the input, not through
the scheme's negative indices, so a wrong index mapping in the file shows up as a wrong layer.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest

from mcutrain.compile.compiler import compile_model
from mcutrain.compile.report import BoardLimits
from mcutrain.frontend.graph import ModelError
from mcutrain.train.report import check_training_fits, training_ram
from mcutrain.train.scheme import load_scheme
from mcutrain.train.training_graph import build_training

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"
SCHEME = ROOT / "train" / "mbv2_paper_50kb.json"
F746 = BoardLimits("f746", 320 * 1024, 1024 * 1024)
PAPER_WEIGHTS = {36: Fraction(1), 39: Fraction(1), 41: Fraction(1, 4), 42: Fraction(1, 8),
                 45: Fraction(1, 8), 48: Fraction(1, 8), 49: Fraction(1, 8)}


@pytest.fixture(scope="module")
def program():
    return build_training(compile_model(MODEL), load_scheme(SCHEME))


def _paper_layers(model) -> tuple[list[int], int]:
    """Steps of the convolutions in order from the input, and the classifier's step."""
    convs = [s for s, p in enumerate(model.ops)
             if p.op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    (fc,) = [s for s, p in enumerate(model.ops) if p.op.opcode == "FULLY_CONNECTED"]
    return convs, fc


def _out_channels(model, step: int) -> int:
    return model.graph.tensors[model.ops[step].output].shape[-1]


def test_the_model_has_the_papers_52_convolutions_then_the_classifier(program) -> None:
    convs, fc = _paper_layers(program.model)
    assert len(convs) == 52 and fc > convs[-1]


def test_biases_of_the_last_16_convolutions_and_the_classifier_train(program) -> None:
    convs, fc = _paper_layers(program.model)
    biased = {s for s, t in program.trained.items() if t.slot.bias is not None}
    assert biased == {*convs[-16:], fc}


def test_weights_train_on_the_papers_layers_at_the_papers_ratios(program) -> None:
    convs, fc = _paper_layers(program.model)
    expected = {convs[k]: r for k, r in PAPER_WEIGHTS.items()} | {fc: Fraction(1)}
    weighted = {s: Fraction(t.slot.n_train, _out_channels(program.model, s))
                for s, t in program.trained.items() if t.slot.weights is not None}
    assert weighted == expected


def test_it_fits_the_training_budget_with_the_forward_pass_streamed(program) -> None:
    """Layer by layer, the forward arena alone (245,760 B) was over the 256 KB training budget;
    with the high-resolution stage row-streamed the whole step fits, and one byte less than it
    needs is refused with the numbers."""
    assert program.streams and program.streams[0].first == 0
    need = training_ram(program, F746)
    assert need.total <= F746.train_ram_bytes
    check_training_fits(program, 0, F746)
    tight = BoardLimits("f746", F746.ram_bytes, F746.flash_bytes, train_ram_bytes=need.total - 1)
    with pytest.raises(ModelError) as err:
        check_training_fits(program, 0, tight)
    message = str(err.value)
    assert "\n" not in message and message.startswith("mobilenetv2_w035_128_int8")
    assert re.search(r"needs \d+ B", message) and "(1 B over)" in message, message
