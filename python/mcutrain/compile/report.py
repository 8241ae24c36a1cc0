"""Build report (report.json) and the fit check that stops a build before compiling.

The SRAM sums here are the linker's (RamNeed); train.report adds the training step's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..frontend.graph import ModelError
from ..ops.base import is_parametric
from .compiler import CompiledModel
from .firmware_size import DEFAULT_STACK_BYTES
from .streaming import Stream, row_bytes

# SRAM of everything linked besides the model's own buffers: .data and .bss of the runtime, the
# board support and newlib, and the alignment gaps around them. Measured from linked firmware
# (test_build.py checks the pre-check's sum against the linker's for both boards): 560 B on the
# emulated board with each object rounded up to 16 B; the rest is headroom, so that a build the
# pre-check accepts always links.
RUNTIME_STATIC_RAM = 1024
_ALIGN = 16  # alignas(16) of the generated arena and state


@dataclass(frozen=True)
class BoardLimits:
    name: str
    ram_bytes: int
    flash_bytes: int
    # The stack the linker reserves at the top of RAM when the build flags set __stack_size__
    # (prebuild.py reads it from them); 0 when the link step sizes it from compiled stack use
    # (build.py), which repeats the fit check with it. Then the runtime's own static SRAM.
    stack_bytes: int = DEFAULT_STACK_BYTES
    runtime_ram: int = RUNTIME_STATIC_RAM
    # Flash besides the weights (code). Measured from linked firmware; see README.
    flash_reserve: int = 64 * 1024
    # The training step's SRAM budget: the paper's 256 KB, leaving the rest of the chip's 320 KB
    # to the application.
    train_ram_bytes: int = 256 * 1024


@dataclass(frozen=True)
class RamNeed:
    """Static SRAM as the linker lays it out: the generated model's buffers, the runtime's
    statics and the stack. Each model buffer counts rounded up to the 16-byte alignment, an
    upper bound of what the linker places whatever their order."""

    arena: int
    state: int  # trainable copies + gradient scales + learning rate and PRNG (training only)
    runtime: int
    stack: int

    @property
    def total(self) -> int:
        return self.arena + self.state + self.runtime + self.stack

    def breakdown(self) -> str:
        state = f" + trainable state {self.state}" if self.state else ""
        # 0: the link step sizes the stack from compiled stack use and checks the total again.
        stack = f"stack {self.stack}" if self.stack else "stack (sized at link)"
        return f"arena {self.arena}{state} + runtime {self.runtime} + {stack}"


def aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def inference_ram(model: CompiledModel, limits: BoardLimits) -> RamNeed:
    # codegen.py: alignas(16) int8_t g_arena[max(arena, 16)]
    return RamNeed(arena=aligned(max(model.arena_bytes, 16)), state=0,
                   runtime=limits.runtime_ram, stack=limits.stack_bytes)


def build_report(model: CompiledModel, weight_bytes: int, limits: BoardLimits) -> dict[str, Any]:
    g = model.graph
    tensors = []
    for tid, buffer in sorted(model.buffer_of.items()):
        p = model.planner.placements()[buffer]
        t = g.tensors[tid]
        tensors.append({"tensor": tid, "name": t.name, "shape": list(t.shape), "bytes": t.nbytes,
                        "offset": p.offset, "first_step": p.first, "last_step": p.last,
                        "buffer": buffer})
    ops = [{"step": i, "operator": p.op.index, "opcode": p.op.opcode, "macs": p.macs,
            "output": p.output, "kernel": p.variant.name} for i, p in enumerate(model.ops)]
    return {
        "model": g.name,
        "sha256": g.sha256.hex(),
        "board": limits.name,
        "arena_bytes": model.arena_bytes,
        "kernels": model.kernels,
        "memory_plan": model.planner.choice(),
        "peak": _peak(model),
        "weight_bytes": weight_bytes,
        "macs": model.macs,
        "ram_limit_bytes": limits.ram_bytes,
        "flash_limit_bytes": limits.flash_bytes,
        "float_input": g.float_input,
        "float_output": g.float_output,
        "input": _io(model, model.input),
        "output": _io(model, model.output),
        "operators": ops,
        "tensors": tensors,
        "arena_layer_by_layer_bytes": model.whole_arena_bytes,
        "streams": [_stream(model, s) for s in model.streams],
    }


def _peak(model: CompiledModel) -> dict[str, Any]:
    """The step whose live buffers add up to the most bytes, and the biggest of them."""
    step = model.planner.peak_step()
    live = sorted(model.planner.live_at(step), key=lambda p: -p.size)
    where = layer_label(model, step) if 0 <= step < len(model.ops) else "the model edges"
    return {"step": step, "where": where, "live_bytes": sum(p.size for p in live),
            "largest": [{"buffer": _buffer_label(model, p.name), "bytes": p.size}
                        for p in live[:5]]}


def _stream(model: CompiledModel, stream: Stream) -> dict[str, Any]:
    """What report.json says of a row-streamed chain: its steps and every windowed tensor."""
    g = model.graph
    windows = [{"tensor": tid, "name": g.tensors[tid].name, "rows": rows,
                "of_rows": g.tensors[tid].shape[1], "bytes": rows * row_bytes(g, tid),
                "whole_bytes": g.tensors[tid].nbytes} for tid, rows in stream.windows.items()]
    # MACs the bands execute, from the firmware's own row table: a row is computed once, so
    # this equals the steps' layer-by-layer MACs (patches would recompute their halos).
    executed = sum(model.ops[s].macs * stream.rows[-1][k] // g.tensors[model.ops[s].output].shape[1]
                   for k, s in enumerate(stream.steps))
    return {"first_step": stream.first, "last_step": stream.last,
            "operators": [model.ops[s].op.index for s in stream.steps],
            "iterations": len(stream.rows), "windows": windows,
            "pulls_input": stream.pulled is not None,
            "macs": sum(model.ops[s].macs for s in stream.steps), "executed_macs": executed}


def arena_summary(report: dict[str, Any]) -> str:
    """One line of the build output from a report.json: the arena, what streaming saved, and
    where the peak is (the training step's when it trains)."""
    streams = report.get("streams", [])
    plan = "layer by layer"
    if streams:
        steps = ", ".join(f"{s['first_step']}..{s['last_step']}" for s in streams)
        plan = (f"steps {steps} row-streamed (layer by layer: "
                f"{report['arena_layer_by_layer_bytes']} B)")
    part = report.get("training", report)
    peak = part["peak"]
    top = peak["largest"][0] if peak["largest"] else None
    held = f", largest {top['buffer']} {top['bytes']} B" if top else ""
    return (f"arena {part['arena_bytes']} B, {plan}; peak at {peak['where']}: "
            f"{peak['live_bytes']} B live{held}")


def _io(model: CompiledModel, tid: int) -> dict[str, Any]:
    t = model.graph.tensors[tid]
    pulled = any(s.pulled == tid for s in model.streams)
    return {"shape": list(t.shape), "dtype": t.dtype, "scale": t.scale,
            "zero_point": t.zero_point, "offset": model.offset_of(tid),
            # SRAM it takes: the whole tensor, or the window of rows a pulled input needs
            "sram_bytes": model.planner.placements()[model.buffer_of[tid]].size,
            "pulled": pulled}


def check_fits(model: CompiledModel, weight_bytes: int, limits: BoardLimits) -> None:
    """Raise ModelError saying by how much and what dominates when the model cannot fit."""
    need = inference_ram(model, limits)
    if need.total > limits.ram_bytes:
        step = model.planner.peak_step()
        live = sorted(model.planner.live_at(step), key=lambda p: -p.size)[:4]
        names = ", ".join(f"{_buffer_label(model, p.name)} ({p.size} B)" for p in live)
        op = model.ops[step].op if 0 <= step < len(model.ops) else None
        where = f"operator {op.index} ({op.opcode})" if op else "the model edges"
        raise ModelError(
            f"{model.graph.name} does not fit {limits.name}: it needs {need.total} B of SRAM "
            f"({need.breakdown()}) but the board has {limits.ram_bytes} B "
            f"({need.total - limits.ram_bytes} B over). Peak at {where}, "
            f"dominated by: {names}. Use a smaller input resolution or width."
        )
    flash_budget = limits.flash_bytes - limits.flash_reserve
    if weight_bytes > flash_budget:
        raise ModelError(
            f"{model.graph.name} does not fit {limits.name}: weights need {weight_bytes} B of "
            f"flash but {flash_budget} B are available ({weight_bytes - flash_budget} B over)."
        )


def forward_over_budget(model: CompiledModel, limits: BoardLimits, budget: int) -> str:
    forward = inference_ram(model, limits)
    step = model.planner.peak_step()
    live = sorted(model.planner.live_at(step), key=lambda p: -p.size)[:2]
    tensors = " and ".join(f"{_buffer_label(model, p.name)} ({p.size} B)" for p in live)
    where = layer_label(model, step) if 0 <= step < len(model.ops) else "the model edges"
    streamed = ", ".join(f"{s.first}..{s.last}" for s in model.streams)
    streaming = (f"Steps {streamed} already run row-streamed." if streamed else
                 "No chain of its operators can run row-streamed to shrink it (docs/memory.md).")
    return (f"{model.graph.name}: no training scheme can fit the {budget} B training budget: "
            f"the forward pass alone needs {forward.total} B ({forward.breakdown()}), "
            f"{forward.total - budget} B over before any gradient, saved activation or trainable "
            f"copy; its peak at {where} holds {tensors}. What helps: a smaller input resolution "
            "or width (activations scale with both), or a larger custom_train_ram if the "
            f"application can spare SRAM (the board has {limits.ram_bytes} B). {streaming}")


def short_name(name: str, limit: int = 56) -> str:
    """A tensor name as a user recognises it: TFLite joins fused names with ';' and the first
    is the layer's own; a long one loses leading scopes (the model's), keeping the layer."""
    parts = (name.split(";")[0] or "(unnamed)").split("/")
    while len(parts) > 1 and len("/".join(parts)) > limit:
        parts = parts[1:]
        if len(".../" + "/".join(parts)) <= limit:
            return ".../" + "/".join(parts)
    text = "/".join(parts)
    return text if len(text) <= limit else "..." + text[-(limit - 3):]


def layer_label(model: CompiledModel, step: int) -> str:
    """An operator as a scheme addresses it: parametric layers by their index from the front
    and from the back, others by their schedule position."""
    steps = [i for i, p in enumerate(model.ops) if is_parametric(p.op.opcode)]
    opcode = model.ops[step].op.opcode
    if step in steps:
        pos = steps.index(step)
        return f"layer {pos}/{pos - len(steps)} {opcode}"
    return f"operator {step} {opcode}"


def _buffer_label(model: CompiledModel, buffer: str) -> str:
    """A planned buffer as a user recognises it: its tensor's name, or whose kernel scratch."""
    if buffer.startswith("scratch"):
        return f"kernel scratch of {layer_label(model, int(buffer.removeprefix('scratch')))}"
    return f"'{short_name(_buffer_tensor(model, buffer).name)}'"


def _buffer_tensor(model: CompiledModel, buffer: str):
    """The tensor a message names an arena buffer by: the lowest tensor id the buffer holds."""
    return model.graph.tensors[min(t for t, b in model.buffer_of.items() if b == buffer)]
