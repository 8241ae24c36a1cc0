"""The training graph: a compiled model plus a scheme becomes one static training step.

Everything is decided here, at compile time (the Tiny Training Engine idea): which tensors need a
gradient (only those upstream of a trained parameter and downstream of nothing frozen-only), which
activations the backward pass must keep (inputs of weight-trained operators and of max pools) and
which only need a 1-bit mask (fused ReLU/ReLU6), the backward schedule with each operator's
parameters updated in place in its own step (so no weight-gradient buffer ever exists), where
every trainable copy sits in the state block, and one arena plan covering forward and backward.
With classifier 'fp32' the final FULLY_CONNECTED -> SOFTMAX (or FULLY_CONNECTED of logits)
becomes a float layer (float_classifier.py): it is left out of the int8 schedule, its loss
gradient feeds the FC's input, its float weights follow the int8 copies in the state block and
its float work buffers (x_real/logits/probabilities, input-gradient scratch) are arena buffers.
The fold pass (fold_classifier) makes the end of the step one synthetic operator, the loss head
(loss_head.py: the int8 loss, or the classifier with its loss), whose rules the walkers call.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace

import numpy as np

from ..compile.compiler import (
    CompiledModel,
    PreparedOp,
    scratch_buffer,
    scratch_size,
    widen_forward_scratch,
)
from ..compile.memory_plan import ArenaPlanner
from ..compile.streaming import Stream, avoiding, pulls_input, spans, window_bytes
from ..frontend.graph import ModelError
from ..ops import load_all, param_train
from ..ops.base import (
    REF,
    BackwardDef,
    KernelVariant,
    TrainSlot,
    backward_key,
    choose_variant,
    gradient_rule,
    is_parametric,
    registered,
    trainable,
)
from ..ops.quant import activation_range
from ..ops.train_math import GRAD_MAX
from . import grad_rules
from .float_classifier import FloatClassifier, plan_float_classifier
from .loss_head import FloatClassifierHead, Int8Loss, LossHead
from .scheme import LayerPlan, Scheme, plan_layers

# Operators whose output a classifier can end in as class logits (no SOFTMAX): cross-entropy
# then computes the softmax itself (docs/training.md, "Loss, classification").
_LOGITS_OPS = ("FULLY_CONNECTED", "CONV_2D", "MEAN", "AVERAGE_POOL_2D")


def _fact(opcode: str, name: str) -> bool:
    """A boolean training fact of an operator's OpDef (ops/base.py), False if unregistered."""
    opdef = registered(opcode)
    return opdef is not None and bool(getattr(opdef, name))


@dataclass(frozen=True)
class TrainedOp:
    """One operator with trained parameters and where they live in the state block."""

    step: int
    plan: LayerPlan
    slot: TrainSlot  # initial values (the flashed weights) and update coefficients
    weight_offset: int  # byte offset in the state block (-1 if weights frozen)
    bias_offset: int  # byte offset in the state block (-1 if bias frozen)


@dataclass(frozen=True)
class Broadcast:
    """A backward step's dy that is never stored: the gradient of tensor `source` (one value
    per channel) at every pixel, scale / count. It is the backward of the spatial MEAN at
    forward step `step`, folded into the step producing the MEAN's input (fold_broadcasts)."""

    step: int  # the MEAN's forward step (it has no backward step of its own)
    source: int  # the MEAN's output tensor, whose gradient the folded step reads
    count: int  # values averaged into each output: dy.scale = source's scale / count


