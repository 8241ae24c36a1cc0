"""The loss head: the one synthetic operator that ends every training step.

The training graph's fold pass (training_graph.fold_classifier) turns the end of the model into
one of two records, and the walkers (memory plan, codegen, numpy reference, report) call the
record's rules without asking which it is:

- Int8Loss: the loss on the int8 output (cross-entropy after a SOFTMAX or on logits, or MSE;
  grad_rules.py). It replaces no forward step, keeps no state and has no backward of its own:
  its gradient feeds the int8 backward schedule.
- FloatClassifierHead: with classifier 'fp32', the final FULLY_CONNECTED (+ SOFTMAX) folded
  with the cross-entropy into one float32 operator (float_classifier.py). It replaces those
  forward steps (running at the first), plans its float work buffers, owns two float32 arrays in
  the state block (after the int8 copies) and runs its backward (input gradient, then the float
  update) before the int8 backward steps.

A new kind of head provides the same methods (steps, covers_from, loss_input, classifier,
with_need_dx, with_state, plan, emit_*, state_members, backward_macs, headers, report,
state_parts, reference_*) and is made by the fold pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from ..ops.base import GradRef
from ..ops.cxx import ConstPool, indent
from ..ops.train_math import QGrad
from . import float_classifier, grad_rules
from .float_classifier import FloatClassifier

# The fp32 classifier's float buffers: x_real, logits, probabilities (forward to loss/backward)
# and the float input gradient before it is quantized.
CLASSIFIER_WORK = "cls_work"
CLASSIFIER_SCRATCH = "cls_dx"

Use = Callable[[str, int, int], None]  # (buffer, bytes, step): the buffer is live at step
Act = Callable[[int, int], None]  # (tensor id, step): the tensor's activation buffer is live


class Names(Protocol):
    """What a head's emitters get from the training code generator."""

    pool: ConstPool

    def arena(self, buffer: str) -> str: ...

    def act(self, tensor_id: int) -> str: ...

    def grad(self, tensor_id: int, contribution: int | None = None) -> GradRef: ...


@dataclass(frozen=True)
class StepOutcome:
    """What the numpy loss step gives the int8 backward: loss, prediction and the gradient of
    the loss input (None when nothing below needs it or no update runs)."""

    loss: float
    prediction: int
    dloss: QGrad | None


@dataclass(frozen=True)
class Int8Loss:
    """The loss on the int8 model output; its gradient is that of `loss_input`."""

    kind: str  # "softmax_cross_entropy", "logits_cross_entropy" or "mse"
    output: int  # the model's output tensor
    loss_input: int
    count: int  # output elements
    scale: float
    zero_point: int
    covers_from: int  # int8 backward steps run below this step (a final SOFTMAX is covered)

    steps: tuple[int, ...] = ()  # it replaces no forward step
    headers: tuple[str, ...] = ()
    classifier: None = None

    def with_need_dx(self, need: bool) -> Int8Loss:
        """Its gradient is always formed: whatever trains needs it."""
        return self

    def with_state(self, classifier: FloatClassifier | None) -> Int8Loss:
        return self

    # ---- memory plan and C++ ----

    def plan(self, use: Use, act: Act, step: int, loss_step: int) -> None:
        """Nothing beyond the output the loss reads (planned by the walker)."""

    def emit_forward(self, e: Names) -> list[str]:
        return []

    def emit_loss(self, e: Names) -> str:
        dl = e.grad(self.loss_input)
        y = e.act(self.output)
        if self.kind == "logits_cross_entropy":
            return grad_rules.emit_logits_cross_entropy(
                y, self.count, self.scale, "label_class", dl, "result->loss",
                "result->prediction")
        if self.kind == "softmax_cross_entropy":
            return grad_rules.emit_cross_entropy(y, self.count, "label_class", dl,
                                                 "result->loss", "result->prediction")
        return grad_rules.emit_mse(y, self.count, self.scale, self.zero_point, "targets", dl,
                                   "result->loss")

    def emit_backward(self, e: Names) -> list[str]:
        return []

    def emit_reset(self, e: Names) -> list[str]:
        return []

    def state_members(self) -> tuple[list[str], list[str]]:
        return [], []

    def backward_macs(self) -> int:
        return 0

    # ---- report ----

    def report(self) -> dict[str, Any] | None:
        return None

    def state_parts(self) -> list[tuple[int, str]]:
        return []

    # ---- numpy reference ----

    def reference_state(self) -> None:
        return None

    def write_state(self, state: None, block: bytearray) -> None:
        """No state of its own."""

    def reference_forward(self, state: None, values: dict[int, np.ndarray]) -> None:
        """Never called: it replaces no forward step."""

    def reference_step(self, state: None, values: dict[int, np.ndarray], label: Any,
                       lr: np.float32, update: bool) -> StepOutcome:
        y = values[self.output]
        if self.kind == "logits_cross_entropy":
            loss, pred, dy = grad_rules.logits_cross_entropy(y, self.scale, self.zero_point,
                                                             int(label))
        elif self.kind == "softmax_cross_entropy":
            loss, pred, dy = grad_rules.cross_entropy(y, int(label))
        else:
            loss, dy = grad_rules.mse(y, self.scale, self.zero_point,
                                      np.asarray(label, np.float32))
            pred = 0
        return StepOutcome(float(loss), int(pred), dy)


