"""The fp32 classifier of a `"classifier": "fp32"` scheme (docs/training.md, "fp32 classifier").

The model's final FULLY_CONNECTED -> SOFTMAX pair (or final FULLY_CONNECTED of logits) runs in
float32: weights W_f = sW[o] * Wq and
bias b_f = s_b[o] * bq live in the trainable state block as float32 and are trained in full,
with no quantization-aware scaling and no rounding. The numpy functions here define the
arithmetic; firmware/kernels/float_classifier.h reproduces it operation for operation, so the
float weights agree bit for bit: every float is float32, every sum runs in a fixed order, there
is no fused multiply-add (-ffp-contract=off) and exp is a fixed polynomial (no libm).
The emit_* helpers produce the C++ calls of the generated training code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..compile.compiler import CompiledModel
from ..frontend.graph import ModelError
from ..ops.base import REF
from ..ops.cxx import ConstPool, c_float
from ..ops.train_math import F32, QGrad, grad_requantize_f32, round_half_away_f32

HEADER = "kernels/float_classifier.h"

# The kernel's constants (hex literals in float_classifier_ref.cc), as float32.
_EXP_MIN = F32(-80.0)
_LOG2E = F32(float.fromhex("0x1.715476p+0"))
_LN2_HI = F32(float.fromhex("0x1.62e4p-1"))
_LN2_LO = F32(float.fromhex("0x1.7f7d1cp-20"))
# Taylor coefficients 1/7! ... 1/2!, 1/1!, 1/0! in Horner order.
_POLY = tuple(F32(float.fromhex(h)) for h in (
    "0x1.a01a02p-13", "0x1.6c16c2p-10", "0x1.111112p-7", "0x1.555556p-5", "0x1.555556p-3",
    "0x1.0p-1", "0x1.0p0", "0x1.0p0"))
_MIN_PROB = F32(1e-30)


@dataclass(frozen=True)
class FloatClassifier:
    """The FULLY_CONNECTED (+ SOFTMAX) that a training build runs in float32."""

    fc_step: int
    softmax_step: int | None  # None: the model ends in the FC's logits
    operator: int  # the FULLY_CONNECTED's operator index in the model
    input_tensor: int
    input_shape: tuple[int, ...]
    depth: int
    units: int
    input_scale: np.float32
    input_zero_point: int
    weights_q: np.ndarray  # int8 [units, depth], the flashed weights
    bias_q: np.ndarray | None  # int32 [units]
    w_scale: np.ndarray  # float32 [units]: sW
    b_scale: np.ndarray  # float32 [units]: sx * sW
    # Logits models: the int8 output is the logits quantized as the FC's output (1 / so, zo).
    output_inv_scale: np.float32 = F32(0.0)
    output_zero_point: int = 0
    need_dx: bool = False  # does an earlier trained operator need the input gradient?
    weight_offset: int = -1  # byte offsets in the state block
    bias_offset: int = -1

    @property
    def steps(self) -> list[int]:
        """The forward steps the float step replaces."""
        return [self.fc_step] if self.softmax_step is None else [self.fc_step, self.softmax_step]

    @property
    def weight_bytes(self) -> int:
        return 4 * self.units * self.depth

    @property
    def bias_bytes(self) -> int:
        return 4 * self.units

    @property
    def work_floats(self) -> int:
        """x_real[depth], logits[units], prob[units] (FloatClassifierWorkFloats)."""
        return self.depth + 2 * self.units

    def initial(self) -> tuple[np.ndarray, np.ndarray]:
        """(W_f, b_f) from the flashed int8 weights and int32 bias, as reset computes them."""
        w = self.w_scale[:, None] * self.weights_q.astype(np.float32)
        if self.bias_q is None:
            b = np.zeros(self.units, np.float32)
        else:
            b = self.b_scale * self.bias_q.astype(np.float32)
        return w.astype(np.float32), b.astype(np.float32)


def plan_float_classifier(model: CompiledModel) -> FloatClassifier:
    """The model's final FULLY_CONNECTED -> SOFTMAX or final FULLY_CONNECTED (logits), refused
    with a one-line ModelError when the model does not end that way or the FC cannot run as a
    plain float layer."""
    ops = model.ops
    name = model.graph.name
    with_softmax = (len(ops) >= 2 and ops[-1].op.opcode == "SOFTMAX"
                    and ops[-2].op.opcode == "FULLY_CONNECTED"
                    and ops[-1].inputs[0] == ops[-2].output)
    if not with_softmax and ops[-1].op.opcode != "FULLY_CONNECTED":
        tail = " -> ".join(p.op.opcode for p in ops[-2:])
        raise ModelError(f"{name}: classifier 'fp32' needs the model to end in FULLY_CONNECTED "
                         f"(logits) or FULLY_CONNECTED -> SOFTMAX (it ends in {tail}); "
                         "use classifier 'int8'")
    fc = ops[-2] if with_softmax else ops[-1]
    p = fc.params
    g = model.graph
    activation = fc.op.options.get("activation", "NONE")
    units, depth = p.filter.shape
    problems = [
        (p.batches != 1, f"a batch of {p.batches} rows"),
        (activation != "NONE", f"fused activation {activation}"),
        (p.filter_offset != 0, "weights with a zero point"),
    ]
    for bad, what in problems:
        if bad:
            raise ModelError(f"{name}: classifier 'fp32' needs a plain FULLY_CONNECTED before "
                             f"the SOFTMAX; operator {fc.op.index} has {what}")
    x = g.tensors[fc.inputs[0]]
    y = g.tensors[fc.output]
    sx = F32(x.scale)
    w_scale = np.asarray(p.filter_scale, np.float32).reshape(units)
    last = len(ops) - 1
    return FloatClassifier(
        fc_step=last - 1 if with_softmax else last, softmax_step=last if with_softmax else None,
        operator=fc.op.index,
        input_tensor=fc.inputs[0], input_shape=tuple(x.shape), depth=int(depth),
        units=int(units), input_scale=sx, input_zero_point=int(x.zero_point),
        weights_q=np.asarray(p.filter, np.int8).copy(),
        bias_q=None if p.bias is None else np.asarray(p.bias, np.int32).copy(),
        w_scale=w_scale, b_scale=(sx * w_scale).astype(np.float32),
        output_inv_scale=F32(0.0) if with_softmax else F32(1.0) / F32(y.scale),
        output_zero_point=0 if with_softmax else int(y.zero_point))


# ---- numpy definition ----


def exp_f32(x: np.ndarray) -> np.ndarray:
    """exp for x <= 0, exactly as the firmware's exp_f32: 0 below -80 (and for NaN), else
    2^n * poly(r), n = round_half_away_f32(x * log2e), r = (x - n * ln2_hi) - n * ln2_lo."""
    x = np.asarray(x, np.float32)
    keep = x >= _EXP_MIN
    xs = np.where(keep, x, F32(0.0)).astype(np.float32)
    n = round_half_away_f32(xs * _LOG2E)
    r = (xs - n * _LN2_HI) - n * _LN2_LO
    poly = np.full(xs.shape, _POLY[0], np.float32)
    for c in _POLY[1:]:
        poly = poly * r + c
    bits = ((n.astype(np.int32) + 127).astype(np.uint32) << np.uint32(23)).astype(np.uint32)
    scale = bits.view(np.float32)
    return np.where(keep, poly * scale, F32(0.0)).astype(np.float32)


@dataclass
class Work:
    """What the forward pass keeps for the loss and the backward pass."""

    x_real: np.ndarray  # float32 [depth]
    logits: np.ndarray  # float32 [units]
    prob: np.ndarray  # float32 [units]


def forward(c: FloatClassifier, w: np.ndarray, b: np.ndarray,
            x: np.ndarray) -> tuple[Work, np.ndarray]:
    """-> (work, q): q is the int8 SOFTMAX output (scale 1/256, zero point -128), or for a
    logits model clamp(round_half_away_f32(logits * (1 / so)) + zo)."""
    xq = np.asarray(x).astype(np.int32).ravel()
    x_real = (xq - c.input_zero_point).astype(np.float32) * c.input_scale
    acc = np.zeros(c.units, np.float32)
    for i in range(c.depth):  # sequential in i, vectorized over o
        acc = acc + w[:, i] * x_real[i]
    logits = (b + acc).astype(np.float32)
    m = logits[0]
    for v in logits[1:]:
        if v > m:
            m = v
    e = exp_f32(logits - m)
    total = F32(0.0)
    for v in e:
        total = F32(total + v)
    prob = (e / total).astype(np.float32)
    if c.softmax_step is None:
        v = round_half_away_f32(logits * c.output_inv_scale) + F32(c.output_zero_point)
    else:
        v = round_half_away_f32(prob * F32(256.0)) - F32(128.0)
    q = np.clip(v, -128, 127).astype(np.int8)
    return Work(x_real, logits, prob), q


def loss(work: Work, label: int) -> tuple[float, int]:
    """(-log(max(prob[label], 1e-30)), first index of the largest logit)."""
    best = 0
    for o in range(1, work.logits.size):
        if work.logits[o] > work.logits[best]:
            best = o
    p = work.prob[label]
    p = p if p > _MIN_PROB else _MIN_PROB
    return float(-np.log(F32(p))), best


def backward(c: FloatClassifier, w: np.ndarray, b: np.ndarray, work: Work, label: int,
             lr: np.float32, need_dx: bool) -> QGrad | None:
    """Input gradient from the old weights (if needed), then the SGD update of w and b in place."""
    g = work.prob.copy()
    g[label] = g[label] - F32(1.0)
    dx = None
    if need_dx:
        acc = np.zeros(c.depth, np.float32)
        for o in range(c.units):  # sequential over o, vectorized over i
            acc = acc + g[o] * w[o]
        q = grad_requantize_f32(acc)
        dx = QGrad(q.data.reshape(c.input_shape), q.scale)
    coef = (F32(lr) * g).astype(np.float32)
    b -= coef
    w -= coef[:, None] * work.x_real[None, :]
    return dx


# ---- C++ emission ----


def emit_params(c: FloatClassifier) -> str:
    """A block-local constant `kCls` (the mt::FloatClassifierParams)."""
    return (f"static const mt::FloatClassifierParams kCls = {{{c.depth}, {c.units}, "
            f"{-c.input_zero_point}, {c_float(c.input_scale)}, "
            f"{1 if c.softmax_step is None else 0}, {c_float(c.output_inv_scale)}, "
            f"{c.output_zero_point}}};")


def emit_init(c: FloatClassifier, pool: ConstPool, w: str, b: str) -> str:
    wq = pool.const_array(f"cls_wq{c.fc_step}", c.weights_q)
    bq = "nullptr" if c.bias_q is None else pool.const_array(f"cls_bq{c.fc_step}", c.bias_q)
    ws = pool.const_array(f"cls_wscale{c.fc_step}", c.w_scale)
    bs = pool.const_array(f"cls_bscale{c.fc_step}", c.b_scale)
    return ("{\n" + emit_params(c) + "\n"
            f"{REF.kernel('float_classifier_init')}(kCls, {wq}, {bq}, {ws}, {bs}, {w}, {b});\n}}")


def emit_forward(c: FloatClassifier, w: str, b: str, x_ptr: str, work_ptr: str,
                 q_ptr: str) -> str:
    return ("{\n" + emit_params(c) + "\n"
            f"{REF.kernel('float_classifier_forward')}(kCls, {w}, {b}, {x_ptr}, "
            f"reinterpret_cast<float*>({work_ptr}), {q_ptr});\n}}")


def emit_loss(c: FloatClassifier, work_ptr: str, label: str, loss: str, prediction: str) -> str:
    return ("{\n" + emit_params(c) + "\n"
            f"{prediction} = static_cast<uint16_t>({REF.kernel('float_classifier_loss')}(kCls, "
            f"reinterpret_cast<const float*>({work_ptr}), static_cast<int32_t>({label}), "
            f"&{loss}));\n}}")


def emit_backward(c: FloatClassifier, w: str, b: str, work_ptr: str, label: str, lr: str,
                  scratch_ptr: str | None, dx_data: str | None, dx_scale: str | None) -> str:
    call = (f"{REF.kernel('float_classifier_backward')}(kCls, {w}, {b}, "
            f"reinterpret_cast<const float*>({work_ptr}), static_cast<int32_t>({label}), {lr}, "
            + (f"reinterpret_cast<float*>({scratch_ptr}), {dx_data})" if dx_data is not None
               else "nullptr, nullptr)"))
    stmt = f"{dx_scale} = {call};" if dx_scale is not None else f"{call};"
    return "{\n" + emit_params(c) + "\n" + stmt + "\n}"
