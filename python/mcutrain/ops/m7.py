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


def bounded_arg(taps: np.ndarray, p: Any) -> str:
    """bounded_requant as the C++ argument of a kernel call."""
    return ", true" if bounded_requant(taps, p) else ", false"
