"""Code generation for a training build: the forward pass reads trained parameters from SRAM,
then model_train_step() runs loss and backward as straight-line code from the TrainProgram.

Layout of what this file emits, besides the inference parts (see codegen.py):
- g_state: one SRAM block with every trainable copy (offsets in report.json), filled from flash
  by model_train_reset() at boot and on RESET;
- g_grad_scale[]: one float scale per gradient buffer; gradient data lives in the arena;
- g_train: learning rate and PRNG state.
The program's loss head (loss_head.py) emits its own parts: the loss, and with an fp32
classifier the float step replacing the final FULLY_CONNECTED + SOFTMAX in the forward pass, its
backward (input gradient, then the float update) first in model_train_step's backward section,
its reset and its members of the state block.
"""

from __future__ import annotations

import dataclasses

from ..compile.codegen import (
    NO_PROFILE_COUNTERS,
    PROFILE_CLEAR,
    PROFILE_COUNTERS,
    model_desc,
    profiled,
    source_name,
    step_context,
    stream_block,
    unprofiled,
)
from ..compile.compiler import scratch_buffer
from ..compile.streaming import pulls_input
from ..ops.base import GradRef, TrainBinding, TrainEmit, is_parametric, trainable
from ..ops.cxx import ConstPool, c_float, indent
from . import grad_rules
from .training_graph import (
    BackwardStep,
    TrainProgram,
    grad_buffer,
    gradient_contributions,
    mask_buffer,
)


