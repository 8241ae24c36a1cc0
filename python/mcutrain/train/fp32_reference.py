"""Float32 TensorFlow reference for on-device training: what ideal (float) training would do.

The float model is built from our IR (mcutrain.compile.compiler), not from the .tflite through
TFLite's own tooling, so it trains exactly the operators and parameters the firmware trains: weights
are dequantized (W = sW[c] * Wq, b = sb[c] * bq), the float input is what the int8 input represents
(quantize then dequantize with the input tensor's parameters), and intermediate activations are not
quantized. Training follows a scheme (docs/training.md) with plain SGD, batch 1, softmax
cross-entropy on the logits that feed the final SOFTMAX (or MSE), in a given sample order; only the
scheme's parameters move, and a channel ratio < 1 trains the first ceil(ratio * out_c) output
channels (the gradient of the others is masked to zero).

TensorFlow is imported inside functions so that importing mcutrain stays light.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..compile.compiler import CompiledModel, PreparedOp, compile_model
from ..frontend.graph import Graph, ModelError
from ..ops.base import FloatForward, is_parametric, registered, trainable
from ..ops.float_common import dequantize
from ..ops.float_common import tf_module as _tf
from .scheme import LayerPlan, Scheme, parse_scheme, plan_layers

# ---- input quantization, bias ----

def quantize_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """Float input (the model's real units) -> int8, as the host does before sending it."""
    t = graph.tensors[graph.inputs[0]]
    q = np.round(np.asarray(x, np.float32) / np.float32(t.scale)) + t.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


def fake_quant_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    """What the int8 input represents: dequantize(quantize(x)), float32."""
    t = graph.tensors[graph.inputs[0]]
    q = quantize_input(graph, x).astype(np.float32)
    return ((q - np.float32(t.zero_point)) * np.float32(t.scale)).astype(np.float32)


def _bias_real(graph: Graph, p: PreparedOp, out_c: int) -> np.ndarray:
    if len(p.op.inputs) < 3 or p.op.inputs[2] < 0:
        return np.zeros(out_c, np.float32)
    b = graph.tensors[p.op.inputs[2]]
    if b.quant is not None:
        return dequantize(b).reshape(out_c)
    # No bias scale recorded: TFLite's convention is sx * sW[c].
    sx = graph.tensors[p.inputs[0]].scale
    sw = graph.tensors[p.op.inputs[1]].quant.scale.astype(np.float32)
    return (np.asarray(b.data, np.float32) * sx * sw).astype(np.float32).reshape(out_c)


# ---- the float model ----

@dataclass
class FloatParam:
    """One parameter tensor of a parametric operator, in the IR's layout (CONV_2D/FC: out_c
    first; DEPTHWISE_CONV_2D: [1, kh, kw, out_c]). `mask` is None for frozen parameters."""

    step: int
    kind: str  # "weights" or "bias"
    value: Any  # tf.Variable if trainable, else tf.constant
    mask: np.ndarray | None = None


@dataclass(repr=False)
class FloatModel:
    """`saturate`: clamp every activation to the real range its int8 tensor can represent, as the
    int8 graph does (the gradient passes straight through, as in the integer backward pass).
    Without it, inputs outside the calibration range drive the float model far from the int8 one.
    """

    compiled: CompiledModel
    params: dict[tuple[int, str], FloatParam] = field(default_factory=dict)
    saturate: bool = True

    @property
    def graph(self) -> Graph:
        return self.compiled.graph

    @property
    def trainable(self) -> list[FloatParam]:
        return [p for p in self.params.values() if p.mask is not None]

    def __repr__(self) -> str:
        return f"FloatModel({self.graph.name}, {len(self.trainable)} trainable tensors)"

    def variable(self, step: int, kind: str) -> Any:
        """The float "weights" or "bias" of the weighted operator at `step` (ops FloatContext)."""
        return self.params[(step, kind)].value

    def logits_and_output(self, x: Any) -> tuple[Any, Any]:
        """Batched forward (x: float [N, ...input shape without batch]). Returns (logits, output):
        logits are beta * the input of a final SOFTMAX (else the output itself)."""
        values = self.tensors(x)
        return values["logits"], values[self.compiled.output]

    def tensors(self, x: Any) -> dict[Any, Any]:
        """Batched forward returning every tensor by id, plus "logits" (see logits_and_output)."""
        tf = _tf()
        values: dict[Any, Any] = {self.compiled.input: x}
        logits = None
        for step, p in enumerate(self.compiled.ops):
            ins = [values[t] for t in p.inputs]
            if step == len(self.compiled.ops) - 1 and p.op.opcode == "SOFTMAX":
                logits = ins[0] * float(p.op.options.get("beta", 1.0))
                values[p.output] = tf.nn.softmax(logits, axis=-1)
                continue
            y = _float_forward(p.op.opcode)(self, step, p, ins)
            values[p.output] = self._saturate(y, p.output) if self.saturate else y
        values["logits"] = values[self.compiled.output] if logits is None else logits
        return values

    def run(self, x: np.ndarray, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(logits, outputs) for float inputs in real units, fake-quantized like the int8 input."""
        fn = self._batched()
        xs = fake_quant_input(self.graph, x).reshape(self._batch_shape(len(x)))
        parts = [fn(xs[i:i + batch]) for i in range(0, len(xs), batch)]
        return (np.concatenate([a.numpy() for a, _ in parts]),
                np.concatenate([b.numpy() for _, b in parts]))

    def _saturate(self, y: Any, tensor_id: int) -> Any:
        tf = _tf()
        t = self.graph.tensors[tensor_id]
        lo = float(np.float32(t.scale) * (-128 - t.zero_point))
        hi = float(np.float32(t.scale) * (127 - t.zero_point))
        return y + tf.stop_gradient(tf.clip_by_value(y, lo, hi) - y)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float model outputs (after the final SOFTMAX, if any)."""
        return self.run(x)[1]

    def evaluate(self, x: np.ndarray, y: np.ndarray, loss: str = "cross_entropy"
                 ) -> dict[str, float]:
        logits, out = self.run(x)
        if loss == "mse":
            return {"loss": float(np.mean((out.reshape(len(x), -1)
                                           - np.asarray(y, np.float32).reshape(len(x), -1))
                                          ** 2))}
        logits = logits.reshape(len(x), -1).astype(np.float64)
        logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        ce = logz - logits[np.arange(len(x)), y]
        return {"accuracy": float(np.mean(logits.argmax(1) == y)), "loss": float(ce.mean())}

    def state(self) -> dict[int, dict[str, np.ndarray]]:
        """Current float parameters of the trained operators, IR layout."""
        out: dict[int, dict[str, np.ndarray]] = {}
        for p in self.trainable:
            out.setdefault(p.step, {})[p.kind] = np.array(p.value.numpy())
        return out

    def _batch_shape(self, n: int) -> tuple[int, ...]:
        return (n, *self.graph.tensors[self.compiled.input].shape[1:])

    def _batched(self) -> Callable[[Any], tuple[Any, Any]]:
        if not hasattr(self, "_fn"):
            tf = _tf()
            spec = tf.TensorSpec([None, *self.graph.tensors[self.compiled.input].shape[1:]],
                                 tf.float32)
            self._fn = tf.function(lambda x: self.logits_and_output(x), input_signature=[spec])
        return self._fn


def _float_forward(opcode: str) -> FloatForward | None:
    opdef = registered(opcode)
    return None if opdef is None else opdef.float_forward


def build_float_model(model: str | Path | bytes | CompiledModel,
                      plans: list[LayerPlan] | None = None, saturate: bool = True) -> FloatModel:
    """The float TensorFlow model of a compiled int8 model; `plans` (from scheme.plan_layers)
    makes the listed parameters trainable tf.Variables with their gradient masks."""
    tf = _tf()
    compiled = model if isinstance(model, CompiledModel) else compile_model(model)
    unsupported = sorted({p.op.opcode for p in compiled.ops if p.op.opcode != "SOFTMAX"
                          and _float_forward(p.op.opcode) is None})
    if unsupported:
        raise ModelError(f"fp32 reference: operators {unsupported} are not supported")
    by_step = {plan.step: plan for plan in plans or []}
    fm = FloatModel(compiled, saturate=saturate)
    graph = compiled.graph
    for step, p in enumerate(compiled.ops):
        if not is_parametric(p.op.opcode):
            continue
        w_t = graph.tensors[p.op.inputs[1]]
        w = dequantize(w_t)
        axis = trainable(p.op.opcode).filter_channel_axis
        out_c = w.shape[axis]
        b = _bias_real(graph, p, out_c)
        plan = by_step.get(step)
        if plan is not None and plan.n_train > 0:
            shape = [1] * w.ndim
            shape[axis] = out_c
            mask = (np.arange(out_c) < plan.n_train).astype(np.float32).reshape(shape)
            fm.params[(step, "weights")] = FloatParam(step, "weights", tf.Variable(w), mask)
        else:
            fm.params[(step, "weights")] = FloatParam(step, "weights", tf.constant(w))
        if plan is not None and plan.train_bias:
            fm.params[(step, "bias")] = FloatParam(step, "bias", tf.Variable(b),
                                                   np.ones(out_c, np.float32))
        else:
            fm.params[(step, "bias")] = FloatParam(step, "bias", tf.constant(b))
    return fm


# ---- training ----

def parametric_layers(compiled: CompiledModel) -> list[tuple[int, str, int]]:
    """(schedule step, output tensor name, output channels), as the training graph resolves
    scheme layers."""
    out = []
    for step, p in enumerate(compiled.ops):
        if is_parametric(p.op.opcode):
            t = compiled.graph.tensors[p.output]
            out.append((step, t.name, int(t.shape[-1])))
    return out


def _make_step(fm: FloatModel, loss_kind: str) -> Callable[..., Any]:
    tf = _tf()
    params = fm.trainable
    variables = [p.value for p in params]
    masks = [tf.constant(p.mask) for p in params]
    in_shape = fm.graph.tensors[fm.compiled.input].shape
    out_shape = fm.graph.tensors[fm.compiled.output].shape
    target_spec = (tf.TensorSpec([], tf.int32) if loss_kind == "cross_entropy"
                   else tf.TensorSpec([1, *out_shape[1:]], tf.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, *in_shape[1:]], tf.float32), target_spec,
                                  tf.TensorSpec([], tf.float32)])
    def step(x: Any, target: Any, lr: Any) -> Any:
        with tf.GradientTape() as tape:
            logits, out = fm.logits_and_output(x)
            if loss_kind == "cross_entropy":
                loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=tf.reshape(target, [1]), logits=tf.reshape(logits, [1, -1]))[0]
            else:
                loss = tf.reduce_mean(tf.square(out - target))
        grads = tape.gradient(loss, variables)
        for v, g, m in zip(variables, grads, masks, strict=True):
            v.assign_sub(lr * g * m)  # plain SGD, batch 1; masked channels never move
        return loss

    return step


