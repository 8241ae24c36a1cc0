"""The training step's part of report.json and its fit check against the training budget.

Buffers are named in user terms (tensor names, layers with their scheme indices), so a refusal
says which layer's gradient, mask or trainable copy dominates the step.
"""

from __future__ import annotations

from typing import Any

from ..compile.report import (
    BoardLimits,
    RamNeed,
    aligned,
    forward_over_budget,
    inference_ram,
    layer_label,
    short_name,
)
from ..frontend.graph import ModelError
from .codegen import backward_macs, step_backward_macs
from .training_graph import TrainProgram


def training_ram(program: TrainProgram, limits: BoardLimits) -> RamNeed:
    # train/codegen.py: g_arena, g_state (alignas 16), g_grad_scale[one float per gradient
    # buffer] and g_train {float lr; uint32_t prng}.
    grads = sum(1 for p in program.planner.placements().values() if p.name.startswith("g"))
    state = (aligned(max(program.state_bytes, 4)) + aligned(4 * max(grads, 1))
             + aligned(8))
    return RamNeed(arena=aligned(max(program.arena_bytes, 16)), state=state,
                   runtime=limits.runtime_ram, stack=limits.stack_bytes)


def training_report(program: TrainProgram) -> dict[str, Any]:
    """The training step's memory and compute, for report.json and the benchmark."""
    placements = program.planner.placements().values()
    saved = sum(p.size for p in placements if p.name.startswith("t") and p.last >= len(
        program.model.ops) + 1)
    masks = sum(p.size for p in placements if p.name.startswith("m"))
    grads = max((sum(p.size for p in program.planner.live_at(s) if p.name.startswith("g"))
                 for s in range(-1, len(program.model.ops) + len(program.backward) + 2)),
                default=0)
    trained = []
    for step, t in sorted(program.trained.items()):
        p = program.model.ops[step]
        trained.append({"step": step, "operator": p.op.index, "opcode": p.op.opcode,
                        "output_channels_trained": t.slot.n_train,
                        "bias_trained": t.slot.bias is not None,
                        "weight_offset": t.weight_offset, "bias_offset": t.bias_offset,
                        "weight_bytes": 0 if t.slot.weights is None else t.slot.weights.nbytes,
                        "weight_shape": None if t.slot.weights is None
                        else list(t.slot.weights.shape)})
    return {
        "scheme": program.scheme.name,
        "classifier": program.scheme.classifier,
        "loss": program.scheme.loss,
        "qas": program.scheme.qas,
        "rounding": program.scheme.rounding,
        "lr": program.scheme.lr,
        "arena_bytes": program.arena_bytes,
        "memory_plan": program.planner.choice(),
        "peak": _peak(program),
        "state_bytes": program.state_bytes,
        "peak_sram_bytes": program.arena_bytes + program.state_bytes,
        "saved_activation_bytes": saved,
        "mask_bytes": masks,
        "peak_gradient_bytes": grads,
        "backward_macs": backward_macs(program),
        "backward_steps": [{"step": b.step, "opcode": b.op.op.opcode,
                            "input_gradients": b.need_dx, "mask": b.mask is not None,
                            # forward step of a MEAN whose broadcast this step reads, or null
                            "broadcast_of": None if b.broadcast is None else b.broadcast.step,
                            "kernel": b.variant.name,
                            "macs": step_backward_macs(program, b)}
                           for b in program.backward],
        # The forward kernels of the training build: a trained layer's variant must serve its
        # SRAM weights, so it may differ from the inference build's ("operators").
        "forward_kernels": [v.name for v in program.variants],
        "trained": trained,
        # The fp32 classifier's place in the state block (loss_head.py), null without one.
        "float_classifier": program.head.report(),
    }


def _peak(program: TrainProgram) -> dict[str, Any]:
    """The step of the training plan whose live buffers add up to the most bytes, named the way
    the fit check names them, and the biggest of them."""
    names = _Names(program)
    step = program.planner.peak_step()
    live = sorted(program.planner.live_at(step), key=lambda p: -p.size)
    return {"step": step, "where": names.step(step), "live_bytes": sum(p.size for p in live),
            "largest": [{"buffer": names.buffer(p), "bytes": p.size} for p in live[:5]]}