class _Emitter:
    def __init__(self, program: TrainProgram, profile: bool = False) -> None:
        self.program = program
        self.pool = ConstPool()
        self.scales: dict[str, int] = {}
        # custom_profile: forward step s counts into g_profile[s], the loss (with the loss
        # head's backward) into [len(ops)], backward step i into [len(ops) + 1 + i].
        self.timed = profiled if profile else unprofiled

    def arena(self, buffer: str) -> str:
        return f"(g_arena + {self.program.offset(buffer)})"

    def act(self, tensor_id: int) -> str:
        return self.arena(self.program.activation_buffer(tensor_id))

    def grad(self, tensor_id: int, contribution: int | None = None) -> GradRef:
        name = grad_buffer(tensor_id, contribution)
        index = self.scales.setdefault(name, len(self.scales))
        count = self.program.model.graph.tensors[tensor_id].num_elements
        return GradRef(buffer=self.arena(name), scale=f"g_grad_scale[{index}]", count=count)

    def binding(self, step: int) -> TrainBinding | None:
        t = self.program.trained.get(step)
        if t is None:
            return None
        # Plain member addresses are address constants, so params referring to them stay
        # constant-initialized (in flash, no guard variables).
        weights = f"g_state.w{step}" if t.weight_offset >= 0 else None
        bias = f"g_state.b{step}" if t.bias_offset >= 0 else None
        return TrainBinding(n_train=t.slot.n_train, weight_symbol=weights, bias_symbol=bias)

    def params(self, step: int):
        p = self.program.model.ops[step]
        binding = self.binding(step)
        return p.params if binding is None else dataclasses.replace(p.params, train=binding)

    def train_emit(self, step: int) -> TrainEmit | None:
        t = self.program.trained.get(step)
        if t is None:
            return None
        slot = t.slot
        return TrainEmit(
            binding=self.binding(step),
            w_coef=self.pool.const_array(f"w_coef{step}", slot.w_coef) if slot.n_train else None,
            bias_coef=(self.pool.const_array(f"bias_coef{step}", slot.bias_coef)
                       if slot.bias is not None else None),
            lr="g_train.lr", prng="&g_train.prng",
            rounding=("mt::Rounding::kStochastic" if slot.stochastic
                      else "mt::Rounding::kNearest"))

    # ---- sections ----

    def forward(self) -> str:
        lines = []
        head = self.program.head
        streamed = {step: s for s in self.program.streams for step in s.steps}
        for step, p in enumerate(self.program.model.ops):
            if step in streamed:
                if step == streamed[step].first:
                    lines.append(stream_block(self.program.model, streamed[step], self.pool,
                                              self.program.planner, self.act,
                                              self.program.variants, self.params, self.timed))
                continue
            if step in head.steps:  # folded into the head, which runs at the first of them
                if step == head.steps[0]:
                    lines.append(self._timed(step, head.emit_forward(self)))
                continue
            ins = [self.act(t) for t in p.inputs]
            ctx = step_context(self.pool, self.program.variants[step], self.program.planner,
                               scratch_buffer(step))
            body = [p.opdef.emit(self.params(step), ctx, ins, self.act(p.output)).strip()]
            lines.append(f"  // [{step}] {p.op.opcode} (operator {p.op.index})")
            if step in self.program.masks:
                lo, hi = self.program.masks[step]
                count = self.program.model.graph.tensors[p.output].num_elements
                body.append(grad_rules.emit_mask_pack(
                    self.act(p.output), count, lo, hi, self.arena(mask_buffer(step)),
                    optimized=self.program.model.kernels == "optimized"))
            if any(body):
                lines.append(self._timed(step, [b for b in body if b]))
        return "\n".join(lines)

    def _timed(self, counter: int, code: list[str]) -> str:
        """Lines of code (any indentation) as one block counted into g_profile[counter] when
        profiling, indented for a function body."""
        return indent(self.timed(counter, "\n".join(c.strip() for c in code)), 2)

    def loss_counter(self) -> int:
        return len(self.program.model.ops)

    def loss(self) -> str:
        return self.timed(self.loss_counter(), self.program.head.emit_loss(self).strip())

    def backward(self) -> str:
        program = self.program
        contributions = gradient_contributions(program)
        seen: dict[int, int] = {}
        head = program.head.emit_backward(self)  # the head's backward runs first
        lines = [self._timed(self.loss_counter(), head)] if head else []
        for i, b in enumerate(program.backward):
            p = b.op
            lines.append(f"  // backward [{b.step}] {p.op.opcode} (operator {p.op.index})")
            body = []
            dy = self.grad(b.dy_tensor)
            if len(contributions.get(b.dy_tensor, [])) == 2:
                body.append(grad_rules.emit_grad_sum(
                    self.grad(b.dy_tensor, 0), self.grad(b.dy_tensor, 1), dy))
            if b.broadcast is not None:
                dy = self.broadcast_dy(b, dy)
            elif b.mask is not None:
                body.append(grad_rules.emit_mask_apply(dy, self.arena(mask_buffer(b.step))))
            dxs = []
            for t, need in zip(p.inputs, b.need_dx, strict=True):
                if not need:
                    dxs.append(None)
                    continue
                k = seen.get(t, 0)
                seen[t] = k + 1
                dxs.append(self.grad(t, k) if len(contributions[t]) == 2 else self.grad(t))
            saved = [self.act(t) if keep else None
                     for t, keep in zip(p.inputs, b.saved, strict=True)]
            ctx = step_context(self.pool, b.variant, program.planner,
                               scratch_buffer(b.step, backward=True))
            body.append(b.rule.emit(self.params(b.step), ctx, saved, dy, dxs,
                                    self.train_emit(b.step)))
            lines.append(self._timed(self.loss_counter() + 1 + i, body))
        return "\n".join(lines)

    def profile_counters(self) -> int:
        """g_profile's length: forward steps, the loss, backward steps."""
        return len(self.program.model.ops) + 1 + len(self.program.backward)

    def broadcast_dy(self, b: BackwardStep, source: GradRef) -> GradRef:
        """The folded MEAN's backward as a view over b's output (grad_rules.broadcast_view)."""
        channels = int(self.program.model.graph.tensors[b.op.output].shape[-1])
        bits = None if b.mask is None else self.arena(mask_buffer(b.step))
        return grad_rules.broadcast_view(source, b.broadcast.count, channels, bits)

    def reset(self) -> str:
        lines = []
        for step, t in sorted(self.program.trained.items()):
            slot = t.slot
            if slot.weights is not None:
                sym = self.pool.const_array(f"init_w{step}", slot.weights)
                lines.append(f"  std::memcpy(g_state.w{step}, {sym}, {slot.weights.nbytes});")
            if slot.bias is not None:
                sym = self.pool.const_array(f"init_b{step}", slot.bias)
                lines.append(f"  std::memcpy(g_state.b{step}, {sym}, {slot.bias.nbytes});")
        lines.extend(self.program.head.emit_reset(self))
        return "\n".join(lines)

    def state_struct(self) -> str:
        """The state block as a struct whose member offsets are the report's offsets."""
        members, checks = [], []
        for step, t in sorted(self.program.trained.items()):
            slot = t.slot
            if slot.weights is not None:
                members.append(f"  int8_t w{step}[{(slot.weights.nbytes + 3) // 4 * 4}];")
                checks.append(f"static_assert(offsetof(State, w{step}) == {t.weight_offset});")
            if slot.bias is not None:
                members.append(f"  int32_t b{step}[{slot.bias.size}];")
                checks.append(f"static_assert(offsetof(State, b{step}) == {t.bias_offset});")
        head_members, head_checks = self.program.head.state_members()
        members += head_members
        checks += head_checks
        if not members:
            members.append("  int32_t unused;")
        return ("struct State {\n" + "\n".join(members) + "\n};\n" + "\n".join(checks)
                + f"\nstatic_assert(sizeof(State) == {max(self.program.state_bytes, 4)});")