@dataclass(frozen=True)
class BackwardStep:
    step: int  # the operator's position in the forward schedule
    op: PreparedOp
    rule: BackwardDef  # OpDef.gradient: its own rule or the identity (ops.base)
    mask: tuple[int, int] | None  # activation mask bounds applied to dy first
    need_dx: list[bool]  # per dynamic input
    saved: list[bool]  # per dynamic input: kept from the forward pass
    variant: KernelVariant = REF  # the kernels of this backward step
    # dy is a MEAN's output gradient broadcast over this step's output plane, read through a
    # view with the mask applied on the fly: no buffer holds the broadcast.
    broadcast: Broadcast | None = None
    n_train: int = 0  # output channels whose weights this step updates

    @property
    def scratch_bytes(self) -> int:
        """Scratch its kernels need for what it computes (input gradient, weight update)."""
        return scratch_size(self.variant, self.op.params, (any(self.need_dx), self.n_train))

    @property
    def roomy_scratch_bytes(self) -> tuple[int, ...]:
        """Larger scratch sizes with which its kernels run faster, fastest first."""
        return self.variant.roomy_step_scratch_bytes(self.op.params, any(self.need_dx),
                                                     self.n_train)

    @property
    def dy_tensor(self) -> int:
        """The tensor whose gradient buffer this step reads as its dy."""
        return self.op.output if self.broadcast is None else self.broadcast.source


@dataclass(frozen=True)
class TrainProgram:
    """The training step, complete when built: every field is set once by build_training."""

    model: CompiledModel
    scheme: Scheme
    trained: dict[int, TrainedOp]
    backward: list[BackwardStep]  # in execution order (reverse of the forward schedule)
    masks: dict[int, tuple[int, int]]  # forward step -> mask bounds of its output
    grad_tensors: list[int]  # tensors whose gradient is computed, in the order they appear
    loss_input: int  # tensor whose gradient the loss produces
    num_classes: int
    logits_loss: bool  # cross-entropy on the output as logits (no final SOFTMAX)
    state_bytes: int
    planner: ArenaPlanner
    head: LossHead  # the synthetic operator ending the step (fold_classifier)
    classifier: FloatClassifier | None = None  # classifier 'fp32': the float FC + SOFTMAX
    # Per forward step, the kernels the training forward calls: a trained step reads channels
    # from SRAM, so its variant must serve that n_train (see ops.base.KernelVariant.serves).
    variants: list[KernelVariant] = field(default_factory=list)
    # The model's row-streamed chains that the training forward keeps (stream_forward).
    streams: tuple[Stream, ...] = ()

    @property
    def arena_bytes(self) -> int:
        return self.planner.arena_bytes()

    def offset(self, buffer: str) -> int:
        return self.planner.offset_of(buffer)

    def activation_buffer(self, tensor_id: int) -> str:
        return self.model.buffer_of[tensor_id]

    def gradient_buffers(self) -> dict[str, int]:
        """Gradient arena buffer -> the tensor whose gradient (or one fan-out part) it holds."""
        out: dict[str, int] = {}
        for t, made in gradient_contributions(self).items():
            out[grad_buffer(t)] = t
            if len(made) == 2:
                out.update({grad_buffer(t, k): t for k in range(2)})
        return out

    def mask_buffers(self) -> dict[str, int]:
        """Mask arena buffer -> the forward step whose output it masks."""
        return {mask_buffer(step): step for step in self.masks}


@dataclass(frozen=True)
class Selection:
    """Pass 1, select: what trains. Trained operators carry their slots (offsets still -1)."""

    trained: dict[int, TrainedOp]
    classifier: FloatClassifier | None  # classifier 'fp32', before need_dx and offsets
    loss_input: int  # the tensor the loss's gradient is for, in the int8 model
    num_classes: int
    logits_loss: bool


@dataclass(frozen=True)
class Schedule:
    """Pass 2, schedule_backward: the backward steps and the masks they apply."""

    backward: list[BackwardStep]  # in execution order
    masks: dict[int, tuple[int, int]]
    loss_input: int  # with an fp32 classifier, its input (the loss's gradient starts there)
    classifier: FloatClassifier | None  # with need_dx decided
    head: LossHead  # fold_classifier's synthetic operator over that classifier or the int8 loss


@dataclass(frozen=True)
class StateLayout:
    """Pass 3, layout_state: where every trainable copy sits in the state block."""

    trained: dict[int, TrainedOp]
    classifier: FloatClassifier | None
    state_bytes: int


