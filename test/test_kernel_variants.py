"""The kernel-variant seam (ops/base.py, docs/kernel_variants.md): prepare picks each step's
kernels from the variant table, the planners place the chosen variant's scratch for that step
only, and the emitted call names the variant's function and gets the scratch pointer.

The seam tests start from a table holding only the reference variant and register fake
variants (never compiled): what is checked is the plan and the generated text, which is all a
real variant adds. The real Cortex-M7 variants' arithmetic is checked in
test/kernels/test_m7_kernels.py and on the emulated board.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mcutrain.compile.codegen import generate_model_source
from mcutrain.compile.compiler import compile_model, scratch_buffer
from mcutrain.compile.memory_plan import ArenaPlanner, Placement
from mcutrain.compile.report import BoardLimits, check_fits
from mcutrain.frontend.graph import ModelError
from mcutrain.ops.base import REF, VARIANTS, KernelVariant, backward_key
from mcutrain.train.codegen import generate_training_source
from mcutrain.train.report import check_training_fits
from mcutrain.train.scheme import parse_scheme
from mcutrain.train.training_graph import build_training

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "models" / "har_cnn1d_int8.tflite"
MODELS = [*sorted((ROOT / "models").glob("*.tflite")),
          *sorted((ROOT / "models" / "test").glob("*.tflite"))]


def fake_scratch(params) -> int:
    """A shape-dependent size that is not a multiple of the arena alignment."""
    return 4 * int(params.filter.shape[0]) + 8


FAKE = KernelVariant("fake", "mt::fake", header="kernels/fake_conv.h", scratch_bytes=fake_scratch,
                     serves=lambda params, n_train: n_train == 0)
FAKE_BACKWARD = KernelVariant("fakebw", "mt::fakebw", scratch_bytes=lambda params: 100)


def conv_steps(ops) -> list[int]:
    return [i for i, p in enumerate(ops) if p.op.opcode == "CONV_2D"]


def assert_alone_at_its_step(planner: ArenaPlanner, scratch: Placement) -> None:
    assert scratch.first == scratch.last
    for other in planner.live_at(scratch.first):
        if other.name != scratch.name:
            assert other.end <= scratch.offset or scratch.end <= other.offset, (scratch, other)


@pytest.fixture(autouse=True)
def reference_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here starts with the reference as the only variant of every operator."""
    for key in list(VARIANTS):
        monkeypatch.delitem(VARIANTS, key)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_reference_variants_need_no_scratch(path: Path) -> None:
    model = compile_model(path)
    assert all(p.variant is REF for p in model.ops)
    assert not [n for n in model.planner.placements() if n.startswith("scratch")]


def test_planner_places_the_chosen_variants_scratch_for_its_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plain = compile_model(HAR)
    monkeypatch.setitem(VARIANTS, "CONV_2D", [FAKE])
    model = compile_model(HAR)
    steps = conv_steps(model.ops)
    assert steps and [p.variant for p in model.ops] == [
        FAKE if i in steps else REF for i in range(len(model.ops))]
    placements = model.planner.placements()
    assert sorted(n for n in placements if n.startswith("scratch")) == sorted(
        scratch_buffer(s) for s in steps)
    source, _ = generate_model_source(model)
    assert '#include "kernels/fake_conv.h"' in source
    for step in steps:
        scratch = placements[scratch_buffer(step)]
        assert scratch.size == fake_scratch(model.ops[step].params)
        assert scratch.first == step and scratch.offset % 16 == 0
        assert_alone_at_its_step(model.planner, scratch)
        out = model.offset_of(model.ops[step].output)
        call = (rf"mt::fake::conv2d_s8\(kParams, \(g_arena \+ \d+\), \w+, \w+, "
                rf"\(g_arena \+ {out}\), \(g_arena \+ {scratch.offset}\), {scratch.size}\);")
        assert len(re.findall(call, source)) == 1, call
    assert "mt::ref::conv2d_s8" not in source and "mt::ref::fully_connected_s8" in source
    assert model.arena_bytes >= plain.arena_bytes


