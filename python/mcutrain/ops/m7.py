"""Host-side facts the Cortex-M7 kernel variants share (firmware/kernels/*_m7.*).

Optimized kernels get what they can decide at compile time as arguments the variant's
`constants` hook emits (ops/base.py KernelVariant): re-packed weight tables, and whether a
layer's requantization may take the short exact form of firmware/kernels/requantize_m7.h.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import common

# requantize_m7.h's short form (Requant::kBounded, kSaturate) is exact while |accumulator| stays
# below this.
BOUNDED_ACCUMULATOR = 2**29


def bounded_requant(taps: np.ndarray, p: Any) -> bool:
    """Whether every frozen output channel of a weighted layer (prepared params `p`, filter rows
    `taps`, int8 [channels, taps]) meets the short form's preconditions for every int8 input:
    a negative shift, and |bias| plus the channel's accumulator bound (common.accumulator_bound)
    below 2^29. Trained channels (the first p.train.n_train) are always requantized the checked
    way, and so is every channel when the bias trains: trained parameters move on the device."""
    n_train = p.train.n_train if p.train is not None else 0
    if p.train is not None and p.train.bias_symbol is not None:
        return False
    frozen = slice(n_train, None)
    reach = common.accumulator_bound(taps, p.input_offset)[frozen]
    if p.bias is not None:
        reach = reach + np.abs(np.asarray(p.bias, dtype=np.int64))[frozen]
    return bool(np.all(np.asarray(p.shift)[frozen] < 0) and np.all(reach < BOUNDED_ACCUMULATOR))


# The short form's adds, r + constant + sign with |r| < 2^29, stay inside int32 while the
# constant's magnitude is at most this.
SHORT_FORM_CONSTANT = 2**31 - 2**29 - 2


def requant_table(taps: np.ndarray, p: Any) -> np.ndarray | None:
    """requantize_m7.h's per-channel short form, int32 [channels, 3]: the Q31 multiplier, the
    right shift e = -shift, and 2^(e-1) + output_offset * 2^e (the rounding constant with the
    output offset folded in); None where a frozen channel misses bounded_requant's
    preconditions or a constant would leave SHORT_FORM_CONSTANT. Trained channels' rows are
    never read (their requantization stays checked) and hold their values all the same."""
    if not bounded_requant(taps, p):
        return None
    right = -np.asarray(p.shift, dtype=np.int64)
    right = np.maximum(right, 1)  # trained channels may have any shift; their rows are unused
    constant = (np.int64(1) << (right - 1)) + np.int64(p.output_offset) * (np.int64(1) << right)
    n_train = p.train.n_train if p.train is not None else 0
    if np.any(np.abs(constant[n_train:]) > SHORT_FORM_CONSTANT):
        return None
    constant = np.clip(constant, -SHORT_FORM_CONSTANT, SHORT_FORM_CONSTANT)
    return np.stack([np.asarray(p.multiplier, dtype=np.int64), right, constant],
                    axis=1).astype(np.int32)


def requant_arg(taps: np.ndarray, p: Any, ctx: Any, hint: str) -> str:
    """requant_table as the `requant` argument of a kernel call: a flash array, or nullptr (the
    kernel then requantizes every channel the checked way)."""
    table = requant_table(taps, p)
    return ", nullptr" if table is None else f", {ctx.const_array(hint, table.reshape(-1))}"