def build_training(model: CompiledModel, scheme: Scheme) -> TrainProgram:
    """Compose the passes; each returns a new frozen value and the program is built once."""
    load_all()
    _import_backward_rules()
    selection = select(model, scheme)
    schedule = fold_broadcasts(model, schedule_backward(model, scheme, selection))
    state = layout_state(selection.trained, schedule.classifier)
    variants = _forward_variants(model, state.trained)
    grads = gradient_tensors(schedule.loss_input, schedule.classifier, schedule.backward)
    streams = stream_forward(model, schedule)
    planner = plan_memory(model, schedule, variants, streams)
    widen_forward_scratch(planner, model.ops, variants)
    widen_scratch(planner, schedule.backward)
    head = schedule.head.with_state(state.classifier)
    return TrainProgram(model=model, scheme=scheme, trained=state.trained,
                        backward=schedule.backward, masks=schedule.masks, grad_tensors=grads,
                        loss_input=schedule.loss_input, num_classes=selection.num_classes,
                        logits_loss=selection.logits_loss, state_bytes=state.state_bytes,
                        planner=planner, head=head, classifier=state.classifier,
                        variants=variants, streams=streams)


def select(model: CompiledModel, scheme: Scheme) -> Selection:
    """Which operators train (plan_layers), their initial slots, and what the loss reads."""
    classifier = plan_float_classifier(model) if scheme.classifier == "fp32" else None
    trained = _trained_ops(model, scheme)
    loss_input, num_classes, logits_loss = _loss(model, scheme)
    return Selection(trained, classifier, loss_input, num_classes, logits_loss)


def schedule_backward(model: CompiledModel, scheme: Scheme, selection: Selection) -> Schedule:
    """The backward steps in execution order: rule, mask, which inputs need a gradient, which
    forward inputs are kept, and the kernel variant of each."""
    ops = model.ops
    trained = selection.trained
    producer = {p.output: i for i, p in enumerate(ops)}
    upstream = _upstream_trained(ops, producer, set(trained))
    backward: list[BackwardStep] = []
    masks: dict[int, tuple[int, int]] = {}
    head = fold_classifier(model, scheme, selection)
    # The head's gradient is that of its input: the int8 schedule runs below what it covers.
    loss_input = head.loss_input
    head = head.with_need_dx(loss_input in producer and upstream[producer[loss_input]])
    for step in reversed(range(head.covers_from)):
        p = ops[step]
        if not upstream[step]:
            continue
        need_dx = [t in producer and upstream[producer[t]] for t in p.inputs]
        rule = gradient_rule(p.op.opcode)
        if rule is None:
            raise ModelError(_no_rule_message(model, scheme, step))
        mask = _mask(model, p)
        if mask is not None:
            masks[step] = mask
        slot = trained[step].slot if step in trained else None
        saved = rule.saves_input(p.params, slot)
        if any(need_dx):
            _check_depth(p, rule)
        n_train = slot.n_train if slot is not None else 0
        variant = choose_variant(backward_key(p.op.opcode), p.params, n_train, model.kernels)
        backward.append(BackwardStep(step, p, rule, mask, need_dx, saved, variant,
                                     n_train=n_train))
    return Schedule(backward, masks, loss_input, head.classifier, head)


def fold_broadcasts(model: CompiledModel, schedule: Schedule) -> Schedule:
    """The broadcast fold: a MEAN over the whole plane (one value per channel) whose input only
    it reads, made by an operator whose rule reads dy through a view (BackwardDef.broadcast_dy),
    loses its backward step; the producer's step reads the MEAN's output gradient at every
    pixel instead (BackwardStep.broadcast), so the broadcast tensor is never stored."""
    readers: dict[int, int] = {}
    for p in model.ops:
        for t in p.inputs:
            readers[t] = readers.get(t, 0) + 1
    by_step = {b.step: b for b in schedule.backward}
    producer = {p.output: i for i, p in enumerate(model.ops)}
    made = _contributions(schedule.loss_input, schedule.classifier, schedule.backward)
    into: dict[int, Broadcast] = {}
    for b in schedule.backward:
        t = b.op.inputs[0]
        target = by_step.get(producer.get(t, -1))
        if (target is not None and target.rule.broadcast_dy and _spatial_mean(model, b)
                and readers[t] == 1 and t != model.output and made.get(t) == [b.step]):
            into[target.step] = Broadcast(b.step, b.op.output, int(b.op.params.reduce))
    if not into:
        return schedule
    folded = {f.step for f in into.values()}
    backward = [replace(b, broadcast=into.get(b.step)) for b in schedule.backward
                if b.step not in folded]
    return replace(schedule, backward=backward)


