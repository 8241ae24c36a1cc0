"""The stack reserve is sized from compiled stack use, and report.json's SRAM breakdown is what the
linker linked.

Independent facts: the stack the firmware itself measured on the emulated board (painted at boot,
high-water read over serial after inference, training and evaluation) and the image's sections
as `size -A` lists them (addresses and sizes, not the linker script's symbols)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from firmware_support import build_firmware
from mcutrain.build import StackReserve, check_stack_fits, choose_stack
from mcutrain.compile.firmware_size import DEFAULT_STACK_BYTES
from mcutrain.compile.stack_usage import (
    EXCEPTION_FRAME_BYTES,
    MARGIN_MIN_BYTES,
    CallGraph,
    StackBound,
    worst_case,
)
from mcutrain.frontend.graph import ModelError
from mcutrain.host.device import open_device

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SCHEMES = ROOT / "test" / "fixtures" / "schemes"

# (model, training scheme or None): inference-only and training builds of different shapes.
CASES = [
    ("har_cnn1d_int8", None),
    ("third_party/tflm_micro_speech_int8", None),
    ("har_cnn1d_int8", "sparse_ratios"),
    ("test/residual_dw_f32io", "full_stochastic"),
    ("third_party/tflm_micro_speech_int8", "bias_only"),
]
IDS = [f"{m.split('/')[-1]}-{s or 'infer'}" for m, s in CASES]


def _build(model: str, scheme: str | None) -> tuple[Path, dict]:
    elf = build_firmware(MODELS / f"{model}.tflite",
                         scheme=SCHEMES / f"{scheme}.json" if scheme else None)
    return elf, json.loads((elf.parent / "report.json").read_text())


@pytest.mark.parametrize("model, scheme", CASES, ids=IDS)
def test_measured_stack_stays_within_the_compiled_worst_case(model: str,
                                                             scheme: str | None) -> None:
    elf, report = _build(model, scheme)
    stack = report["stack"]
    assert stack["source"] == "compiled", stack
    assert stack["reserved_bytes"] < DEFAULT_STACK_BYTES
    assert stack["reserved_bytes"] >= stack["compiled_worst_case_bytes"] + MARGIN_MIN_BYTES
    assert "main" in stack["deepest_chain"], stack
    rng = np.random.default_rng(3)
    with open_device(f"qemu:{elf}", timeout=60) as board:
        info = board.info()
        shape = tuple(report["input"]["shape"])
        x = rng.integers(-128, 128, size=shape, dtype=np.int8)
        board.infer(x)
        if scheme:
            label = 0 if info.train.num_classes else np.zeros(
                int(np.prod(report["output"]["shape"])), np.float32)
            for _ in range(2):
                board.train(x, label)
            board.eval(x, label)
        info = board.info()
    # The firmware's own view of its reservation (__stack_size__) is the one the build sized.
    assert info.stack_size_bytes == stack["reserved_bytes"], info
    # The static bound covers what really ran (SysTick interrupts included), margin aside.
    assert 0 < info.stack_used_bytes <= stack["compiled_worst_case_bytes"], (info, stack)


def _size_sections(elf: Path) -> dict[str, tuple[int, int]]:
    out = subprocess.run(["arm-none-eabi-size", "-A", "-d", str(elf)], check=True,
                         capture_output=True, text=True).stdout
    sections = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = (int(parts[1]), int(parts[2]))
    return sections


@pytest.mark.parametrize("model, scheme", CASES, ids=IDS)
def test_sram_breakdown_sums_to_what_the_linker_placed(model: str, scheme: str | None) -> None:
    elf, report = _build(model, scheme)
    sram = report["sram"]
    parts = ("arena_bytes", "state_bytes", "stack_bytes", "runtime_bytes")
    assert sum(sram[p] for p in parts) == sram["total_bytes"], sram
    sec = _size_sections(elf)
    data_addr, (bss_size, bss_addr) = sec[".data"][1], sec[".bss"]
    linked = bss_addr + bss_size - data_addr + sec[".stack"][0]
    assert sram["total_bytes"] == linked, (sram, sec)
    assert sram["stack_bytes"] == sec[".stack"][0] == report["stack"]["reserved_bytes"]
    # The planned buffers as the pre-build counted them; the input tensor inside the arena.
    plan = report["sram_plan"]
    assert sram["arena_bytes"] == plan["arena_bytes"] >= report["arena_bytes"]
    assert (sram["state_bytes"] > 0) == bool(scheme)
    assert sram["state_bytes"] <= plan["state_bytes"]
    assert sram["input_bytes"] == int(np.prod(report["input"]["shape"]))
    assert sram["input_offset_in_arena"] + sram["input_bytes"] <= sram["arena_bytes"]
    assert 0 < sram["runtime_bytes"] <= plan["runtime_bytes"], sram


def test_a_stack_flag_below_the_compiled_worst_case_is_refused(tmp_path: Path) -> None:
    environ = dict(os.environ, PLATFORMIO_BUILD_DIR=str(tmp_path), MCUTRAIN_TRAIN="",
                   MCUTRAIN_MODEL=str(MODELS / "har_cnn1d_int8.tflite"),
                   PLATFORMIO_BUILD_FLAGS="-Wl,--defsym=__stack_size__=64")
    proc = subprocess.run([sys.executable, "-m", "platformio", "run", "-e", "qemu", "-d",
                           str(ROOT)], env=environ, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-2000:]
    errors = [ln for ln in log.splitlines() if ln.startswith("mcutrain: error: ")]
    assert len(errors) == 1 and "__stack_size__=64 is below the firmware's compiled worst " \
        "case" in errors[0], log[-2000:]
    assert not (tmp_path / "qemu" / "firmware.elf").exists(), "kept an under-reserved image"


def _graph(frames: dict[str, int], calls: dict[str, list[str]]) -> CallGraph:
    graph = CallGraph(frames=dict(frames))
    for caller, callees in calls.items():
        for callee in callees:
            graph.add_call(caller, callee)
    return graph


def test_worst_case_is_the_deepest_chain_plus_an_exception_frame_per_level() -> None:
    graph = _graph({"Reset_Handler": 8, "main": 16, "a": 100, "b": 40, "leaf": 24,
                    "SysTick_Handler": 8, "tick": 4, "HardFault_Handler": 16},
                   {"Reset_Handler": ["main"], "main": ["a", "b"], "a": ["leaf"], "b": ["leaf"],
                    "SysTick_Handler": ["tick"]})
    bound = worst_case(graph, "Reset_Handler", [["SysTick_Handler"], ["HardFault_Handler"]])
    assert bound.worst_case == 8 + 16 + 100 + 24 + (EXCEPTION_FRAME_BYTES + 12) + (
        EXCEPTION_FRAME_BYTES + 16)
    assert bound.chain[:4] == ("Reset_Handler", "main", "a", "leaf")


def test_indirect_calls_reach_address_taken_functions_that_do_not_call_back() -> None:
    # main dispatches through a table to `handler`; `handler` replies through a sink pointer
    # that may point at `sink`, and not back at `handler` (that would be recursion).
    graph = _graph({"Reset_Handler": 0, "main": 8, "handler": 64, "put": 16, "sink": 200},
                   {"Reset_Handler": ["main"], "main": ["__indirect_call"],
                    "handler": ["put"], "put": ["__indirect_call"]})
    graph.address_taken = {"handler", "sink"}
    bound = worst_case(graph, "Reset_Handler", [])
    assert bound.worst_case == 8 + 64 + 16 + 200
    assert bound.chain == ("Reset_Handler", "main", "handler", "put", "sink")


@pytest.mark.parametrize("frames, calls, problems, reason", [
    ({"Reset_Handler": 0, "main": 8, "f": 8}, {"Reset_Handler": ["main"], "main": ["f"],
                                               "f": ["main"]}, [], "recursion: main -> f -> main"),
    ({"Reset_Handler": 0, "main": 8}, {"Reset_Handler": ["main"], "main": ["mystery"]}, [],
     "no stack figure for mystery"),
    ({"Reset_Handler": 0, "main": 8}, {}, ["main has a dynamic stack frame GCC cannot bound"],
     "dynamic stack frame"),
])
def test_what_cannot_be_bounded_says_why_and_falls_back_to_the_fixed_reserve(
        frames: dict, calls: dict, problems: list[str], reason: str) -> None:
    graph = _graph(frames, calls)
    graph.problems = problems
    bound = worst_case(graph, "Reset_Handler", [])
    assert bound.worst_case is None and reason in bound.reason, bound
    stack = choose_stack(bound, None)
    assert (stack.reserved, stack.source) == (DEFAULT_STACK_BYTES, "fixed")
    assert reason in stack.describe()


def test_reserve_is_the_bound_plus_margin_and_a_flag_below_it_is_refused() -> None:
    bound = StackBound(4000, ("Reset_Handler", "main"))
    assert choose_stack(bound, None) == StackReserve(4000 + 504, "compiled", bound)
    assert choose_stack(StackBound(100), None).reserved == 100 + MARGIN_MIN_BYTES + 4
    assert choose_stack(bound, 4000).source == "explicit"
    with pytest.raises(ModelError, match="below the firmware's compiled worst case of 4000 B"):
        choose_stack(bound, 3999)


def test_link_step_refuses_when_the_sized_stack_breaks_the_budget() -> None:
    report = {"model": "m", "board": "b", "sram_plan": {
        "arena_bytes": 1000, "state_bytes": 0, "runtime_bytes": 24, "stack_bytes": 0,
        "budget_bytes": 2048}}
    check_stack_fits(report, StackReserve(1024, "compiled", StackBound(700)))
    with pytest.raises(ModelError, match=r"needs 2049 B of SRAM \(arena 1000 \+ runtime 24 \+ "
                                         r"stack 1025\) but the budget is 2048 B \(1 B over\)"):
        check_stack_fits(report, StackReserve(1025, "compiled", StackBound(700)))
