"""Build report (report.json) and the fit check that stops a build before compiling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .compiler import CompiledModel
from .firmware_size import DEFAULT_STACK_BYTES
from .graph import ModelError
from .scheme import PARAMETRIC

if TYPE_CHECKING:
    from .training_graph import TrainProgram


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
    # The stack the linker reserves at the top of RAM (__stack_size__; prebuild.py reads it from
    # the build's link flags) and the runtime's own static SRAM besides the model's buffers.
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
        return f"arena {self.arena}{state} + runtime {self.runtime} + stack {self.stack}"


def _aligned(size: int) -> int:
    return -(-size // _ALIGN) * _ALIGN


def inference_ram(model: CompiledModel, limits: BoardLimits) -> RamNeed:
    # codegen.py: alignas(16) int8_t g_arena[max(arena, 16)]
    return RamNeed(arena=_aligned(max(model.arena_bytes, 16)), state=0,
                   runtime=limits.runtime_ram, stack=limits.stack_bytes)


def training_ram(program: TrainProgram, limits: BoardLimits) -> RamNeed:
    # train_codegen.py: g_arena, g_state (alignas 16), g_grad_scale[one float per gradient
    # buffer] and g_train {float lr; uint32_t prng}.
    grads = sum(1 for p in program.planner.placements().values() if p.name.startswith("g"))
    state = (_aligned(max(program.state_bytes, 4)) + _aligned(4 * max(grads, 1))
             + _aligned(8))
    return RamNeed(arena=_aligned(max(program.arena_bytes, 16)), state=state,
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
    need = inference_ram(model, limits)
    if need.total > limits.ram_bytes:
        step = model.planner.peak_step()
        live = sorted(model.planner.live_at(step), key=lambda p: -p.size)[:4]
        names = ", ".join(f"'{short_name(_buffer_tensor(model, p.name).name)}' ({p.size} B)"
                          for p in live)
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
    from .train_codegen import backward_macs

    return {
        "scheme": program.scheme.name,
        "classifier": program.scheme.classifier,
        "loss": program.scheme.loss,
        "qas": program.scheme.qas,
        "rounding": program.scheme.rounding,
        "lr": program.scheme.lr,
        "arena_bytes": program.arena_bytes,
        "state_bytes": program.state_bytes,
        "peak_sram_bytes": program.arena_bytes + program.state_bytes,
        "saved_activation_bytes": saved,
        "mask_bytes": masks,
        "peak_gradient_bytes": grads,
        "backward_macs": backward_macs(program),
        "backward_steps": [{"step": b.step, "opcode": b.op.op.opcode,
                            "input_gradients": b.need_dx, "mask": b.mask is not None}
                           for b in program.backward],
        "trained": trained,
        "float_classifier": _float_classifier(program),
    }


def _float_classifier(program: TrainProgram) -> dict[str, Any] | None:
    """The fp32 classifier's place in the state block (float32, row-major [units, depth])."""
    cls = program.classifier
    if cls is None:
        return None
    return {"steps": cls.steps, "operator": cls.operator,
            "units": cls.units, "depth": cls.depth, "dtype": "float32",
            "weight_offset": cls.weight_offset, "weight_bytes": cls.weight_bytes,
            "weight_shape": [cls.units, cls.depth], "bias_offset": cls.bias_offset,
            "bias_bytes": cls.bias_bytes, "input_gradient": cls.need_dx}


def check_training_fits(program: TrainProgram, weight_bytes: int, limits: BoardLimits) -> None:
    """A training step must fit the training budget (256 KB of the F746's 320 KB by default).

    When the forward pass alone is over budget no scheme can help, and the message says so;
    otherwise it names what dominates the step by layer and tensor."""
    need = training_ram(program, limits)
    budget = min(limits.train_ram_bytes, limits.ram_bytes)
    if need.total <= budget:
        pass
    elif (forward := inference_ram(program.model, limits)).total > budget:
        raise ModelError(_forward_over_budget(program.model, limits, budget))
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


def _forward_over_budget(model: CompiledModel, limits: BoardLimits, budget: int) -> str:
    forward = inference_ram(model, limits)
    step = model.planner.peak_step()
    live = sorted(model.planner.live_at(step), key=lambda p: -p.size)[:2]
    tensors = " and ".join(f"'{short_name(_buffer_tensor(model, p.name).name)}' ({p.size} B)"
                           for p in live)
    where = layer_label(model, step) if 0 <= step < len(model.ops) else "the model edges"
    return (f"{model.graph.name}: no training scheme can fit the {budget} B training budget: "
            f"the forward pass alone needs {forward.total} B ({forward.breakdown()}), "
            f"{forward.total - budget} B over before any gradient, saved activation or trainable "
            f"copy; its peak at {where} holds {tensors}. What helps: a smaller input resolution "
            "or width (activations scale with both), a larger custom_train_ram if the "
            f"application can spare SRAM (the board has {limits.ram_bytes} B), or patch-based "
            "execution of the first layers (not supported yet).")


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
    steps = [i for i, p in enumerate(model.ops) if p.op.opcode in PARAMETRIC]
    opcode = model.ops[step].op.opcode
    if step in steps:
        pos = steps.index(step)
        return f"layer {pos}/{pos - len(steps)} {opcode}"
    return f"operator {step} {opcode}"


def _buffer_tensor(model: CompiledModel, buffer: str):
    owner = next((t for t, b in sorted(model.buffer_of.items()) if b == buffer), None)
    return model.graph.tensors[owner if owner is not None else int(buffer[1:])]


class _Names:
    """Arena buffers and steps of a training program in user terms: tensor names, layers with
    their scheme indices (positive/negative), what each buffer is for."""

    def __init__(self, program: TrainProgram) -> None:
        self.program = program
        self.model = program.model
        self.producer = {p.output: i for i, p in enumerate(self.model.ops)}
        self.forward = len(self.model.ops)

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
        if name.startswith("g"):
            return f"gradient of {self.tensor(int(name[1:].split('_')[0]))}"
        if name.startswith("m"):
            return f"ReLU mask of {self.op(int(name[1:]))}"
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
        cls = self.program.classifier
        if cls is not None:
            parts.append((cls.weight_bytes + cls.bias_bytes, "the fp32 classifier"))
        parts.sort(key=lambda x: -x[0])
        if not parts:
            return "no trainable copies"
        more = f" and {len(parts) - 3} more" if len(parts) > 3 else ""
        return ("trainable copies: " + ", ".join(f"{what} {size} B" for size, what in parts[:3])
                + more)