def step_backward_macs(program: TrainProgram, b: BackwardStep) -> int:
    """Multiply-accumulates of one backward step: its input gradient plus weight gradients
    (0 for an operator without parameters)."""
    p = b.op
    if not is_parametric(p.op.opcode):
        return 0
    out_c = program.model.graph.tensors[p.output].shape[-1]
    slot = program.trained.get(b.step)
    n_train = slot.slot.n_train if slot is not None else 0
    return trainable(p.op.opcode).backward_macs(p.macs, out_c, any(b.need_dx), n_train,
                                                input_grad_gathers(program, b))


def input_grad_gathers(program: TrainProgram, b: BackwardStep) -> int:
    """How many times the step's input-gradient kernel computes each sum: once where the plan
    gave it one of its roomy scratch sizes (every one stages the sums), else twice."""
    roomy = b.roomy_scratch_bytes
    placed = program.planner.placements().get(scratch_buffer(b.step, backward=True))
    return 1 if roomy and placed is not None and placed.size >= min(roomy) else 2


def backward_macs(program: TrainProgram) -> int:
    """Multiply-accumulates of the backward pass: input gradients plus weight gradients."""
    return (sum(step_backward_macs(program, b) for b in program.backward)
            + program.head.backward_macs())


def generate_training_source(program: TrainProgram, profile: bool = False) -> tuple[str, int]:
    """The training build's C++ source and its flash constant bytes. With `profile` the
    PROFILE request answers the last INFER's or TRAIN's counter delta per forward step, for the
    loss, and per backward step (report.json training.profile_counters names them)."""
    e = _Emitter(program, profile)
    forward, loss, backward, reset = e.forward(), e.loss(), e.backward(), e.reset()
    state_struct = e.state_struct()
    model = program.model
    g = model.graph
    variants = [*program.variants, *(b.variant for b in program.backward)]
    headers = sorted({p.opdef.header for p in model.ops if p.opdef.header}
                     | {v.header for v in variants if v.header}
                     | {"kernels/train_math.h", *grad_rules.HEADERS}
                     | ({"bsp/board.h"} if profile else set())
                     | set(program.head.headers)
                     | ({"runtime/row_window.h"} if program.streams else set()))
    ce = program.scheme.loss == "cross_entropy"
    out = g.tensors[model.output]
    label = ("  const uint32_t label_class = static_cast<uint32_t>(label[0]) | "
             "(static_cast<uint32_t>(label[1]) << 8);\n"
             f"  if (label_class >= {program.num_classes}u) return Status::kBadLabel;"
             if ce else
             f"  float targets[{out.num_elements}];\n"
             f"  std::memcpy(targets, label, sizeof(targets));\n"
             f"  for (float v : targets) if (!std::isfinite(v)) return Status::kNotFinite;")
    arena_bytes = max(program.arena_bytes, 16)
    text = _TEMPLATE.format(
        name=source_name(model),
        model_desc=model_desc(model, arena_bytes, e.pool.nbytes),
        includes="\n".join(f'#include "{h}"' for h in headers),
        constants=e.pool.definitions(),
        arena_bytes=arena_bytes,
        state_bytes=max(program.state_bytes, 4),
        grad_count=max(len(e.scales), 1),
        input_ptr=("nullptr" if pulls_input(program.streams) else
                   f"g_arena + {e.program.offset(program.activation_buffer(model.input))}"),
        output_offset=e.program.offset(program.activation_buffer(model.output)),
        loss_kind="LossKind::kCrossEntropy" if ce else "LossKind::kMeanSquaredError",
        classes=program.num_classes,
        label_bytes=2 if ce else 4 * out.num_elements,
        lr=c_float(program.scheme.lr),
        seed=(program.scheme.seed & 0xFFFFFFFF) or 1,
        backward_macs=backward_macs(program),
        forward=forward, label=label, loss=indent(loss.strip(), 2), backward=backward,
        reset=reset, state_struct=state_struct,
        clear_profile=PROFILE_CLEAR if profile else "",
        profile=(PROFILE_COUNTERS.format(steps=e.profile_counters()) if profile
                 else NO_PROFILE_COUNTERS),
    )
    return text, e.pool.nbytes


