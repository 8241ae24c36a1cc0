"""The numpy training step: the definition of what the firmware's TRAIN request computes.

Runs the int8 forward with the current trainable copies, the loss, then the backward schedule of
the TrainProgram with each operator's rule (ops/*.py BackwardDef.reference), updating parameters
in place in the same order as the firmware, with the same PRNG draws. After every step the state
(trainable int8 weights and int32 biases, and the float32 weights of an fp32 classifier) must
equal the firmware's byte for byte.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from ..ops.base import TrainSlot, trainable
from ..ops.train_math import QGrad, XorShift32
from . import grad_rules
from .training_graph import BackwardStep, TrainProgram


@dataclasses.dataclass
class StepResult:
    loss: float
    prediction: int


class TrainingReference:
    def __init__(self, program: TrainProgram) -> None:
        self.program = program
        self.reset()

    def reset(self) -> None:
        self.slots: dict[int, TrainSlot] = {
            step: copy.deepcopy(t.slot) for step, t in self.program.trained.items()}
        self.lr = np.float32(self.program.scheme.lr)
        self.rng = XorShift32(self.program.scheme.seed)
        # The loss head's own state: with an fp32 classifier its float32 weights and bias and
        # the last forward's work values (loss_head.ClassifierState), else None.
        self.head_state = self.program.head.reference_state()

    # ---- state ----

    def state_bytes(self) -> bytes:
        """The trainable block exactly as the firmware lays it out (READ_PARAMS)."""
        block = bytearray(self.program.state_bytes)
        for step, t in self.program.trained.items():
            slot = self.slots[step]
            if slot.weights is not None:
                raw = slot.weights.astype(np.int8).tobytes()
                block[t.weight_offset:t.weight_offset + len(raw)] = raw
            if slot.bias is not None:
                raw = slot.bias.astype("<i4").tobytes()
                block[t.bias_offset:t.bias_offset + len(raw)] = raw
        self.program.head.write_state(self.head_state, block)
        return bytes(block)

    def params(self, step: int):
        """Operator params with the current trained weights swapped in."""
        p = self.program.model.ops[step]
        slot = self.slots.get(step)
        if slot is None:
            return p.params
        return trainable(p.op.opcode).with_trained(p.params, slot.weights, slot.bias)

    # ---- one step ----

    def forward(self, x: np.ndarray) -> dict[int, np.ndarray]:
        model = self.program.model
        graph = model.graph
        values = {model.input: np.asarray(x, np.int8).reshape(graph.tensors[model.input].shape)}
        head = self.program.head
        for step, p in enumerate(model.ops):
            if step in head.steps:  # folded into the head, which runs at the first of them
                if step == head.steps[0]:
                    head.reference_forward(self.head_state, values)
                continue
            out = p.opdef.reference(self.params(step), [values[t] for t in p.inputs])
            values[p.output] = np.asarray(out, np.int8).reshape(graph.tensors[p.output].shape)
        return values

    def step(self, x: np.ndarray, label: int | np.ndarray, update: bool = True) -> StepResult:
        values = self.forward(x)
        # The head's loss, and with update its own backward (the fp32 classifier's update).
        outcome = self.program.head.reference_step(self.head_state, values, label, self.lr,
                                                   update)
        if update:
            self._backward(values, outcome.dloss)
        return StepResult(outcome.loss, outcome.prediction)

    def _backward(self, values: dict[int, np.ndarray], dloss: QGrad | None) -> None:
        program = self.program
        grads: dict[int, list[QGrad]] = {} if dloss is None else {program.loss_input: [dloss]}
        for b in program.backward:
            p = b.op
            dy = _total(grads.pop(b.dy_tensor))
            if b.broadcast is not None:  # the folded MEAN's own rule: the explicit broadcast
                dy = self._broadcast(b, dy)
            if b.mask is not None:
                bits = grad_rules.mask_pack(values[p.output], *b.mask)
                dy = grad_rules.mask_apply(dy, bits)
            saved = [values[t] if keep else None
                     for t, keep in zip(p.inputs, b.saved, strict=True)]
            dxs = b.rule.reference(self.params(b.step), saved, dy, b.need_dx,
                                   self.slots.get(b.step), self.lr, self.rng)
            for t, need, dx in zip(p.inputs, b.need_dx, dxs, strict=True):
                if need:  # kept in its tensor's shape (the identity rule hands dy on as it is)
                    shape = program.model.graph.tensors[t].shape
                    grads.setdefault(t, []).append(QGrad(dx.data.reshape(shape), dx.scale))


    def _broadcast(self, b: BackwardStep, dy: QGrad) -> QGrad:
        mean = self.program.model.ops[b.broadcast.step]
        (dx,) = mean.opdef.gradient.reference(mean.params, [None], dy, [True], None, self.lr,
                                              self.rng)
        shape = self.program.model.graph.tensors[b.op.output].shape
        return QGrad(dx.data.reshape(shape), dx.scale)


def _total(parts: list[QGrad]) -> QGrad:
    if len(parts) == 1:
        return parts[0]
    return grad_rules.grad_sum(parts[0], parts[1])


def check_state_equal(reference: bytes, firmware: bytes) -> None:
    if reference != firmware:
        a = np.frombuffer(reference, np.uint8)
        b = np.frombuffer(firmware, np.uint8)
        diff = np.flatnonzero(a != b)
        raise AssertionError(f"trainable state differs at {diff.size} bytes, first at {diff[:8]}")