def test_training_plans_forward_and_backward_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(VARIANTS, "CONV_2D", [FAKE])
    monkeypatch.setitem(VARIANTS, backward_key("CONV_2D"), [FAKE_BACKWARD])
    model = compile_model(HAR)
    program = build_training(model, parse_scheme({"preset": "last-k", "layers": 2}))
    steps = conv_steps(model.ops)
    trained = [s for s in steps if s in program.trained and program.trained[s].slot.n_train]
    frozen = [s for s in steps if s not in trained]
    assert trained and frozen  # the premise: the fake serves only the frozen convs
    assert [program.variants[s] for s in steps] == [REF if s in trained else FAKE for s in steps]
    source, _ = generate_training_source(program)
    placements = program.planner.placements()
    for step in frozen:
        scratch = placements[scratch_buffer(step)]
        assert scratch.first == step and scratch.size == fake_scratch(model.ops[step].params)
        assert_alone_at_its_step(program.planner, scratch)
        assert f", (g_arena + {scratch.offset}), {scratch.size});" in source
    for step in trained:
        assert scratch_buffer(step) not in placements
    conv_backward = [b for b in program.backward if b.op.op.opcode == "CONV_2D"]
    assert conv_backward and all(b.variant is FAKE_BACKWARD for b in conv_backward)
    for b in conv_backward:
        scratch = placements[scratch_buffer(b.step, backward=True)]
        assert scratch.size == 100 and scratch.first > len(model.ops)
        assert_alone_at_its_step(program.planner, scratch)
        args = rf"\(g_arena \+ {scratch.offset}\), 100\);"
        assert re.search(rf"mt::fakebw::conv2d_weight_update\([^;]*{args}", source)
    assert "mt::ref::conv2d_weight_update" not in source


def roomy_sizes(params) -> tuple[int, ...]:
    """Larger than any arena first, then one a gap can hold."""
    return (1 << 20, fake_scratch(params) + 64)


FAKE_ROOMY = dataclasses.replace(FAKE, roomy_scratch=roomy_sizes)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_a_forward_kernel_gets_its_roomy_scratch_only_where_the_arena_has_room(
        monkeypatch: pytest.MonkeyPatch, training: bool) -> None:
    def build(variant: KernelVariant):
        monkeypatch.setitem(VARIANTS, "CONV_2D", [variant])
        model = compile_model(HAR)
        if not training:
            return model, model.planner, generate_model_source(model)[0]
        program = build_training(model, parse_scheme({"preset": "last-k", "layers": 2}))
        return model, program.planner, generate_training_source(program)[0]

    _, plain, _ = build(FAKE)
    model, planner, source = build(FAKE_ROOMY)
    assert planner.arena_bytes() == plain.arena_bytes()
    widened = 0
    frozen = [s for s in conv_steps(model.ops) if scratch_buffer(s) in planner.placements()]
    assert frozen
    for step in frozen:
        scratch = planner.placements()[scratch_buffer(step)]
        base = fake_scratch(model.ops[step].params)
        assert scratch.size in (base, base + 64)
        widened += scratch.size > base
        assert_alone_at_its_step(planner, scratch)
        assert f", (g_arena + {scratch.offset}), {scratch.size});" in source
    assert widened  # the premise: HAR's arena has a gap at some convolution


def test_a_negative_scratch_size_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = KernelVariant("broken", "mt::broken", scratch_bytes=lambda params: -1)
    monkeypatch.setitem(VARIANTS, "CONV_2D", [broken])
    with pytest.raises(ValueError, match="kernel variant broken: scratch_bytes gave -1"):
        compile_model(HAR)


def test_a_too_big_scratch_is_named_in_the_fit_message(monkeypatch: pytest.MonkeyPatch) -> None:
    huge = KernelVariant("huge", "mt::huge", scratch_bytes=lambda params: 400 * 1024)
    monkeypatch.setitem(VARIANTS, "CONV_2D", [huge])
    model = compile_model(HAR)
    with pytest.raises(ModelError) as err:
        check_fits(model, 0, BoardLimits("f746", 320 * 1024, 1024 * 1024))
    message = str(err.value)
    assert re.search(r"kernel scratch of layer \d+/-\d+ CONV_2D \(409600 B\)", message), message
    assert "scratch0" not in message and "\n" not in message


def test_a_too_big_backward_scratch_is_named_in_the_training_fit_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    huge = KernelVariant("huge", "mt::huge", scratch_bytes=lambda params: 260 * 1024)
    monkeypatch.setitem(VARIANTS, backward_key("CONV_2D"), [huge])
    program = build_training(compile_model(HAR), parse_scheme({"preset": "full"}, name="s"))
    with pytest.raises(ModelError) as err:
        check_training_fits(program, 0, BoardLimits("f746", 320 * 1024, 1024 * 1024))
    message = str(err.value)
    assert re.search(r"266240 B kernel scratch of the backward of layer \d+/-\d+ CONV_2D",
                     message), message
    assert "scratch_b" not in message and "\n" not in message
