"""Numpy mirror of firmware/kernels/train_math.h (see docs/training.md, "Shared arithmetic").

Every float here is float32 and every expression is evaluated in the order the C++ writes it, so
the training reference and the firmware round identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRAD_MAX = 8191
F32 = np.float32


@dataclass
class QGrad:
    """A gradient tensor: real value = scale * data, data int16 with |data| <= GRAD_MAX."""

    data: np.ndarray
    scale: np.float32

    def real(self) -> np.ndarray:
        return self.data.astype(np.float32) * self.scale


def round_half_away_f32(v: np.ndarray) -> np.ndarray:
    """Halves away from zero in float32 arithmetic (floor(|v| + 0.5f) with v's sign), as the
    training kernels round gradients and updates; the result stays float32, unsaturated."""
    v = np.asarray(v, dtype=np.float32)
    half = F32(0.5)
    return np.where(v >= 0, np.floor(v + half), -np.floor(-v + half)).astype(np.float32)


class XorShift32:
    """The firmware's PRNG; state is a uint32 that is never 0."""

    def __init__(self, seed: int) -> None:
        self.state = (seed & 0xFFFFFFFF) or 1

    def next(self) -> int:
        s = self.state
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        self.state = s
        return s

    def uniform(self, n: int) -> np.ndarray:
        """n draws in order, each (r >> 8) * 2^-24 as float32."""
        out = np.empty(n, dtype=np.float32)
        for i in range(n):
            out[i] = F32(self.next() >> 8) * F32(1.0 / 16777216.0)
        return out


def round_update(v: np.ndarray, stochastic: bool, rng: XorShift32) -> np.ndarray:
    """Rounds update deltas elementwise in C order; stochastic mode draws once per element."""
    v = np.asarray(v, dtype=np.float32)
    if not stochastic:
        return round_half_away_f32(v)
    u = rng.uniform(v.size).reshape(v.shape)
    return np.floor(v + u).astype(np.float32)


def saturate_weight(w: np.ndarray) -> np.ndarray:
    return np.clip(w, -127, 127).astype(np.int8)


def saturate_bias(b: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(b, dtype=np.float64), -(2.0**31), 2.0**31 - 1).astype(np.int32)


def grad_requantize(acc: np.ndarray, acc_scale: np.float32) -> QGrad:
    acc = np.asarray(acc, dtype=np.int64)
    m = int(np.max(np.abs(acc))) if acc.size else 0
    if m == 0:
        return QGrad(np.zeros(acc.shape, np.int16), F32(0.0))
    k = F32(GRAD_MAX) / F32(m)
    d = round_half_away_f32(acc.astype(np.int32).astype(np.float32) * k)
    d = np.clip(d, -GRAD_MAX, GRAD_MAX).astype(np.int16)
    return QGrad(d, F32(acc_scale) * (F32(m) / F32(GRAD_MAX)))


def grad_requantize_f32(g: np.ndarray) -> QGrad:
    g = np.asarray(g, dtype=np.float32)
    m = F32(np.max(np.abs(g))) if g.size else F32(0.0)
    if not m > 0:
        return QGrad(np.zeros(g.shape, np.int16), F32(0.0))
    k = F32(GRAD_MAX) / m
    d = np.clip(round_half_away_f32(g * k), -GRAD_MAX, GRAD_MAX).astype(np.int16)
    return QGrad(d, m / F32(GRAD_MAX))


def fold_channels(d: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """D' = round_half_away_f32(D * ratio[c]) with channels on the last axis."""
    folded = round_half_away_f32(d.astype(np.float32) * np.asarray(ratio, dtype=np.float32))
    return folded.astype(np.int16)
