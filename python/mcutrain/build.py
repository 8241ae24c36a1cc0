"""What the PlatformIO pre-build hook calls: model (and optional training scheme) in, generated
sources and report out.

Generation is skipped when neither the model, the scheme nor the compiler changed since the last
build (a stamp file records their hashes), and files are only rewritten when their text
changes, so an unchanged model recompiles nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compile.codegen import generate_model_source
from .compile.compiler import compile_model
from .compile.firmware_size import DEFAULT_STACK_BYTES, firmware_size, symbol_sizes
from .compile.report import BoardLimits, RamNeed, build_report, check_fits, inference_ram
from .compile.stack_usage import (
    EXCEPTION_FRAME_BYTES,
    CallGraph,
    StackBound,
    handler_levels,
    margin_bytes,
    read_address_taken,
    read_callgraph_info,
    read_library_frames,
    worst_case,
)
from .frontend.graph import ModelError
from .ops.cxx import write_if_changed
from .train.report import check_training_fits, training_ram, training_report
from .train.scheme import load_scheme

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BuildResult:
    generated_dir: Path
    report_path: Path
    regenerated: bool


def compiler_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def generate_for_build(model_path: Path, build_dir: Path, limits: BoardLimits,
                       scheme_path: Path | None = None, pull_input: bool = False,
                       kernels: str = "optimized", profile: bool = False) -> BuildResult:
    """Generate the model (or training) source and report.json into build_dir, unless they are
    up to date. `pull_input`: the firmware pulls its input from the host row by row
    (custom_input = rows; docs/memory.md). `kernels`: "optimized" (the Cortex-M7 variants where
    they serve) or "reference" (custom_kernels; docs/kernel_variants.md). `profile`: the
    build keeps each step's counter delta for the PROFILE request (custom_profile; a training
    build also its loss and backward steps)."""
    generated = build_dir / "generated"
    report_path = build_dir / "report.json"
    stamp_path = build_dir / "mcutrain.stamp"
    data = model_path.read_bytes()
    scheme_data = scheme_path.read_bytes() if scheme_path else b""
    stamp = json.dumps({"model": hashlib.sha256(data).hexdigest(),
                        "scheme": hashlib.sha256(scheme_data).hexdigest(),
                        "compiler": compiler_fingerprint(), "limits": repr(limits),
                        "pull_input": pull_input, "kernels": kernels, "profile": profile})
    if (stamp_path.exists() and stamp_path.read_text() == stamp
            and (generated / "model.cc").exists() and report_path.exists()):
        return BuildResult(generated, report_path, regenerated=False)
    model = compile_model(data, pull_input=pull_input, kernels=kernels)
    model.graph.name = model_path.stem
    if scheme_path is None:
        source, weight_bytes = generate_model_source(model, profile)
        check_fits(model, weight_bytes, limits)
        report = build_report(model, weight_bytes, limits)
        report["sram_plan"] = sram_plan(inference_ram(model, limits), limits.ram_bytes)
    else:
        from .train.codegen import generate_training_source
        from .train.training_graph import build_training

        program = build_training(model, load_scheme(scheme_path))
        source, weight_bytes = generate_training_source(program, profile)
        check_training_fits(program, weight_bytes, limits)
        report = build_report(model, weight_bytes, limits)
        report["training"] = training_report(program)
        report["sram_plan"] = sram_plan(training_ram(program, limits),
                                        min(limits.train_ram_bytes, limits.ram_bytes))
    write_if_changed(generated / "model.cc", source)
    write_if_changed(report_path, json.dumps(report, indent=2) + "\n")
    stamp_path.write_text(stamp)
    return BuildResult(generated, report_path, regenerated=True)


def sram_plan(need: RamNeed, budget: int) -> dict[str, int]:
    """The pre-build's SRAM sums, for the link step's check once the stack is known."""
    return {"arena_bytes": need.arena, "state_bytes": need.state, "runtime_bytes": need.runtime,
            "stack_bytes": need.stack, "budget_bytes": budget}


# -- the link step: stack reserve from compiled stack use, SRAM breakdown of the linked image --

STACK_OPTS = "stack_size.opts"  # gcc @file with the link's __stack_size__ (written before link)
STACK_REPORT = "stack.json"
@dataclass(frozen=True)
class StackReserve:
    reserved: int
    source: str  # "compiled" (static bound + margin), "explicit" (build flags) or "fixed"
    bound: StackBound

    def describe(self) -> str:
        b = self.bound
        if b.worst_case is None:
            return (f"stack {self.reserved} B ({self.source}): no static bound, because "
                    f"{b.reason}")
        how = {"compiled": "reserved", "explicit": "reserved by --defsym=__stack_size__",
               "fixed": "reserved"}[self.source]
        return (f"stack {self.reserved} B {how}: compiled worst case {b.worst_case} B "
                f"(deepest chain {' -> '.join(_thread_chain(b.chain))}, plus exception "
                f"frames and handlers) + margin "
                f"{margin_bytes(b.worst_case)} B")


def _thread_chain(chain: tuple[str, ...]) -> list[str]:
    """The main-loop part of the deepest chain, from main on, for a one-line summary."""
    thread = list(chain[:chain.index("<exception frame>")] if "<exception frame>" in chain
                  else chain)
    return thread[thread.index("main"):] if "main" in thread else thread


def stack_opts_flag(build_dir: Path) -> str:
    """The link flag that reads the stack reservation from a file, so the link step can set it
    after compiling without changing the link command (SCons would then relink every time).
    Until the first link step the file holds 0: only the link step's own reservation links."""
    path = build_dir / STACK_OPTS
    if not path.exists():
        build_dir.mkdir(parents=True, exist_ok=True)
        path.write_text("-Wl,--defsym=__stack_size__=0\n")
    return f"@{path}"


