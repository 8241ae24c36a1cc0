"""The compile-time training graph: what is kept, what is pruned, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcutrain.compiler import compile_model
from mcutrain.graph import ModelError
from mcutrain.report import BoardLimits, check_training_fits, training_report
from mcutrain.scheme import load_scheme, parse_scheme
from mcutrain.training_graph import build_training, grad_buffer

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "models" / "har_cnn1d_int8.tflite"
MOBILENET = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"
F746 = BoardLimits("f746", 320 * 1024, 1024 * 1024)


@pytest.fixture(scope="module")
def har():
    return compile_model(HAR)


def test_har_adaptation_scheme_prunes_everything_before_the_last_trained_layer(har) -> None:
    program = build_training(har, load_scheme(ROOT / "train" / "har_adapt.json"))
    opcodes = [op.op.opcode for op in har.ops]
    steps = [(b.step, opcodes[b.step]) for b in program.backward]
    # Biases of the last 3 layers train, so backward reaches the second conv and stops there.
    assert steps == [(7, "FULLY_CONNECTED"), (6, "MEAN"), (5, "CONV_2D"), (4, "MAX_POOL_2D"),
                     (3, "CONV_2D")]
    fc, mean, conv3, pool, conv2 = program.backward
    assert [b.need_dx for b in program.backward] == [[True], [True], [True], [True], [False]]
    # Weight-trained layers and the max pool keep their input; a bias-only layer keeps nothing;
    # the ReLUs keep only 1-bit masks.
    assert fc.saved == conv3.saved == pool.saved == [True]
    assert mean.saved == conv2.saved == [False]
    assert set(program.masks) == {3, 5}
    trained = program.trained
    assert trained[5].slot.n_train == 16 and trained[7].slot.n_train == 3
    assert program.state_bytes == sum(
        (t.slot.weights.nbytes + 3) // 4 * 4 if t.slot.weights is not None else 0
        for t in trained.values()) + sum(
        t.slot.bias.nbytes for t in trained.values() if t.slot.bias is not None)


def test_saved_tensors_and_gradients_live_until_used(har) -> None:
    program = build_training(har, parse_scheme({"preset": "full", "lr": 0.01}))
    placements = program.planner.placements()
    n = len(har.ops)
    for i, b in enumerate(program.backward):
        at = n + 1 + i
        for t, keep in zip(b.op.inputs, b.saved, strict=True):
            if keep:
                assert placements[har.buffer_of[t]].last >= at
        assert placements[grad_buffer(b.op.output)].last >= at
    report = training_report(program)
    assert report["peak_sram_bytes"] == program.arena_bytes + program.state_bytes
    assert report["backward_macs"] > 0


def test_cross_entropy_needs_a_softmax() -> None:
    model = compile_model(ROOT / "models" / "third_party" / "tflm_hello_world_int8.tflite")
    with pytest.raises(ModelError, match="end in SOFTMAX"):
        build_training(model, parse_scheme({"preset": "full"}))


def test_schemes_that_do_not_fit_256k_are_refused_with_the_numbers() -> None:
    model = compile_model(MOBILENET)
    program = build_training(model, parse_scheme({"preset": "full"}))
    # With the whole 320 KB as budget its forward pass fits (test_fit_messages.py covers 256 KB,
    # where nothing can), so the message is about the scheme.
    with pytest.raises(ModelError) as err:
        check_training_fits(program, 0, BoardLimits("f746", 320 * 1024, 1024 * 1024,
                                                    train_ram_bytes=320 * 1024))
    message = str(err.value)
    assert "does not fit" in message and "B over" in message and "budget is 327680 B" in message
    assert f"arena {program.arena_bytes}" in message


def test_accepted_scheme_passes_the_check(har) -> None:
    program = build_training(har, load_scheme(ROOT / "train" / "har_adapt.json"))
    check_training_fits(program, 0, F746)
    assert program.arena_bytes + program.state_bytes < 16 * 1024
