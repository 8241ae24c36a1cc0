"""Gradient pieces that belong to no single operator (docs/training.md): activation masks, the
losses (cross-entropy after a SOFTMAX or on logits, MSE) and the fan-out sum. Each has a numpy
function (the definition, used by train/reference.py) and an emit_* helper producing the C++
call of its firmware kernel (firmware/kernels/activation_mask.h, loss.h, grad_sum.h), which
reproduces it bit for bit.
"""

from __future__ import annotations

import numpy as np

from ..ops.base import REF, GradRef, GradView
from ..ops.cxx import c_float
from ..ops.train_math import F32, QGrad, grad_requantize, grad_requantize_f32, round_half_away_f32
from .float_classifier import exp_f32

HEADERS = ("kernels/activation_mask.h", "kernels/loss.h", "kernels/grad_sum.h")

# ---- activation masks ----


def mask_bounds(activation: str, act_min: int, act_max: int) -> tuple[int, int] | None:
    """Exclusive (lo, hi) of the outputs whose gradient passes, None when nothing is masked.

    RELU clamps only from below, so its upper bound is 128 (every int8 passes it); NONE is
    straight-through (int8 saturation is not masked)."""
    if activation == "NONE":
        return None
    if activation == "RELU":
        return int(act_min), 128
    if activation in ("RELU6", "RELU_N1_TO_1"):
        return int(act_min), int(act_max)
    raise ValueError(f"no activation mask for fused activation {activation}")