def _spatial_mean(model: CompiledModel, b: BackwardStep) -> bool:
    """A MEAN whose backward broadcasts one value per channel over everything else: batch 1,
    channels last and kept, every other axis reduced."""
    if b.op.op.opcode != "MEAN" or b.need_dx != [True]:
        return False
    p = b.op.params
    channels = int(model.graph.tensors[b.op.inputs[0]].shape[-1])
    return p.outer == 1 and p.inner == channels and p.reduce * channels == int(
        np.prod(p.input_shape))


def fold_classifier(model: CompiledModel, scheme: Scheme, selection: Selection) -> LossHead:
    """The fold pass: the end of the step as one synthetic operator (loss_head.py). With an
    fp32 classifier (the one place its existence is asked after select) the FC (+ SOFTMAX) and
    the loss fold into a FloatClassifierHead; otherwise the loss on the int8 output is an
    Int8Loss. Cross-entropy after a SOFTMAX covers the SOFTMAX too (its gradient is that of the
    SOFTMAX's input), so no int8 backward step exists for it."""
    out = model.graph.tensors[model.output]
    if selection.classifier is not None:
        return FloatClassifierHead(selection.classifier, model.output, tuple(out.shape))
    n = len(model.ops)
    if selection.logits_loss:
        kind, covers_from = "logits_cross_entropy", n
    elif scheme.loss == "cross_entropy":
        kind, covers_from = "softmax_cross_entropy", n - 1
    else:
        kind, covers_from = "mse", n
    return Int8Loss(kind, model.output, selection.loss_input, out.num_elements, out.scale,
                    out.zero_point, covers_from)


def _import_backward_rules() -> None:
    # Backward rules register on import, like forward OpDefs; grad_rules holds masks and losses.
    importlib.import_module("mcutrain.train.grad_rules")


def _parametric(model: CompiledModel) -> list[tuple[int, str, int]]:
    out = []
    for step, p in enumerate(model.ops):
        if is_parametric(p.op.opcode):
            t = model.graph.tensors[p.output]
            out.append((step, t.name, int(t.shape[-1])))
    return out


def _trained_ops(model: CompiledModel, scheme: Scheme) -> dict[int, TrainedOp]:
    trained = {}
    for plan in plan_layers(scheme, _parametric(model)):
        p = model.ops[plan.step]
        # Trained weights may become any int8: the forward accumulator must stay in int32 then.
        trainable(p.op.opcode).check_accumulator(p.params, p.op, plan.n_train)
        trained[plan.step] = TrainedOp(plan.step, plan, _initial_slot(p, plan, scheme), -1, -1)
    return trained


def _initial_slot(p: PreparedOp, plan: LayerPlan, scheme: Scheme) -> TrainSlot:
    has_bias = getattr(p.params, "bias", None) is not None
    facts = trainable(p.op.opcode)
    weights = facts.trainable_weights(p.params, plan.n_train) if plan.n_train else None
    bias = np.array(p.params.bias, dtype=np.int32) if plan.train_bias and has_bias else None
    w_coef, bias_coef = param_train.coefficients(p.params, plan.n_train, scheme.qas)
    return TrainSlot(n_train=plan.n_train, weights=weights, bias=bias, w_coef=w_coef,
                     bias_coef=bias_coef, stochastic=scheme.rounding == "stochastic")


def _forward_variants(model: CompiledModel, trained: dict[int, TrainedOp]) -> list[KernelVariant]:
    return [choose_variant(p.op.opcode, p.params, trained[step].slot.n_train, model.kernels)
            if step in trained else p.variant for step, p in enumerate(model.ops)]


