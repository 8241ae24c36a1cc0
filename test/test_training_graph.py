"""The compile-time training graph: what is kept, what is pruned, and what is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mcutrain.compile.compiler import compile_model
from mcutrain.compile.report import BoardLimits
from mcutrain.frontend.graph import ModelError
from mcutrain.train.report import check_training_fits, training_report
from mcutrain.train.scheme import load_scheme, parse_scheme
from mcutrain.train.training_graph import build_training, grad_buffer

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "models" / "har_cnn1d_int8.tflite"
MOBILENET = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"
# First CONV_2D's input gradient would sum 2088 products; ends in FULLY_CONNECTED logits.
WIDE_LOGITS = ROOT / "models" / "test" / "wide_logits_int8.tflite"
F746 = BoardLimits("f746", 320 * 1024, 1024 * 1024)


@pytest.fixture(scope="module")
def har():
    return compile_model(HAR)


def test_har_adaptation_scheme_prunes_everything_before_the_last_trained_layer(har) -> None:
    program = build_training(har, load_scheme(ROOT / "train" / "har_adapt.json"))
    opcodes = [op.op.opcode for op in har.ops]
    steps = [(b.step, opcodes[b.step]) for b in program.backward]
    # Biases of the last 3 layers train, so backward reaches the second conv and stops there;
    # the MEAN's broadcast is folded into the conv before it (fold_broadcasts).
    assert steps == [(7, "FULLY_CONNECTED"), (5, "CONV_2D"), (4, "MAX_POOL_2D"),
                     (3, "CONV_2D")]
    fc, conv3, pool, conv2 = program.backward
    assert conv3.broadcast is not None and conv3.broadcast.step == 6
    assert [b.need_dx for b in program.backward] == [[True], [True], [True], [False]]
    # Weight-trained layers and the max pool keep their input; a bias-only layer keeps nothing;
    # the ReLUs keep only 1-bit masks.
    assert fc.saved == conv3.saved == pool.saved == [True]
    assert conv2.saved == [False]
    assert set(program.masks) == {3, 5}
    trained = program.trained
    assert trained[5].slot.n_train == 16 and trained[7].slot.n_train == 3
    assert program.state_bytes == sum(
        (t.slot.weights.nbytes + 3) // 4 * 4 if t.slot.weights is not None else 0
        for t in trained.values()) + sum(
        t.slot.bias.nbytes for t in trained.values() if t.slot.bias is not None)


def test_backward_scratch_widens_only_into_room_the_arena_already_has(har, monkeypatch) -> None:
    """widen_scratch: the HAR conv's input gradient gets its staged scratch, at no SRAM."""
    from mcutrain.compile.compiler import scratch_buffer
    from mcutrain.train import training_graph

    scheme = load_scheme(ROOT / "train" / "har_adapt.json")
    program = build_training(har, scheme)
    conv = next(b for b in program.backward if b.step == 5)
    assert conv.roomy_scratch_bytes[0] > conv.scratch_bytes > 0
    placed = program.planner.placements()[scratch_buffer(5, backward=True)]
    assert placed.size == conv.roomy_scratch_bytes[0]
    monkeypatch.setattr(training_graph, "widen_scratch", lambda planner, backward: None)
    plain = build_training(har, scheme)
    assert plain.planner.placements()[scratch_buffer(5, backward=True)].size == conv.scratch_bytes
    assert program.arena_bytes == plain.arena_bytes
    # The reported MACs follow: the staged input gradient is computed once.
    from mcutrain.train.codegen import step_backward_macs

    macs = conv.op.macs
    assert step_backward_macs(program, conv) == macs + macs * 16 // 32
    assert step_backward_macs(plain, next(b for b in plain.backward if b.step == 5)) == (
        2 * macs + macs * 16 // 32)


def test_saved_tensors_and_gradients_live_until_used(har) -> None:
    program = build_training(har, parse_scheme({"preset": "full", "lr": 0.01}))
    placements = program.planner.placements()
    n = len(har.ops)
    for i, b in enumerate(program.backward):
        at = n + 1 + i
        for t, keep in zip(b.op.inputs, b.saved, strict=True):
            if keep:
                assert placements[har.buffer_of[t]].last >= at
        assert placements[grad_buffer(b.dy_tensor)].last >= at
    report = training_report(program)
    assert report["peak_sram_bytes"] == program.arena_bytes + program.state_bytes
    assert report["backward_macs"] > 0


def test_cross_entropy_needs_two_classes() -> None:
    # hello_world ends in a one-value FULLY_CONNECTED: a regression output, not class logits.
    model = compile_model(ROOT / "models" / "third_party" / "tflm_hello_world_int8.tflite")
    with pytest.raises(ModelError, match=r"at least 2 classes.*use loss 'mse'"):
        build_training(model, parse_scheme({"preset": "full"}))


@pytest.fixture(scope="module")
def wide_logits():
    return compile_model(WIDE_LOGITS)


@pytest.mark.parametrize("raw", [
    {"preset": "full", "loss": "mse"},
    {"preset": "bias-only", "bias_layers": 3, "loss": "mse"},
    {"preset": "sparse", "weights": [{"layer": 0, "ratio": 0.25}], "loss": "mse"},
], ids=["full", "bias_all", "sparse_layer0"])
def test_first_layer_trains_although_its_input_gradient_would_overflow(wide_logits, raw) -> None:
    # Layer 0's input gradient would sum 232 * 3 * 3 products, past 8191 * 128 * K < 2^31; it is
    # never computed (nothing before layer 0 trains), so it must not block training layer 0.
    program = build_training(wide_logits, parse_scheme(raw))
    first = program.backward[-1]
    assert first.step == 0 and first.need_dx == [False]
    assert 0 in program.trained
    assert first.rule.input_grad_depth(first.op.params) == 2088


@pytest.mark.parametrize(("depth", "refused"), [(2048, False), (2049, True), (2064, True)])
def test_input_gradient_bound_counts_weights_of_minus_128(depth: int, refused: bool) -> None:
    """An input gradient sums depth products d * w, |d| <= 8191 and w any int8 (-128 in a
    flashed filter or a trained copy before its first update): 8191 * 128 * 2049 passes int32."""
    from types import SimpleNamespace

    from mcutrain.train.training_graph import _check_depth

    step = SimpleNamespace(op=SimpleNamespace(index=4, opcode="CONV_2D"), params=None)
    rule = SimpleNamespace(input_grad_depth=lambda params: depth)
    if not refused:
        _check_depth(step, rule)
        return
    with pytest.raises(ModelError, match=f"operator 4 \\(CONV_2D\\).* {depth} products"):
        _check_depth(step, rule)


@pytest.fixture(scope="module")
def wide_second(tmp_path_factory: pytest.TempPathFactory):
    """A small CONV_2D, then the wide one: training the first needs the wide one's dx."""
    import tensorflow as tf

    from tflite_convert import convert_keras_int8

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((4, 4, 2), batch_size=1)
    t = tf.keras.layers.Conv2D(2, 1, activation="relu")(inputs)
    t = tf.keras.layers.Conv2D(232, 3, activation="relu")(t)
    t = tf.keras.layers.Dense(3)(tf.keras.layers.GlobalAveragePooling2D()(t))
    model = tf.keras.Model(inputs, t)

    path = tmp_path_factory.mktemp("wide") / "wide_second.tflite"
    path.write_bytes(convert_keras_int8(model))
    return compile_model(path)


def test_an_input_gradient_that_is_computed_is_still_checked(wide_second) -> None:
    with pytest.raises(ModelError, match=r"operator 1 \(CONV_2D\).*sums 2088 products"):
        build_training(wide_second, parse_scheme({"preset": "full", "loss": "mse"}))
    program = build_training(wide_second, parse_scheme({"preset": "last-k", "layers": 2,
                                                        "loss": "mse"}))
    assert program.backward[-1].step == 1 and program.backward[-1].need_dx == [False]


def test_cross_entropy_on_logits_takes_the_gradient_of_the_output(wide_logits) -> None:
    program = build_training(wide_logits, parse_scheme({"preset": "full"}))
    assert program.loss_input == wide_logits.output and program.num_classes == 4
    # The MEAN (step 2) has no step: its broadcast is read by the conv before it.
    assert [b.step for b in program.backward] == [3, 1, 0]
    assert program.backward[0].op.op.opcode == "FULLY_CONNECTED"
    assert program.backward[1].broadcast.step == 2


def test_mse_through_softmax_points_to_cross_entropy(har) -> None:
    with pytest.raises(ModelError, match=r"SOFTMAX.*use loss 'cross_entropy'"):
        build_training(har, parse_scheme({"preset": "full", "loss": "mse"}))


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


def _emitted_floats(source: str, symbol: str) -> np.ndarray:
    """The values of `const float k_<symbol>_<n>[...] = {...};` in generated C++."""
    import re

    match = re.search(rf"const float k_{symbol}_\d+\[\d+\] = \{{([^}}]*)\}};", source)
    assert match is not None, symbol
    return np.array([np.float32(v.strip().rstrip("f")) for v in match.group(1).split(",")
                     if v.strip()], dtype=np.float32)


@pytest.mark.parametrize("scheme", ["har_adapt.json", "har_adapt_noqas.json"])
def test_update_coefficients_in_the_firmware_are_param_train_coefficients(har, scheme) -> None:
    """The kernel tests take their coefficients from param_train.coefficients: these must be
    the very float32 constants the generated firmware gets, bit for bit."""
    from mcutrain.ops import param_train
    from mcutrain.train.codegen import generate_training_source

    program = build_training(har, load_scheme(ROOT / "train" / scheme))
    source, _ = generate_training_source(program)
    checked = 0
    for step, t in program.trained.items():
        w_coef, bias_coef = param_train.coefficients(har.ops[step].params, t.slot.n_train,
                                                     program.scheme.qas)
        if t.slot.n_train:
            emitted = _emitted_floats(source, f"w_coef{step}")
            np.testing.assert_array_equal(emitted.view(np.uint32), w_coef.view(np.uint32))
            checked += 1
        if t.slot.bias is not None:
            emitted = _emitted_floats(source, f"bias_coef{step}")
            np.testing.assert_array_equal(emitted.view(np.uint32), bias_coef.view(np.uint32))
            checked += 1
    assert checked >= 3


def test_activation_masks_are_grad_rules_mask_bounds_of_the_operator_clamp(har) -> None:
    """The masks the firmware applies come from grad_rules.mask_bounds (the function the mask
    kernel tests check), fed with the clamp the forward kernel uses."""
    from mcutrain.train import grad_rules

    program = build_training(har, parse_scheme({"preset": "full", "lr": 0.01}))
    assert program.masks
    for step, bounds in program.masks.items():
        p = har.ops[step]
        expected = grad_rules.mask_bounds(p.op.options["activation"], p.params.act_min,
                                          p.params.act_max)
        assert bounds == expected, step


def test_gradient_and_mask_buffers_map_back_without_parsing_their_names() -> None:
    """Every gradient and mask buffer of the arena plan is known to the program (tensor, or
    masked step), fan-out parts included, so reports need not parse 'g<id>_c<k>' / 'm<step>'."""
    model = compile_model(ROOT / "models" / "test" / "residual_dw_f32io.tflite")
    program = build_training(model, parse_scheme({"preset": "full", "lr": 0.01}))
    gradients, masks = program.gradient_buffers(), program.mask_buffers()
    planned = set(program.planner.placements())
    assert set(gradients) | set(masks) == {b for b in planned if b[0] in "gm"}
    assert any("_c" in b for b in gradients)  # the residual's fan-out has two parts
    for t in program.grad_tensors:
        assert gradients[grad_buffer(t)] == t
    assert {step for step in masks.values()} == set(program.masks)


def test_build_training_returns_frozen_records_with_their_state_offsets(har) -> None:
    """The trained operators and the fp32 classifier come out of build_training complete (state
    offsets, need_dx) and frozen: nothing patches them after they are made."""
    import dataclasses

    program = build_training(har, load_scheme(ROOT / "train" / "har_adapt_fp32cls.json"))
    cls = program.classifier
    assert cls is not None and program.trained
    for t in program.trained.values():
        assert t.weight_offset >= 0 or t.bias_offset >= 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            t.weight_offset = 0  # type: ignore[misc]
    assert cls.weight_offset >= 0 and cls.bias_offset == cls.weight_offset + cls.weight_bytes
    assert program.state_bytes == cls.bias_offset + cls.bias_bytes
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls.need_dx = not cls.need_dx  # type: ignore[misc]