def mask_pack(y: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Bit i (of byte i // 8, least significant first) = lo < y[i] < hi, y in C order."""
    flat = np.asarray(y).astype(np.int32).ravel()
    return np.packbits((flat > lo) & (flat < hi), bitorder="little")


def mask_apply(dy: QGrad, bits: np.ndarray) -> QGrad:
    """dy with zeros where the mask bit is 0; the scale is unchanged."""
    keep = np.unpackbits(np.asarray(bits, np.uint8), count=dy.data.size, bitorder="little")
    data = np.where(keep.reshape(dy.data.shape) != 0, dy.data, 0).astype(np.int16)
    return QGrad(data, F32(dy.scale))


def emit_mask_pack(y_ptr: str, n: int, lo: int, hi: int, bits_ptr: str,
                   optimized: bool = False) -> str:
    """The forward step's mask packing; `optimized`: the Cortex-M7 kernel (same bits)."""
    kernel = "mt::m7::mask_pack" if optimized else REF.kernel("mask_pack")
    return f"{kernel}({y_ptr}, {n}, {lo}, {hi}, reinterpret_cast<uint8_t*>({bits_ptr}));"


def emit_mask_apply(dy: GradRef, bits_ptr: str) -> str:
    return (f"{REF.kernel('mask_apply')}({dy.data()}, {dy.count}, "
            f"reinterpret_cast<const uint8_t*>({bits_ptr}));")



def broadcast_view(source: GradRef, count: int, channels: int, bits_ptr: str | None) -> GradRef:
    """The dy of a step a spatial MEAN's backward is folded into (training_graph.Broadcast): the
    MEAN's output gradient `source` (`channels` values) read at each of `count` pixels, under
    the step's mask bits if any, with the scale the MEAN's rule gives, source / count."""
    mask = "nullptr" if bits_ptr is None else f"reinterpret_cast<const uint8_t*>({bits_ptr})"
    return GradRef(buffer=source.buffer, scale=f"({source.scale} / static_cast<float>({count}))",
                   count=count * channels, view=GradView(0, mask, channels))


# ---- losses ----


def cross_entropy(q: np.ndarray, label: int) -> tuple[float, int, QGrad]:
    """SOFTMAX output q (int8, scale 1/256, zp -128) -> (loss, prediction, dlogits)."""
    q = np.asarray(q)
    flat = q.astype(np.int32).ravel()
    d = flat + 128
    d[label] -= 256
    p = F32(max(flat[label] + 128, 0.5))
    loss = -np.log(p / F32(256.0))
    return float(loss), int(np.argmax(flat)), QGrad(d.astype(np.int16).reshape(q.shape),
                                                     F32(1.0 / 256.0))


def logits_cross_entropy(y: np.ndarray, out_scale: float, out_zp: int,
                         label: int) -> tuple[float, int, QGrad]:
    """Softmax cross-entropy on int8 logits y (scale so; the zero point cancels), as TensorFlow's
    from_logits=True: -> (loss, prediction, dy).

    With b the first index of the largest y and t_o = so * (float)(y_o - y_b) (<= 0, one
    rounding): e_o = exp_f32(t_o), s and r the float32 sums in index order of all e_o and of
    those with o != label, g_o = e_o / s and g_label = -(r / s) (p_label - 1 without its
    cancellation), dy = grad_requantize_f32(g). Loss ln(s) - t_label; prediction b."""
    del out_zp  # softmax is shift-invariant: differences of y need no zero point
    shape = np.shape(y)
    flat = np.asarray(y).astype(np.int32).ravel()
    best = int(np.argmax(flat))
    t = F32(out_scale) * (flat - flat[best]).astype(np.float32)
    e = exp_f32(t)
    total, rest = F32(0.0), F32(0.0)
    for o, v in enumerate(e):  # sequential, as the firmware adds
        total = F32(total + v)
        if o != label:
            rest = F32(rest + v)
    g = (e / total).astype(np.float32)
    g[label] = -(rest / total)
    dy = grad_requantize_f32(g)
    loss = F32(np.log(total)) - t[label]
    return float(loss), best, QGrad(dy.data.reshape(shape), dy.scale)


def _mse_error(y: np.ndarray, out_scale: float, out_zp: int, target: np.ndarray) -> np.ndarray:
    flat = np.asarray(y).astype(np.int32).ravel()
    t = np.asarray(target, np.float32).ravel()
    if t.size != flat.size:
        raise ValueError(f"mse target has {t.size} values for {flat.size} outputs")
    return F32(out_scale) * (flat - int(out_zp)).astype(np.float32) - t


def mse(y: np.ndarray, out_scale: float, out_zp: int, target: np.ndarray) -> tuple[float, QGrad]:
    """Regression loss mean((so * (y - zo) - t)^2) and dy = grad_requantize_f32(2/n * error).

    The loss is the float32 sum in index order divided by n, as the firmware adds it."""
    e = _mse_error(y, out_scale, out_zp, target)
    n = e.size
    g = (F32(2.0) / F32(n)) * e
    dy = grad_requantize_f32(g)
    total = np.cumsum(e * e, dtype=np.float32)[-1] if n else F32(0.0)
    loss = F32(total) / F32(n)
    return float(loss), QGrad(dy.data.reshape(np.shape(y)), dy.scale)


def emit_cross_entropy(q_ptr: str, n: int, label: str, dl: GradRef, loss: str,
                       prediction: str) -> str:
    """`loss` is a float lvalue, `prediction` an integer lvalue, `label` an integer expression
    already checked to be < n."""
    return (f"{prediction} = static_cast<uint16_t>({REF.kernel('softmax_cross_entropy_grad')}("
            f"{q_ptr}, {n}, static_cast<int32_t>({label}), {dl.data()}, &{dl.scale}, "
            f"&{loss}));")


def emit_logits_cross_entropy(y_ptr: str, n: int, out_scale: float, label: str, dl: GradRef,
                              loss: str, prediction: str) -> str:
    """Like emit_cross_entropy, for int8 logits of scale `out_scale`."""
    return (f"{prediction} = static_cast<uint16_t>({REF.kernel('logits_cross_entropy_grad')}("
            f"{y_ptr}, {n}, {c_float(out_scale)}, static_cast<int32_t>({label}), {dl.data()}, "
            f"&{dl.scale}, &{loss}));")


def emit_mse(y_ptr: str, n: int, out_scale: float, out_zp: int, targets: str, dl: GradRef,
             loss: str) -> str:
    return (f"{loss} = {REF.kernel('mse_grad')}({y_ptr}, {n}, {c_float(out_scale)}, {int(out_zp)}, "
            f"{targets}, {dl.data()}, &{dl.scale});")


# ---- fan-out ----


def grad_sum(a: QGrad, b: QGrad) -> QGrad:
    """Sum of two gradients of one tensor, at the larger scale; a zero-scale term is skipped."""
    sa, sb = F32(a.scale), F32(b.scale)
    if sa == 0 or sb == 0:
        keep = b if sa == 0 else a
        return QGrad(keep.data.astype(np.int16).copy(), F32(keep.scale))
    s = max(sa, sb)
    va = round_half_away_f32(a.data.astype(np.float32) * (sa / s))
    vb = round_half_away_f32(b.data.reshape(a.data.shape).astype(np.float32) * (sb / s))
    acc = va.astype(np.int32) + vb.astype(np.int32)
    return grad_requantize(acc, s)


def emit_grad_sum(a: GradRef, b: GradRef, out: GradRef) -> str:
    if not a.count == b.count == out.count:
        raise ValueError("fan-out gradients must have the same element count")
    return (f"{out.scale} = {REF.kernel('grad_sum')}({a.data()}, {a.scale}, {b.data()}, {b.scale}, "
            f"{out.count}, {out.acc()});")