def train_fp32(model_path: str | Path | bytes, scheme: dict[str, Any] | Scheme,
               x_train: np.ndarray, y_train: np.ndarray, order: list[np.ndarray],
               lr: float | None = None,
               eval_sets: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
               ) -> dict[str, Any]:
    """Train the float model with `scheme`: one epoch per entry of `order` (sample indices into
    x_train, visited in that order), batch 1, plain SGD at `lr` (default: the scheme's).

    x_* are float inputs in the model's real units (e.g. g); y_* class labels (cross_entropy) or
    float targets (mse). Returns {"trainable": [...], "lr", "steps", "seconds", "epochs": [...]}
    where epochs[0] is the evaluation before training and epochs[e] after epoch e; each has
    "train_loss" (mean step loss of that epoch, None for epoch 0) and, per eval set, "accuracy"
    and "loss". The final float parameters are under "state" (not JSON; drop before saving).
    """
    s = scheme if isinstance(scheme, Scheme) else parse_scheme(scheme)
    compiled = compile_model(model_path)
    plans = plan_layers(s, parametric_layers(compiled))
    fm = build_float_model(compiled, plans)
    rate = np.float32(s.lr if lr is None else lr)
    step = _make_step(fm, s.loss)
    xs = fake_quant_input(compiled.graph, x_train).reshape(fm._batch_shape(len(x_train)))
    targets = (np.asarray(y_train, np.int32) if s.loss == "cross_entropy"
               else np.asarray(y_train, np.float32).reshape(len(x_train), 1, -1))
    evals = eval_sets or {}

    def evaluate(train_loss: float | None) -> dict[str, Any]:
        row: dict[str, Any] = {"train_loss": train_loss}
        for name, (x, y) in evals.items():
            row[name] = fm.evaluate(x, y, s.loss)
        return row

    start = time.perf_counter()
    epochs = [evaluate(None)]
    steps = 0
    for indices in order:
        losses = [float(step(xs[i:i + 1], targets[i], rate)) for i in np.asarray(indices)]
        steps += len(losses)
        if not all(math.isfinite(v) for v in losses):
            raise ModelError(f"fp32 training diverged at lr {float(rate)} (non-finite loss)")
        epochs.append(evaluate(float(np.mean(losses)) if losses else None))
    trainable = [{"step": p.step, "opcode": compiled.ops[p.step].op.opcode, "kind": p.kind,
                  "channels": int(p.mask.sum()) if p.kind == "weights"
                  and p.mask.ndim else int(p.mask.size)} for p in fm.trainable]
    return {"trainable": trainable, "lr": float(rate), "steps": steps,
            "seconds": time.perf_counter() - start, "epochs": epochs, "state": fm.state()}