def layout_state(trained: dict[int, TrainedOp], classifier: FloatClassifier | None
                 ) -> StateLayout:
    """The trained operators and the classifier with their state-block offsets, and its size."""
    offset = 0
    offsets: dict[int, tuple[int, int]] = {}
    for step in sorted(trained):
        t = trained[step]
        weight_offset = bias_offset = -1
        if t.slot.weights is not None:
            weight_offset = offset
            offset += (t.slot.weights.nbytes + 3) // 4 * 4
        if t.slot.bias is not None:
            bias_offset = offset
            offset += t.slot.bias.nbytes
        offsets[step] = weight_offset, bias_offset
    placed = {step: replace(t, weight_offset=offsets[step][0], bias_offset=offsets[step][1])
              for step, t in trained.items()}
    if classifier is not None:  # float32 W_f [units, depth], then b_f [units]; offset is 4-aligned
        weight_offset = offset
        offset += classifier.weight_bytes
        classifier = replace(classifier, weight_offset=weight_offset, bias_offset=offset)
        offset += classifier.bias_bytes
    return StateLayout(placed, classifier, offset)


def _loss(model: CompiledModel, scheme: Scheme) -> tuple[int, int, bool]:
    """(tensor the loss's gradient is for, number of classes, loss on logits)."""
    last = model.ops[-1]
    out = model.graph.tensors[model.output]
    if scheme.loss != "cross_entropy":
        return model.output, 0, False
    if last.op.opcode == "SOFTMAX":
        return last.inputs[0], int(out.shape[-1]), False
    name = model.graph.name
    source = _logits_source(model)
    if source not in _LOGITS_OPS:
        raise ModelError(f"{name}: cross-entropy training needs the model to end in SOFTMAX or in "
                         f"class logits from {', '.join(_LOGITS_OPS)} (it ends in {source}); "
                         "use loss 'mse'")
    classes = int(out.shape[-1]) if out.shape else 1
    if classes < 2 or out.num_elements != classes:
        raise ModelError(f"{name}: cross-entropy on logits needs one row of at least 2 classes "
                         f"(the output has shape {list(out.shape)}); use loss 'mse'")
    return model.output, classes, True


def _logits_source(model: CompiledModel) -> str:
    """The opcode that produces the output, looking through trailing RESHAPE/QUANTIZE."""
    producer = {p.output: p for p in model.ops}
    p = producer[model.output]
    while _fact(p.op.opcode, "pass_through") and p.inputs[0] in producer:
        p = producer[p.inputs[0]]
    return p.op.opcode


def _no_rule_message(model: CompiledModel, scheme: Scheme, step: int) -> str:
    op = model.ops[step].op
    head = f"operator {op.index} ({op.opcode}) has no backward rule yet"
    if op.opcode == "SOFTMAX" and step == len(model.ops) - 1:
        # Only reached with loss 'mse': cross-entropy's gradient starts below the SOFTMAX.
        return (f"{head}, so loss '{scheme.loss}' cannot pass a gradient through the final "
                "SOFTMAX; use loss 'cross_entropy' (its gradient skips the SOFTMAX)")
    if not any(is_parametric(p.op.opcode) for p in model.ops[step + 1:]):
        return f"{head} and no layer after it has parameters; this model cannot train yet"
    return f"{head}; train only layers after it"


def _upstream_trained(ops: list[PreparedOp], producer: dict[int, int],
                      trained: set[int]) -> list[bool]:
    """For each step: does it, or anything feeding it, hold a trained parameter?"""
    flags = []
    for step, p in enumerate(ops):
        flags.append(step in trained or any(t in producer and flags[producer[t]]
                                            for t in p.inputs))
    return flags


def _mask(model: CompiledModel, p: PreparedOp) -> tuple[int, int] | None:
    """The activation mask bounds of an operator's output (grad_rules.mask_bounds, the rule the
    mask kernel tests check), None without a fused activation."""
    if not _fact(p.op.opcode, "fused_activation"):
        return None
    activation = p.op.options.get("activation", "NONE")
    out = model.graph.tensors[p.output]
    lo, hi = activation_range(activation, out.scale, out.zero_point)
    return grad_rules.mask_bounds(activation, lo, hi)


