"""Build report (report.json) and the fit check that stops a build before compiling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .compiler import CompiledModel
from .graph import ModelError


@dataclass(frozen=True)
class BoardLimits:
    name: str
    ram_bytes: int
    flash_bytes: int
    # SRAM the runtime needs besides the arena (stack, protocol state, .data/.bss of the runtime)
    # and flash besides the weights (code). Measured from linked firmware; see README.
    ram_reserve: int = 16 * 1024
    flash_reserve: int = 64 * 1024


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
            "output": p.output} for i, p in enumerate(model.ops)]
    return {
        "model": g.name,
        "sha256": g.sha256.hex(),
        "board": limits.name,
        "arena_bytes": model.arena_bytes,
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
    }


def _io(model: CompiledModel, tid: int) -> dict[str, Any]:
    t = model.graph.tensors[tid]
    return {"shape": list(t.shape), "dtype": t.dtype, "scale": t.scale,
            "zero_point": t.zero_point, "offset": model.offset_of(tid)}


def check_fits(model: CompiledModel, weight_bytes: int, limits: BoardLimits) -> None:
    """Raise ModelError saying by how much and what dominates when the model cannot fit."""
    ram_budget = limits.ram_bytes - limits.ram_reserve
    if model.arena_bytes > ram_budget:
        step = model.planner.peak_step()
        live = sorted(model.planner.live_at(step), key=lambda p: -p.size)[:4]
        names = ", ".join(
            f"{model.graph.tensors[int(p.name[1:])].name or p.name} ({p.size} B)" for p in live)
        op = model.ops[step].op if 0 <= step < len(model.ops) else None
        where = f"operator {op.index} ({op.opcode})" if op else "the model edges"
        raise ModelError(
            f"{model.graph.name} does not fit {limits.name}: the tensor arena needs "
            f"{model.arena_bytes} B but {ram_budget} B of {limits.ram_bytes} B SRAM are "
            f"available ({model.arena_bytes - ram_budget} B over). Peak at {where}, "
            f"dominated by: {names}. Use a smaller input resolution or width."
        )
    flash_budget = limits.flash_bytes - limits.flash_reserve
    if weight_bytes > flash_budget:
        raise ModelError(
            f"{model.graph.name} does not fit {limits.name}: weights need {weight_bytes} B of "
            f"flash but {flash_budget} B are available ({weight_bytes - flash_budget} B over)."
        )