def check_training_fits(program: TrainProgram, weight_bytes: int, limits: BoardLimits) -> None:
    """A training step must fit the training budget (256 KB of the F746's 320 KB by default).

    When the forward pass alone is over budget no scheme can help, and the message says so;
    otherwise it names what dominates the step by layer and tensor."""
    need = training_ram(program, limits)
    budget = min(limits.train_ram_bytes, limits.ram_bytes)
    if need.total <= budget:
        pass
    elif (forward := inference_ram(program.model, limits)).total > budget:
        raise ModelError(forward_over_budget(program.model, limits, budget))
    else:
        names = _Names(program)
        step = program.planner.peak_step()
        live = sorted(program.planner.live_at(step), key=lambda p: -p.size)[:3]
        held = ", ".join(f"{p.size} B {names.buffer(p)}" for p in live)
        raise ModelError(
            f"{program.model.graph.name} with scheme {program.scheme.name} does not fit: the "
            f"training step needs {need.total} B of SRAM ({need.breakdown()}) but the budget is "
            f"{budget} B ({need.total - budget} B over); the forward pass alone needs "
            f"{forward.total} B. At the peak ({names.step(step)}) the "
            f"arena holds {held}; {names.state()}. Train fewer or later layers, or lower the "
            "channel ratio (`mcutrain layers MODEL.tflite` lists what each layer costs).")
    flash_budget = limits.flash_bytes - limits.flash_reserve
    if weight_bytes > flash_budget:
        raise ModelError(f"{program.model.graph.name}: weights need {weight_bytes} B of flash, "
                         f"{weight_bytes - flash_budget} B more than available")


class _Names:
    """Arena buffers and steps of a training program in user terms: tensor names, layers with
    their scheme indices (positive/negative), what each buffer is for."""

    def __init__(self, program: TrainProgram) -> None:
        self.program = program
        self.model = program.model
        self.producer = {p.output: i for i, p in enumerate(self.model.ops)}
        self.forward = len(self.model.ops)
        self.gradients = program.gradient_buffers()
        self.masks = program.mask_buffers()

    def op(self, step: int) -> str:
        return layer_label(self.model, step)

    def step(self, step: int) -> str:
        if step < 0:
            return "the model input"
        if step < self.forward:
            return f"forward {self.op(step)}"
        if step == self.forward:
            return "the loss"
        return f"backward of {self.op(self.program.backward[step - self.forward - 1].step)}"

    def tensor(self, tid: int) -> str:
        name = f"'{short_name(self.model.graph.tensors[tid].name)}'"
        made = self.producer.get(tid)
        if made is not None:
            return f"{name} (output of {self.op(made)})"
        readers = [i for i, p in enumerate(self.model.ops) if tid in p.inputs]
        return f"{name} (input of {self.op(readers[0])})" if readers else name

    def buffer(self, p) -> str:
        name = p.name
        if name in self.gradients:
            return f"gradient of {self.tensor(self.gradients[name])}"
        if name in self.masks:
            return f"ReLU mask of {self.op(self.masks[name])}"
        if name.startswith("scratch_b"):
            return f"kernel scratch of the backward of {self.op(int(name[9:]))}"
        if name.startswith("scratch"):
            return f"kernel scratch of {self.op(int(name[7:]))}"
        if name.startswith("cls"):
            return "fp32 classifier work buffer"
        tid = next((t for t, b in sorted(self.model.buffer_of.items()) if b == name), None)
        if tid is None:
            return name
        kept = " kept for backward" if p.last > self.forward else ""
        return f"activation {self.tensor(tid)}{kept}"

    def state(self) -> str:
        parts = []
        for step, t in self.program.trained.items():
            if t.slot.weights is not None:
                parts.append((t.slot.weights.nbytes, f"{self.op(step)} weights"))
            if t.slot.bias is not None:
                parts.append((t.slot.bias.nbytes, f"{self.op(step)} bias"))
        parts += self.program.head.state_parts()
        parts.sort(key=lambda x: -x[0])
        if not parts:
            return "no trainable copies"
        more = f" and {len(parts) - 3} more" if len(parts) > 3 else ""
        return ("trainable copies: " + ", ".join(f"{what} {size} B" for size, what in parts[:3])
                + more)