def _check_depth(p: PreparedOp, rule: BackwardDef) -> None:
    """The int32 bound of an input gradient that is computed. Weight and bias gradients need no
    check: they accumulate in int64 (8191 * 255 per product), and an operator whose input needs
    no gradient (the first layer, or one after frozen layers) never forms the sum checked here.
    A weight may be -128 (in flash, or in a trained copy before its first update)."""
    depth = rule.input_grad_depth(p.params)
    if GRAD_MAX * 128 * depth >= 2**31:
        raise ModelError(f"operator {p.op.index} ({p.op.opcode}): its input gradient sums {depth} "
                         "products, which could overflow int32; train only layers after it")


def gradient_tensors(loss_input: int, classifier: FloatClassifier | None,
                     backward: list[BackwardStep]) -> list[int]:
    """Tensors whose gradient is computed, in the order they first appear."""
    order = [loss_input] if _loss_has_gradient(classifier) else []
    for b in backward:
        for t, need in zip(b.op.inputs, b.need_dx, strict=True):
            if need and t not in order:
                order.append(t)
    return order


def grad_buffer(tensor_id: int, contribution: int | None = None) -> str:
    """The gradient of a tensor; with two contributions (fan-out) each has its own buffer and
    the sum goes to the plain name."""
    return f"g{tensor_id}" if contribution is None else f"g{tensor_id}_c{contribution}"


def mask_buffer(step: int) -> str:
    return f"m{step}"


def _loss_has_gradient(classifier: FloatClassifier | None) -> bool:
    """False only when an fp32 classifier is the sole trained part: nothing needs its dx."""
    return classifier is None or classifier.need_dx


def stream_forward(model: CompiledModel, schedule: Schedule) -> tuple[Stream, ...]:
    """The model's row-streamed chains (compile/streaming.py) that the training forward can
    keep: a chain ends before the first step whose tensors the backward reads (its own backward
    step, an activation mask, a step folded into the loss head, a MEAN whose backward is folded
    into its producer's), since those must exist whole."""
    touched = ({b.step for b in schedule.backward} | set(schedule.masks)
               | set(schedule.head.steps)
               | {b.broadcast.step for b in schedule.backward if b.broadcast is not None})
    kept = avoiding(model.graph, model.ops, model.streams, touched)
    if pulls_input(model.streams) and not pulls_input(kept):
        raise ModelError(f"{model.graph.name}: the scheme trains or masks a layer that reads the "
                         "input rows, so the input cannot be pulled row by row; build with "
                         "custom_input = whole")
    return kept


def widen_scratch(planner: ArenaPlanner, backward: list[BackwardStep]) -> None:
    """Gives each backward step the largest of its roomy scratch sizes the planned arena has a
    gap for at that step: faster kernels for no SRAM. Each scratch lives in one step only, so
    the steps do not compete for the room."""
    for b in backward:
        if not b.scratch_bytes:
            continue
        planner.widen_to_first(scratch_buffer(b.step, backward=True), b.roomy_scratch_bytes)


