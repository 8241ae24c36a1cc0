"""Pinned arena sizes of every shipped model and training scheme, so memory regressions fail loudly.

The numbers are exact: an increase fails (the pin may only be raised deliberately, saying why in
the commit), and a decrease fails too, asking for the pin to be lowered so the improvement is
recorded and cannot be lost again unnoticed. Only the compiler runs here: no TensorFlow, no QEMU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mcutrain.compile.compiler import compile_model
from mcutrain.train.scheme import load_scheme
from mcutrain.train.training_graph import build_training

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
TRAIN = ROOT / "train"
FIXTURE_SCHEMES = ROOT / "test" / "fixtures" / "schemes"

# Inference arena bytes, by model path under models/ without ".tflite".
INFERENCE_ARENA = {
    "har_cnn1d_int8": 1920,
    "mobilenetv2_w035_128_int8": 81040,
    "test/concat_pool_pertensor_int8": 3104,
    "test/logistic_padv2_int8": 608,
    "test/residual_dw_f32io": 4640,
    "test/wide_logits_int8": 2592,
    "third_party/arduino_magic_wand_int8": 7328,
    "third_party/tflm_hello_world_int8": 32,
    "third_party/tflm_micro_speech_int8": 5968,
}

# (model, scheme file) -> (training arena bytes, trainable state bytes). Every scheme in train/ on
# its model, then the pairs test_training_firmware runs on the emulated board.
TRAINING = {
    # The paper's MobileNetV2 scheme (issue 8): fits with the forward pass row-streamed.
    ("mobilenetv2_w035_128_int8", "train/mbv2_paper_50kb.json"): (81040, 52756),
    ("har_cnn1d_int8", "train/har_adapt.json"): (4704, 1484),
    ("har_cnn1d_int8", "train/har_adapt_fp32cls.json"): (4704, 1772),
    ("har_cnn1d_int8", "train/har_adapt_nearest.json"): (4704, 1484),
    ("har_cnn1d_int8", "train/har_adapt_noqas.json"): (4704, 1484),
    ("har_cnn1d_int8", "train/har_bias_only.json"): (4704, 236),
    ("har_cnn1d_int8", "train/har_last2.json"): (1920, 2540),
    ("har_cnn1d_int8", "schemes/sparse_ratios.json"): (5216, 1964),
    ("har_cnn1d_int8", "schemes/full_nearest_noqas.json"): (6560, 4860),
    ("har_cnn1d_int8", "schemes/fp32_classifier.json"): (4704, 1772),
    ("test/residual_dw_f32io", "schemes/full_stochastic.json"): (22016, 824),
    ("test/concat_pool_pertensor_int8", "schemes/full_stochastic.json"): (26128, 3852),
    ("third_party/tflm_micro_speech_int8", "schemes/bias_only.json"): (8528, 48),
    ("third_party/arduino_magic_wand_int8", "schemes/last2.json"): (7328, 19368),
    ("third_party/tflm_hello_world_int8", "schemes/full_mse.json"): (128, 420),
    ("test/wide_logits_int8", "schemes/full_stochastic.json"): (3008, 7040),
    ("test/wide_logits_int8", "schemes/fp32_classifier.json"): (2992, 2032),
    ("test/logistic_padv2_int8", "schemes/full_stochastic.json"): (1312, 504),
}


def pin_error(what: str, pinned: int, actual: int) -> str | None:
    """The failure message for a measured size that differs from its pin, or None if equal."""
    if actual > pinned:
        return (f"{what} grew by {actual - pinned} bytes ({pinned} -> {actual}): a memory "
                f"regression; fix it, or raise the pin in {Path(__file__).name} deliberately "
                f"and say why in the commit")
    if actual < pinned:
        return (f"{what} shrank by {pinned - actual} bytes ({pinned} -> {actual}): lower the pin "
                f"in {Path(__file__).name} to {actual} so the improvement is recorded")
    return None


def _scheme_path(name: str) -> Path:
    folder, file = name.split("/")
    return (TRAIN if folder == "train" else FIXTURE_SCHEMES) / file


def _shipped_models() -> set[str]:
    found = [*MODELS.glob("*.tflite"), *(MODELS / "test").glob("*.tflite"),
             *(MODELS / "third_party").glob("*.tflite")]
    return {str(p.relative_to(MODELS).with_suffix("")) for p in found}


def test_every_shipped_model_and_scheme_is_pinned() -> None:
    assert set(INFERENCE_ARENA) == _shipped_models(), "pin the arena of every model in models/"
    shipped = {f"train/{p.name}" for p in TRAIN.glob("*.json")}
    assert shipped <= {s for _, s in TRAINING}, \
        "pin the training arena of every scheme in train/ on the model it is written for"


def test_firmware_training_pairs_are_pinned() -> None:
    from test_training_firmware import CASES

    pinned = {(m, s) for m, s in TRAINING}
    missing = [c for c in CASES if (c[0], f"schemes/{c[1]}.json") not in pinned]
    assert not missing, f"pin the training arena of {missing}"


@pytest.mark.parametrize("model", sorted(INFERENCE_ARENA))
def test_inference_arena_is_pinned(model: str) -> None:
    actual = compile_model(MODELS / f"{model}.tflite").arena_bytes
    error = pin_error(f"inference arena of {model}", INFERENCE_ARENA[model], actual)
    assert error is None, error


@pytest.mark.parametrize("model, scheme", sorted(TRAINING),
                         ids=[f"{m}+{s}" for m, s in sorted(TRAINING)])
def test_training_arena_and_state_are_pinned(model: str, scheme: str) -> None:
    program = build_training(compile_model(MODELS / f"{model}.tflite"),
                             load_scheme(_scheme_path(scheme)))
    arena, state = TRAINING[(model, scheme)]
    errors = [pin_error(f"training arena of {model} with {scheme}", arena, program.arena_bytes),
              pin_error(f"training state of {model} with {scheme}", state, program.state_bytes)]
    errors = [e for e in errors if e is not None]
    assert not errors, "; ".join(errors)


# Arenas with the input pulled from the host row by row (custom_input = rows), by model and
# scheme (None: inference).
PULLED_INPUT = {
    ("mobilenetv2_w035_128_int8", None): 50880,
    ("mobilenetv2_w035_128_int8", "train/mbv2_paper_50kb.json"): 54592,
    ("third_party/arduino_magic_wand_int8", None): 5376,
}


@pytest.mark.parametrize("model, scheme", sorted(PULLED_INPUT, key=str),
                         ids=[f"{m}+{s}" for m, s in sorted(PULLED_INPUT, key=str)])
def test_pulled_input_arenas_are_pinned(model: str, scheme: str | None) -> None:
    compiled = compile_model(MODELS / f"{model}.tflite", pull_input=True)
    actual = (compiled.arena_bytes if scheme is None else
              build_training(compiled, load_scheme(_scheme_path(scheme))).arena_bytes)
    error = pin_error(f"arena of {model} with {scheme} and a pulled input",
                      PULLED_INPUT[(model, scheme)], actual)
    assert error is None, error


def test_pin_error_names_growth_and_shrinkage() -> None:
    assert pin_error("arena of m", 100, 100) is None
    grew = pin_error("arena of m", 100, 164)
    assert grew is not None and "arena of m grew by 64 bytes (100 -> 164)" in grew
    assert "deliberately" in grew
    shrank = pin_error("arena of m", 100, 96)
    assert shrank is not None and "shrank by 4 bytes" in shrank and "to 96" in shrank
