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


def _n_train(p: Any) -> int:
    return p.train.n_train if p.train is not None else 0


def _bias_trains(p: Any) -> bool:
    return p.train is not None and p.train.bias_symbol is not None


def bounded_requant(taps: np.ndarray, p: Any) -> bool:
    """Whether every frozen output channel of a weighted layer (prepared params `p`, filter rows
    `taps`, int8 [channels, taps]) meets the short form's preconditions for every int8 input:
    a negative shift, and |bias| plus the channel's accumulator bound (common.accumulator_bound)
    below 2^29, with the bias frozen (the first flavour of requant_table: trained channels stay
    checked)."""
    if _bias_trains(p):
        return False
    frozen = slice(_n_train(p), None)
    reach = common.accumulator_bound(taps, p.input_offset)[frozen]
    if p.bias is not None:
        reach = reach + np.abs(np.asarray(p.bias, dtype=np.int64))[frozen]
    return bool(np.all(np.asarray(p.shift)[frozen] < 0) and np.all(reach < BOUNDED_ACCUMULATOR))


def moving_bias_limit(taps: np.ndarray, p: Any) -> int | None:
    """The second flavour, for parameters that train: every channel's shift negative, and the
    largest weight part any channel's accumulator can reach, trained weights counted at their
    worst (common.accumulator_bound with n_train), below 2^29. Then the short form is exact for
    every channel as long as each |bias| stays below the limit returned (2^29 minus that
    reach), which the kernel checks on every call since the bias may train. None where a
    shift is not negative or the weights alone could reach 2^29."""
    if not np.all(np.asarray(p.shift) < 0):
        return None
    reach = int(common.accumulator_bound(taps, p.input_offset, n_train=_n_train(p)).max())
    limit = BOUNDED_ACCUMULATOR - reach
    if p.bias is not None and not _bias_trains(p):  # a frozen bias is known now
        if int(np.abs(np.asarray(p.bias, dtype=np.int64)).max(initial=0)) >= limit:
            return None
    return limit if limit > 0 else None


# The short form's adds, r + constant + sign with |r| < 2^29, stay inside int32 while the
# constant's magnitude is at most this.
SHORT_FORM_CONSTANT = 2**31 - 2**29 - 2

# requant_table's last word in its first flavour: trained channels and the bias are not covered.
FROZEN_ONLY = -1


def requant_table(taps: np.ndarray, p: Any) -> np.ndarray | None:
    """requantize_m7.h's per-channel short form, int32 [channels * 3 + 1]: per channel the Q31
    multiplier, the right shift e = -shift, and 2^(e-1) + output_offset * 2^e (the rounding
    constant with the output offset folded in); then one word saying which channels it covers.
    Where the layer's parameters train and moving_bias_limit holds, that word is the limit on
    |bias| under which it covers every channel (the kernel checks the bias as it is then);
    otherwise FROZEN_ONLY, where bounded_requant holds: it covers the frozen channels (trained
    rows hold values that are never read). None when neither holds or a constant would leave
    SHORT_FORM_CONSTANT."""
    n_train = _n_train(p)
    limit = moving_bias_limit(taps, p) if (n_train > 0 or _bias_trains(p)) else None
    if limit is None:
        if not bounded_requant(taps, p):
            return None
        limit, covered = FROZEN_ONLY, slice(n_train, None)
    else:
        covered = slice(None)
    right = -np.asarray(p.shift, dtype=np.int64)
    right = np.maximum(right, 1)  # rows not covered may have any shift; they are never read
    constant = (np.int64(1) << (right - 1)) + np.int64(p.output_offset) * (np.int64(1) << right)
    if np.any(np.abs(constant[covered]) > SHORT_FORM_CONSTANT):
        return None
    constant = np.clip(constant, -SHORT_FORM_CONSTANT, SHORT_FORM_CONSTANT)
    rows = np.stack([np.asarray(p.multiplier, dtype=np.int64), right, constant], axis=1)
    return np.concatenate([rows.reshape(-1), [limit]]).astype(np.int32)


def requant_arg(taps: np.ndarray, p: Any, ctx: Any, hint: str) -> str:
    """requant_table as the `requant` argument of a kernel call: a flash array, or nullptr (the
    kernel then requantizes every channel the checked way)."""
    table = requant_table(taps, p)
    return ", nullptr" if table is None else f", {ctx.const_array(hint, table)}"