def plan_memory(model: CompiledModel, schedule: Schedule, variants: list[KernelVariant],
                streams: tuple[Stream, ...] = ()) -> ArenaPlanner:
    """Lifetimes over the whole step: forward steps 0..N-1, loss at N, backward after that; a
    row-streamed chain's buffers live through all its steps, and its windows are their size."""
    n = len(model.ops)
    lifetimes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    windows = window_bytes(model.graph, streams)
    forward_span = spans(n, streams)

    def use(name: str, size: int, step: int) -> None:
        span = lifetimes.setdefault(name, [step, step])
        span[0], span[1] = min(span[0], step), max(span[1], step)
        sizes[name] = max(sizes.get(name, 0), size)

    def act(tid: int, step: int) -> None:
        if tid in windows and not 0 <= step < n:
            raise ValueError(f"tensor {tid} is a row window but step {step} needs it whole")
        size = windows.get(tid, model.graph.tensors[tid].nbytes)
        for at in (forward_span[step] if 0 <= step < n else (step,)):
            use(model.buffer_of[tid], size, at)

    if not pulls_input(streams):
        act(model.input, -1)  # written by the host before the first step
    head = schedule.head
    for step, p in enumerate(model.ops):
        if step in head.steps:  # folded into the head, which runs at the first of them
            if step == head.steps[0]:
                head.plan(use, act, step, n)
            continue
        for t in p.inputs:
            act(t, step)
        act(p.output, step)
        size = scratch_size(variants[step], p.params)
        if size:
            for at in forward_span[step]:
                use(scratch_buffer(step), size, at)
    act(model.output, n)  # the loss reads the output
    bstep = {b.step: n + 1 + i for i, b in enumerate(schedule.backward)}
    for step in schedule.masks:
        count = model.graph.tensors[model.ops[step].output].num_elements
        use(mask_buffer(step), (count + 7) // 8, step)
        use(mask_buffer(step), (count + 7) // 8, bstep[step])
    for b in schedule.backward:
        for t, keep in zip(b.op.inputs, b.saved, strict=True):
            if keep:
                act(t, bstep[b.step])
        size = b.scratch_bytes
        if size:
            use(scratch_buffer(b.step, backward=True), size, bstep[b.step])
    _plan_gradients(model, schedule, use, bstep, n)
    planner = ArenaPlanner(alignment=16)
    for name, (first, last) in lifetimes.items():
        planner.add_buffer(name, sizes[name], first, last)
    return planner


def _plan_gradients(model: CompiledModel, schedule: Schedule, use, bstep: dict[int, int],
                    loss_step: int) -> None:
    """Gradient buffers: 4 bytes per element (int32 accumulation, then int16 in place), or 2
    when the one rule writing it writes int16 straight away (BackwardDef.int16_dx); each part of
    a fan-out is sized by its own writer, their sum (grad_sum, int32) takes 4."""
    reader = {b.dy_tensor: b.step for b in schedule.backward}
    rules = {b.step: b.rule for b in schedule.backward}
    contributions = _contributions(schedule.loss_input, schedule.classifier, schedule.backward)
    for t, made in contributions.items():
        elements = model.graph.tensors[t].num_elements
        size = _gradient_bytes(made, rules) * elements
        at = [loss_step if step is None else bstep[step] for step in made]
        # Read as dy by its producer's step, or by the step a MEAN's backward is folded into.
        consumed = bstep[reader[t]] if t in reader else at[-1]
        if len(made) > 2:
            raise ModelError(f"tensor {t} '{model.graph.tensors[t].name}' feeds {len(made)} "
                             "trained paths; at most two are supported")
        if len(made) == 2:
            # Both parts are summed into the plain buffer when the producer's backward starts.
            for k, step in enumerate(at):
                part = _gradient_bytes(made[k:k + 1], rules) * elements
                use(grad_buffer(t, k), part, step)
                use(grad_buffer(t, k), part, consumed)
            use(grad_buffer(t), size, consumed)
        else:
            use(grad_buffer(t), size, at[0])
            use(grad_buffer(t), size, consumed)


def _gradient_bytes(made: list[int | None], rules: dict[int, BackwardDef]) -> int:
    """Bytes per element of a gradient buffer written by the backward steps `made` (None: the
    loss): 2 when one rule writes it as int16 straight away (BackwardDef.int16_dx), else 4 for
    int32 accumulation (the fan-out sum of two parts accumulates in int32 too)."""
    direct = len(made) == 1 and made[0] is not None and rules[made[0]].int16_dx
    return 2 if direct else 4


def gradient_contributions(program: TrainProgram) -> dict[int, list[int | None]]:
    """Tensor -> the forward steps whose backward writes part of its gradient (None = loss,
    including the fp32 classifier's backward)."""
    return _contributions(program.loss_input, program.classifier, program.backward)


def _contributions(loss_input: int, classifier: FloatClassifier | None,
                   backward: list[BackwardStep]) -> dict[int, list[int | None]]:
    made: dict[int, list[int | None]] = (
        {loss_input: [None]} if _loss_has_gradient(classifier) else {})
    for b in backward:
        for t, need in zip(b.op.inputs, b.need_dx, strict=True):
            if need:
                made.setdefault(t, []).append(b.step)
    return made