_TEMPLATE = """\
// Generated by mcutrain from {name}.tflite with a training scheme. Do not edit.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "runtime/model.h"
{includes}

namespace mt {{
namespace {{

// Forward activations, saved activations, masks and gradients, planned over the whole step.
alignas(16) int8_t g_arena[{arena_bytes}];
// Trainable copies (layout in report.json), filled from flash by model_train_reset().
{state_struct}
alignas(16) State g_state;
float g_grad_scale[{grad_count}];
struct {{
  float lr;
  uint32_t prng;
}} g_train;

{constants}

}}  // namespace

{profile}
namespace {{

// kOk, or why a row of a pulled input did not arrive (then nothing has been updated).
Status Forward() {{
{forward}
  return Status::kOk;
}}

}}  // namespace

{model_desc}

const TrainDesc kTrain = {{true, {loss_kind}, {classes}, {label_bytes}u, {lr}, {seed}u,
                          {state_bytes}u, {backward_macs}ull}};

int8_t* model_input() {{ return {input_ptr}; }}
const int8_t* model_output() {{ return g_arena + {output_offset}; }}

Status model_invoke() {{
{clear_profile}
  return Forward();
}}

Status model_train_step(const uint8_t* label, bool update, TrainResult* result) {{
{label}
{clear_profile}
  const Status forward = Forward();
  if (forward != Status::kOk) return forward;
  result->prediction = 0;
{loss}
  if (!update) return Status::kOk;
{backward}
  return Status::kOk;
}}

void model_train_reset() {{
{reset}
  g_train.lr = {lr};
  g_train.prng = {seed}u;
}}

Status model_set_lr(float lr) {{
  if (!std::isfinite(lr) || lr < 0.0f) return Status::kNotFinite;
  g_train.lr = lr;
  return Status::kOk;
}}

float model_lr() {{ return g_train.lr; }}

const uint8_t* model_train_state() {{ return reinterpret_cast<const uint8_t*>(&g_state); }}

namespace {{
// The trainable copies must hold the flashed weights before the first request.
struct ResetAtBoot {{
  ResetAtBoot() {{ model_train_reset(); }}
}} g_reset_at_boot;
}}  // namespace

}}  // namespace mt
"""