@dataclass
class ClassifierState:
    """The numpy side of the fp32 classifier: float32 weights and bias, updated in place, and
    what the last forward kept for the loss and the backward."""

    w: np.ndarray
    b: np.ndarray
    work: float_classifier.Work | None = None


@dataclass(frozen=True)
class FloatClassifierHead:
    """The fp32 classifier folded with its cross-entropy into one synthetic operator."""

    cls: FloatClassifier
    output: int  # the model's output tensor (the SOFTMAX's, or the FC's logits)
    output_shape: tuple[int, ...]

    headers: tuple[str, ...] = (float_classifier.HEADER,)

    @property
    def steps(self) -> tuple[int, ...]:
        return tuple(self.cls.steps)

    @property
    def covers_from(self) -> int:
        """Its backward runs with the loss; the int8 schedule ends before the FC."""
        return self.cls.fc_step

    @property
    def loss_input(self) -> int:
        return self.cls.input_tensor

    @property
    def classifier(self) -> FloatClassifier:
        return self.cls

    def with_need_dx(self, need: bool) -> FloatClassifierHead:
        """Whether an earlier trained operator needs the classifier's input gradient."""
        return replace(self, cls=replace(self.cls, need_dx=need))

    def with_state(self, classifier: FloatClassifier | None) -> FloatClassifierHead:
        """The head over the classifier placed in the state block (layout_state)."""
        assert classifier is not None and classifier.fc_step == self.cls.fc_step
        return replace(self, cls=classifier)

    # ---- memory plan and C++ ----

    def plan(self, use: Use, act: Act, step: int, loss_step: int) -> None:
        """One float step reads the FC's input and writes the model's output; the int8 logits
        never exist. The work buffer lives on to the loss and the classifier's backward."""
        c = self.cls
        act(c.input_tensor, step)
        act(self.output, step)
        use(CLASSIFIER_WORK, 4 * c.work_floats, step)
        use(CLASSIFIER_WORK, 4 * c.work_floats, loss_step)
        if c.need_dx:
            use(CLASSIFIER_SCRATCH, 4 * c.depth, loss_step)

    def _state(self) -> tuple[str, str]:
        step = self.cls.fc_step
        return f"g_state.cw{step}", f"g_state.cb{step}"

    def emit_forward(self, e: Names) -> list[str]:
        c = self.cls
        softmax = "" if c.softmax_step is None else f" + [{c.softmax_step}] SOFTMAX"
        w, b = self._state()
        return [f"  // [{c.fc_step}] FULLY_CONNECTED{softmax} as the fp32 classifier "
                f"(operator {c.operator})",
                indent(float_classifier.emit_forward(
                    c, w, b, e.act(c.input_tensor), e.arena(CLASSIFIER_WORK),
                    e.act(self.output)), 2)]

    def emit_loss(self, e: Names) -> str:
        return float_classifier.emit_loss(self.cls, e.arena(CLASSIFIER_WORK), "label_class",
                                          "result->loss", "result->prediction")

    def emit_backward(self, e: Names) -> list[str]:
        c = self.cls
        w, bias = self._state()
        dx = e.grad(c.input_tensor) if c.need_dx else None
        return [f"  // backward [{c.fc_step}] fp32 classifier (operator {c.operator})",
                indent(float_classifier.emit_backward(
                    c, w, bias, e.arena(CLASSIFIER_WORK), "label_class", "g_train.lr",
                    e.arena(CLASSIFIER_SCRATCH) if dx else None, dx.data() if dx else None,
                    dx.scale if dx else None), 2)]

    def emit_reset(self, e: Names) -> list[str]:
        return [indent(float_classifier.emit_init(self.cls, e.pool, *self._state()), 2)]

    def state_members(self) -> tuple[list[str], list[str]]:
        c = self.cls
        step = c.fc_step
        return ([f"  float cw{step}[{c.units * c.depth}];", f"  float cb{step}[{c.units}];"],
                [f"static_assert(offsetof(State, cw{step}) == {c.weight_offset});",
                 f"static_assert(offsetof(State, cb{step}) == {c.bias_offset});"])

    def backward_macs(self) -> int:
        """The float update, plus the input gradient when needed."""
        c = self.cls
        return c.units * c.depth * (2 if c.need_dx else 1)

    # ---- report ----

    def report(self) -> dict[str, Any] | None:
        """Its place in the state block (float32, row-major [units, depth])."""
        c = self.cls
        return {"steps": c.steps, "operator": c.operator,
                "units": c.units, "depth": c.depth, "dtype": "float32",
                "weight_offset": c.weight_offset, "weight_bytes": c.weight_bytes,
                "weight_shape": [c.units, c.depth], "bias_offset": c.bias_offset,
                "bias_bytes": c.bias_bytes, "input_gradient": c.need_dx}

    def state_parts(self) -> list[tuple[int, str]]:
        return [(self.cls.weight_bytes + self.cls.bias_bytes, "the fp32 classifier")]

    # ---- numpy reference ----

    def reference_state(self) -> ClassifierState:
        w, b = self.cls.initial()
        return ClassifierState(w, b)

    def write_state(self, state: ClassifierState, block: bytearray) -> None:
        c = self.cls
        raw = state.w.astype("<f4").tobytes()
        block[c.weight_offset:c.weight_offset + len(raw)] = raw
        raw = state.b.astype("<f4").tobytes()
        block[c.bias_offset:c.bias_offset + len(raw)] = raw

    def reference_forward(self, state: ClassifierState, values: dict[int, np.ndarray]) -> None:
        """FC (+ SOFTMAX) as one float step; the int8 logits tensor is never produced."""
        state.work, q = float_classifier.forward(self.cls, state.w, state.b,
                                                 values[self.cls.input_tensor])
        values[self.output] = q.reshape(self.output_shape)

    def reference_step(self, state: ClassifierState, values: dict[int, np.ndarray], label: Any,
                       lr: np.float32, update: bool) -> StepOutcome:
        assert state.work is not None
        loss, pred = float_classifier.loss(state.work, int(label))
        dx = None
        if update:
            dx = float_classifier.backward(self.cls, state.w, state.b, state.work, int(label),
                                           lr, self.cls.need_dx)
        return StepOutcome(float(loss), int(pred), dx)


LossHead = Int8Loss | FloatClassifierHead
