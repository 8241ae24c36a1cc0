"""Each training pass on its own: its frozen input, its new frozen output, and no mutation.

build_training is select -> schedule_backward -> fold_broadcasts -> layout_state ->
gradient_tensors -> plan_memory; these tests feed one pass the previous pass's output on the
shipped HAR model and check what it adds, so a pass can change without re-deriving the whole
program to see what broke.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mcutrain.compile.compiler import compile_model
from mcutrain.ops import load_all
from mcutrain.train import training_graph as tg
from mcutrain.train.loss_head import FloatClassifierHead, Int8Loss
from mcutrain.train.scheme import load_scheme

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "models" / "har_cnn1d_int8.tflite"


@pytest.fixture(scope="module")
def har():
    load_all()
    tg._import_backward_rules()
    return compile_model(HAR)


def _scheme(name: str):
    return load_scheme(ROOT / "train" / f"{name}.json")


def _parametric_steps(model) -> list[int]:
    return [s for s, p in enumerate(model.ops) if p.op.opcode in ("CONV_2D", "FULLY_CONNECTED")]


def test_select_picks_the_scheme_layers_with_slots_not_yet_placed(har) -> None:
    selection = tg.select(har, _scheme("har_adapt"))
    parametric = _parametric_steps(har)
    # bias_layers 3: the last three parametric layers; weights on the last (all 3 channels) and
    # the one before (half of its output channels).
    assert sorted(selection.trained) == parametric[-3:]
    last, before = parametric[-1], parametric[-2]
    out_channels = {s: int(har.graph.tensors[har.ops[s].output].shape[-1]) for s in parametric}
    assert selection.trained[last].slot.n_train == out_channels[last]
    assert selection.trained[before].slot.n_train == out_channels[before] // 2
    assert selection.trained[parametric[-3]].slot.weights is None
    assert all(t.weight_offset == t.bias_offset == -1 for t in selection.trained.values())
    softmax = har.ops[-1]
    assert softmax.op.opcode == "SOFTMAX"
    assert selection.loss_input == softmax.inputs[0]
    assert selection.num_classes == int(har.graph.tensors[har.output].shape[-1])
    assert not selection.logits_loss and selection.classifier is None


def test_select_with_fp32_classifier_leaves_the_fc_to_the_classifier(har) -> None:
    selection = tg.select(har, _scheme("har_adapt_fp32cls"))
    fc = _parametric_steps(har)[-1]
    assert fc not in selection.trained
    cls = selection.classifier
    assert (cls.fc_step, cls.softmax_step) == (fc, len(har.ops) - 1)
    assert cls.input_tensor == har.ops[fc].inputs[0]
    assert not cls.need_dx and cls.weight_offset == -1  # decided by later passes


def test_schedule_backward_stops_at_the_first_trained_layer_and_keeps_only_what_it_reads(
        har) -> None:
    selection = tg.select(har, _scheme("har_adapt"))
    schedule = tg.schedule_backward(har, _scheme("har_adapt"), selection)
    steps = [b.step for b in schedule.backward]
    first_trained = min(selection.trained)
    # Reverse order from the op before SOFTMAX (cross-entropy skips it) to the first trained op.
    assert steps == list(range(len(har.ops) - 2, first_trained - 1, -1))
    # Only the first trained op's input has no trained parameter upstream.
    assert [b.need_dx for b in schedule.backward] == [[s != first_trained] for s in steps]
    weight_trained = {s for s, t in selection.trained.items() if t.slot.weights is not None}
    pools = {s for s in steps if har.ops[s].op.opcode == "MAX_POOL_2D"}
    assert {b.step for b in schedule.backward if b.saved[0]} == weight_trained | pools
    fused_relu = {s for s in steps if har.ops[s].op.options.get("activation", "NONE") != "NONE"}
    assert set(schedule.masks) == fused_relu
    assert all(b.mask == schedule.masks.get(b.step) for b in schedule.backward)
    assert schedule.loss_input == selection.loss_input and schedule.classifier is None


def test_schedule_backward_with_fp32_classifier_starts_below_it_and_leaves_selection_alone(
        har) -> None:
    scheme = _scheme("har_adapt_fp32cls")
    selection = tg.select(har, scheme)
    schedule = tg.schedule_backward(har, scheme, selection)
    cls = selection.classifier
    assert schedule.backward[0].step == cls.fc_step - 1
    assert schedule.loss_input == cls.input_tensor
    # Layers below the classifier train, so its input gradient is needed; the pass returns a
    # new classifier and the selection it read is unchanged.
    assert schedule.classifier.need_dx and not selection.classifier.need_dx
    assert schedule.classifier is not cls and cls.weight_offset == -1


def test_layout_state_packs_trained_copies_in_step_order_then_the_classifier(har) -> None:
    scheme = _scheme("har_adapt_fp32cls")
    selection = tg.select(har, scheme)
    schedule = tg.schedule_backward(har, scheme, selection)
    state = tg.layout_state(selection.trained, schedule.classifier)
    offset = 0
    for step in sorted(state.trained):
        placed, slot = state.trained[step], state.trained[step].slot
        if slot.weights is None:
            assert placed.weight_offset == -1
        else:
            assert placed.weight_offset == offset
            offset += -(-slot.weights.nbytes // 4) * 4
        assert placed.bias_offset == offset
        offset += slot.bias.nbytes
    cls = state.classifier
    assert cls.weight_offset == offset and cls.bias_offset == offset + cls.weight_bytes
    assert state.state_bytes == cls.bias_offset + cls.bias_bytes
    assert all(t.weight_offset == -1 for t in selection.trained.values())  # input unchanged


def test_gradient_tensors_follow_the_loss_then_the_backward_steps(har) -> None:
    scheme = _scheme("har_adapt")
    schedule = tg.schedule_backward(har, scheme, tg.select(har, scheme))
    expected = [schedule.loss_input] + [b.op.inputs[0] for b in schedule.backward if b.need_dx[0]]
    assert tg.gradient_tensors(schedule.loss_input, None, schedule.backward) == expected
    # An fp32 classifier whose input needs no gradient leaves the loss without one.
    alone = dataclasses.replace(tg.select(har, _scheme("har_adapt_fp32cls")).classifier,
                                need_dx=False)
    assert tg.gradient_tensors(schedule.loss_input, alone, []) == []


def test_plan_memory_gives_each_gradient_and_mask_a_buffer_that_lives_to_its_backward(har) -> None:
    scheme = _scheme("har_adapt")
    selection = tg.select(har, scheme)
    schedule = tg.schedule_backward(har, scheme, selection)
    state = tg.layout_state(selection.trained, schedule.classifier)
    planner = tg.plan_memory(har, schedule, tg._forward_variants(har, state.trained))
    placements = planner.placements()
    grads = tg.gradient_tensors(schedule.loss_input, None, schedule.backward)
    assert {n for n in placements if n.startswith("g")} == {tg.grad_buffer(t) for t in grads}
    n = len(har.ops)
    bstep = {b.step: n + 1 + i for i, b in enumerate(schedule.backward)}
    for step in schedule.masks:
        mask = placements[tg.mask_buffer(step)]
        assert (mask.first, mask.last) == (step, bstep[step])


def test_gradient_buffers_take_two_bytes_per_element_where_int16_is_written_directly() -> None:
    """A gradient only a weighted operator or the identity writes (int16 straight away) takes 2
    bytes per element, also as one part of a fan-out; the fan-out's sum and PAD's gradient
    still accumulate int32 (4 bytes). The final MEAN's broadcast is folded into the CONV_2D
    before it, so it has no buffer at all."""
    model = compile_model(ROOT / "models" / "test" / "residual_dw_f32io.tflite")
    program = tg.build_training(
        model, load_scheme(ROOT / "test" / "fixtures" / "schemes" / "full_stochastic.json"))
    placements = program.planner.placements()
    contributions = tg.gradient_contributions(program)
    opcodes = {t: [model.ops[s].op.opcode for s in made if s is not None]
               for t, made in contributions.items()}

    def per_element(name: str, t: int) -> int:
        return placements[name].size // model.graph.tensors[t].num_elements

    (residual,) = [t for t, ops in opcodes.items() if sorted(ops) == ["ADD", "DEPTHWISE_CONV_2D"]]
    assert [per_element(tg.grad_buffer(residual, k), residual) for k in (0, 1)] == [2, 2]
    assert per_element(tg.grad_buffer(residual), residual) == 4
    by_writer = {ops[0]: per_element(tg.grad_buffer(t), t)
                 for t, ops in opcodes.items() if len(ops) == 1}
    assert by_writer == {"FULLY_CONNECTED": 2, "CONV_2D": 2, "DEPTHWISE_CONV_2D": 2,
                         "PAD": 4, "ADD": 2}
    (folded,) = [b for b in program.backward if b.broadcast is not None]
    assert tg.grad_buffer(folded.op.output) not in placements


def test_build_training_composes_the_passes_into_one_frozen_program(har) -> None:
    scheme = _scheme("har_adapt_fp32cls")
    program = tg.build_training(har, scheme)
    selection = tg.select(har, scheme)
    schedule = tg.fold_broadcasts(har, tg.schedule_backward(har, scheme, selection))
    state = tg.layout_state(selection.trained, schedule.classifier)
    assert program.trained.keys() == state.trained.keys()
    placed = (state.classifier.need_dx, state.classifier.weight_offset,
              state.classifier.bias_offset)
    assert placed == (program.classifier.need_dx, program.classifier.weight_offset,
                      program.classifier.bias_offset)
    assert program.state_bytes == state.state_bytes
    assert [b.step for b in program.backward] == [b.step for b in schedule.backward]
    assert program.grad_tensors == tg.gradient_tensors(schedule.loss_input, schedule.classifier,
                                                       schedule.backward)
    variants = tg._forward_variants(har, state.trained)
    assert program.arena_bytes == tg.plan_memory(har, schedule, variants).arena_bytes()
    with pytest.raises(dataclasses.FrozenInstanceError):
        program.planner = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        program.backward[0].need_dx = []  # type: ignore[misc]


def test_fold_classifier_makes_the_int8_loss_one_head_that_covers_the_final_softmax(har) -> None:
    scheme = _scheme("har_adapt")
    selection = tg.select(har, scheme)
    head = tg.fold_classifier(har, scheme, selection)
    assert isinstance(head, Int8Loss) and head.kind == "softmax_cross_entropy"
    # It replaces no forward step; cross-entropy's gradient skips the SOFTMAX, so the int8
    # backward schedule runs below it.
    assert head.steps == () and head.covers_from == len(har.ops) - 1
    assert head.loss_input == selection.loss_input and head.output == har.output
    assert head.classifier is None and head.state_members() == ([], [])
    assert head.backward_macs() == 0 and head.report() is None
    assert head.with_need_dx(False) is head  # whatever trains needs its gradient
    # The walkers' schedule is the head's: plan_memory reads it from the schedule.
    assert tg.schedule_backward(har, scheme, selection).head == head


def test_fold_classifier_folds_fc_softmax_and_loss_into_one_float_head(har) -> None:
    scheme = _scheme("har_adapt_fp32cls")
    selection = tg.select(har, scheme)
    head = tg.fold_classifier(har, scheme, selection)
    cls = selection.classifier
    assert isinstance(head, FloatClassifierHead) and head.classifier is cls
    # It runs at the FC in place of both steps, and the int8 schedule ends below the FC.
    assert head.steps == (cls.fc_step, cls.softmax_step) and head.covers_from == cls.fc_step
    assert head.loss_input == cls.input_tensor and head.output == har.output
    # Its state rules: two float32 members after the int8 copies, offsets from layout_state.
    decls, checks = head.state_members()
    assert decls == [f"  float cw{cls.fc_step}[{cls.units * cls.depth}];",
                     f"  float cb{cls.fc_step}[{cls.units}];"] and len(checks) == 2
    # The later passes return new heads; the folded one and the selection stay as they were.
    schedule = tg.schedule_backward(har, scheme, selection)
    assert schedule.head.classifier is schedule.classifier and schedule.classifier.need_dx
    assert not head.classifier.need_dx and not cls.need_dx
    state = tg.layout_state(selection.trained, schedule.classifier)
    placed = schedule.head.with_state(state.classifier)
    assert placed.classifier is state.classifier and schedule.head.classifier.weight_offset == -1
    program = tg.build_training(har, scheme)
    assert program.head.classifier is program.classifier
    assert program.head.report() == placed.report()  # need_dx and offsets of the placed head
    with pytest.raises(dataclasses.FrozenInstanceError):
        head.cls = None  # type: ignore[misc]


def test_fold_broadcasts_gives_the_means_gradient_to_the_conv_and_plans_no_broadcast(
        har) -> None:
    """HAR ends CONV_2D (RELU) -> MEAN over time -> FC: the MEAN's backward step goes, the conv
    reads the MEAN's output gradient at every pixel (scale / 16) under its own mask, and no
    buffer holds the 16 x 32 broadcast; the input schedule is left as it was."""
    scheme = _scheme("har_adapt")
    schedule = tg.schedule_backward(har, scheme, tg.select(har, scheme))
    folded = tg.fold_broadcasts(har, schedule)
    mean = next(s for s, p in enumerate(har.ops) if p.op.opcode == "MEAN")
    conv = mean - 1
    assert har.ops[conv].op.opcode == "CONV_2D" and har.ops[mean].inputs[0] == har.ops[conv].output
    steps = [b.step for b in schedule.backward]
    assert mean in steps and all(b.broadcast is None for b in schedule.backward)  # unchanged
    assert [b.step for b in folded.backward] == [s for s in steps if s != mean]
    by_step = {b.step: b for b in folded.backward}
    reduce = har.ops[mean].params.reduce
    assert reduce == int(har.graph.tensors[har.ops[conv].output].shape[1])  # the time axis
    assert by_step[conv].broadcast == tg.Broadcast(mean, har.ops[mean].output, reduce)
    assert by_step[conv].dy_tensor == har.ops[mean].output
    assert by_step[conv].mask == schedule.masks[conv] and folded.masks == schedule.masks
    originals = {b.step: b for b in schedule.backward}
    assert all(b == originals[b.step] for b in folded.backward if b.step != conv)
    planner = tg.plan_memory(har, folded, [p.variant for p in har.ops])
    placements = planner.placements()
    assert tg.grad_buffer(har.ops[conv].output) not in placements
    n = len(har.ops)
    at = n + 1 + [b.step for b in folded.backward].index(conv)
    assert placements[tg.grad_buffer(har.ops[mean].output)].last == at
    # The fold needs a rule that reads dy through a view: without one nothing changes.
    plain = [dataclasses.replace(b, rule=dataclasses.replace(b.rule, broadcast_dy=False))
             for b in schedule.backward]
    unfolded = dataclasses.replace(schedule, backward=plain)
    assert tg.fold_broadcasts(har, unfolded) is unfolded