def bound_stack(objects: list[Path], elf: Path, objdump: str = "arm-none-eabi-objdump"
                ) -> StackBound:
    """The static worst-case stack of the linked firmware made of `objects` (see stack_usage)."""
    graph = CallGraph()
    missing = [o.name for o in objects if not o.with_suffix(".ci").is_file()]
    if missing:
        return StackBound(None, reason=f"no call graph (.ci) for {', '.join(missing[:3])}: "
                          "compile with -fstack-usage -fcallgraph-info=su")
    read_callgraph_info([o.with_suffix(".ci") for o in objects], graph)
    graph.address_taken = read_address_taken(objects, set(graph.frames), objdump)
    read_library_frames(elf, graph, objdump)
    return worst_case(graph, "Reset_Handler", handler_levels(graph))


def choose_stack(bound: StackBound, explicit: int | None) -> StackReserve:
    """The reservation: the user's if given (refused below the static bound), else the bound
    plus margin, else (no bound obtainable) the linker script's fixed default."""
    if explicit is not None:
        if bound.worst_case is not None and explicit < bound.worst_case:
            raise ModelError(f"the stack reserved by --defsym=__stack_size__={explicit} is below "
                             f"the firmware's compiled worst case of {bound.worst_case} B "
                             f"({' -> '.join(bound.chain[-3:])}): reserve at least "
                             f"{bound.reserve()} B or drop the flag to size it automatically")
        return StackReserve(explicit, "explicit", bound)
    reserve = bound.reserve()
    if reserve is None:
        return StackReserve(DEFAULT_STACK_BYTES, "fixed", bound)
    return StackReserve(reserve, "compiled", bound)


def check_stack_fits(report: dict[str, Any], stack: StackReserve) -> None:
    """The pre-build fit check again with the stack now known (it counted the stack as 0 when
    the link step sizes it): refuse with the breakdown when the total exceeds the budget."""
    plan = report["sram_plan"]
    total = plan["arena_bytes"] + plan["state_bytes"] + plan["runtime_bytes"] + stack.reserved
    if total > plan["budget_bytes"]:
        state = f" + trainable state {plan['state_bytes']}" if plan["state_bytes"] else ""
        raise ModelError(f"{report['model']} does not fit {report['board']}: it needs {total} B "
                         f"of SRAM (arena {plan['arena_bytes']}{state} + runtime "
                         f"{plan['runtime_bytes']} + stack {stack.reserved}) but the budget is "
                         f"{plan['budget_bytes']} B ({total - plan['budget_bytes']} B over)")


def link_stack(build_dir: Path, objects: list[Path], elf: Path, explicit: int | None
               ) -> tuple[StackReserve, bool]:
    """Size the stack for the image just linked; True when the image must be linked again
    because its reservation differs from the one the link used."""
    stack = choose_stack(bound_stack(objects, elf), explicit)
    report = json.loads((build_dir / "report.json").read_text())
    check_stack_fits(report, stack)
    (build_dir / STACK_REPORT).write_text(json.dumps(stack_record(stack), indent=2) + "\n")
    if explicit is not None:
        return stack, False
    opts = build_dir / STACK_OPTS
    flag = f"-Wl,--defsym=__stack_size__={stack.reserved}\n"
    relink = opts.read_text() != flag
    opts.write_text(flag)
    return stack, relink


def stack_record(stack: StackReserve) -> dict[str, Any]:
    b = stack.bound
    return {"reserved_bytes": stack.reserved, "source": stack.source,
            "compiled_worst_case_bytes": b.worst_case,
            "margin_bytes": None if b.worst_case is None else margin_bytes(b.worst_case),
            "exception_frame_bytes": EXCEPTION_FRAME_BYTES, "deepest_chain": list(b.chain),
            "no_bound_reason": b.reason or None}


def sram_breakdown(elf: Path, report: dict[str, Any]) -> dict[str, int]:
    """What the linker placed in SRAM, by purpose, from the image's own symbols and sections:
    arena (holding the input tensor), trainable state, stack; runtime is everything else
    (runtime, board and library statics, alignment gaps), so the parts sum to the linked RAM."""
    size = firmware_size(elf)
    symbols = symbol_sizes(elf)
    arena = symbols.get("g_arena", 0)
    state = sum(symbols.get(n, 0) for n in ("g_state", "g_grad_scale", "g_train"))
    stack = size.sections.get(".stack", 0)
    inp = report["input"]
    return {"input_bytes": inp.get("sram_bytes", _prod(inp["shape"])),
            "input_pulled": int(bool(inp.get("pulled"))), "input_offset_in_arena": inp["offset"],
            "arena_bytes": arena, "state_bytes": state, "stack_bytes": stack,
            "runtime_bytes": size.linked_ram_bytes - arena - state - stack,
            "total_bytes": size.linked_ram_bytes}


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def describe_sram(sram: dict[str, int]) -> str:
    state = f" + trainable state {sram['state_bytes']}" if sram["state_bytes"] else ""
    held = "window of the pulled input" if sram.get("input_pulled") else "input"
    return (f"SRAM {sram['total_bytes']} B linked = arena {sram['arena_bytes']} ({held} "
            f"{sram['input_bytes']} inside){state} + stack {sram['stack_bytes']} + runtime "
            f"statics {sram['runtime_bytes']}")
