"""The arena planner: exact offsets on a known case, and no overlap on random cases."""

from __future__ import annotations

import numpy as np
import pytest

from mcutrain.compile.memory_plan import ArenaPlanner


def test_chain_reuses_memory_exactly() -> None:
    # a -> b -> c -> d, each alive for two consecutive steps: two slots suffice.
    p = ArenaPlanner(alignment=16)
    p.add_buffer("a", 1000, -1, 0)
    p.add_buffer("b", 2000, 0, 1)
    p.add_buffer("c", 500, 1, 2)
    p.add_buffer("d", 100, 2, 3)
    assert p.offset_of("b") == 0
    assert p.offset_of("a") == 2000
    assert p.offset_of("c") == 2000
    assert p.offset_of("d") == 0
    assert p.arena_bytes() == 3008


def test_residual_keeps_skip_tensor_alive() -> None:
    p = ArenaPlanner(alignment=4)
    p.add_buffer("x", 400, -1, 2)  # used again by the ADD at step 2
    p.add_buffer("h1", 400, 0, 1)
    p.add_buffer("h2", 400, 1, 2)
    p.add_buffer("y", 400, 2, 3)
    offsets = {n: p.offset_of(n) for n in ("x", "h1", "h2", "y")}
    assert len({offsets["x"], offsets["h1"], offsets["h2"]}) == 3
    assert p.arena_bytes() == 1200


@pytest.mark.parametrize("seed", range(20))
def test_random_plans_never_overlap_and_stay_near_lower_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = ArenaPlanner(alignment=16)
    for i in range(30):
        first = int(rng.integers(-1, 20))
        p.add_buffer(f"b{i}", int(rng.integers(1, 5000)), first, first + int(rng.integers(0, 6)))
    placed = list(p.placements().values())
    for i, a in enumerate(placed):
        assert a.offset % 16 == 0
        for b in placed[i + 1:]:
            if a.lives_with(b.first, b.last):
                assert a.end <= b.offset or b.end <= a.offset, (a, b)
    lower_bound = max(sum(x.size for x in p.live_at(s)) for s in range(-1, 26))
    assert lower_bound <= p.arena_bytes() <= 2 * lower_bound


def test_rejects_bad_requests() -> None:
    p = ArenaPlanner()
    with pytest.raises(ValueError):
        p.add_buffer("x", 0, 0, 1)
    p.add_buffer("x", 10, 0, 1)
    with pytest.raises(ValueError, match="twice"):
        p.add_buffer("x", 10, 0, 1)


def test_compiled_buffers_map_back_to_the_tensor_they_were_made_for() -> None:
    """Every arena buffer of a compiled model knows its tensor without parsing its name: a
    RESHAPE's output shares its input's buffer, which stays the input's, sized by it."""
    from pathlib import Path

    from mcutrain.compile.compiler import compile_model

    model = compile_model(Path(__file__).resolve().parents[1] / "models"
                          / "third_party" / "tflm_micro_speech_int8.tflite")
    reshapes = [p for p in model.ops if p.opdef.aliases_input]
    assert reshapes
    assert set(model.tensor_of) == set(model.planner.placements())
    for buffer, tid in model.tensor_of.items():
        assert model.buffer_of[tid] == buffer
        assert model.planner.placements()[buffer].size >= model.graph.tensors[tid].nbytes
    for p in reshapes:
        assert model.tensor_of[model.buffer_of[p.output]] == p.inputs[0]
