"""Host mirror of the firmware's fixed-point arithmetic (firmware/kernels/fixed_point.h).

Everything here reproduces TensorFlow Lite's integer requantization bit for bit, so the numpy
reference of each operator (mcutrain.ops) and the C++ kernels compute the same int8 values.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class ScaleRangeError(ValueError):
    """Scales whose requantization the int32 kernels cannot represent; compiler._prepare turns
    it into a ModelError naming the operator."""


def round_half_away_f64(x: float) -> float:
    """One float64 scalar rounded like C's std::round, halves away from zero (Python's round()
    goes to even): for the compile-time quantization parameters."""
    return math.copysign(math.floor(abs(x) + 0.5), x)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Split a real multiplier into a Q31 significand and a power-of-two shift.

    Matches TFLite's QuantizeMultiplier: real = significand * 2**(shift - 31).
    """
    if real == 0.0:
        return 0, 0
    if not math.isfinite(real):
        raise ScaleRangeError(f"its scales give a requantization multiplier of {real}")
    fraction, shift = math.frexp(real)
    significand = int(round_half_away_f64(fraction * (1 << 31)))
    if significand == 1 << 31:
        significand //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    # TFLite clamps shift > 30 only in its single-rounding build; the default build does not.
    # A left shift past 31 bits is undefined in the int32 kernels (TFLite's too): refuse it.
    if shift > 31:
        raise ScaleRangeError(f"its scales give a requantization multiplier of {real:.3g}, "
                              f"which needs a {shift}-bit left shift (31 at most); the scales "
                              "are corrupt")
    return significand, shift


def as_double(x: float | np.floating) -> float:
    """A float32 model parameter widened to double the way TFLite's C++ does it."""
    return float(np.float32(x))


def saturating_rounding_doubling_high_mul(
    a: np.ndarray, b: np.ndarray | int
) -> np.ndarray:
    a64 = np.asarray(a, dtype=np.int64)
    b64 = np.asarray(b, dtype=np.int64)
    ab = a64 * b64
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    total = ab + nudge
    # C++ integer division truncates toward zero; numpy's // floors.
    high = np.where(total >= 0, total // (1 << 31), -((-total) // (1 << 31)))
    overflow = (a64 == INT32_MIN) & (b64 == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int64)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    x64 = np.asarray(x, dtype=np.int64)
    exp = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exp) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0)
    return (x64 >> exp) + (remainder > threshold)


def multiply_by_quantized_multiplier(
    x: np.ndarray, significand: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    """Vectorised MultiplyByQuantizedMultiplier; significand/shift broadcast against x."""
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    # Wrap to int32 like the C++ (uint32 shift, reinterpret); valid models never overflow here.
    shifted = (np.asarray(x, dtype=np.int64) << left).astype(np.int64)
    shifted = ((shifted + 2**31) % 2**32) - 2**31
    high = saturating_rounding_doubling_high_mul(shifted, significand)
    return rounding_divide_by_pot(high, right)


def multiply_by_quantized_multiplier_smaller_than_one_exp(
    x: np.ndarray, significand: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    return rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x, significand), -np.asarray(shift, dtype=np.int64)
    )


def activation_range(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """int8 clamp bounds of a fused activation, as TFLite's CalculateActivationRangeQuantized."""
    qmin, qmax = -128, 127

    def quantize(v: float) -> int:
        # TFLite divides in float32 before rounding; so do we. Like TFLite's Quantize(), refuse
        # a bound that does not fit int32.
        with np.errstate(over="ignore"):
            scaled = float(np.float32(v) / np.float32(scale))
        if not (math.isfinite(scaled) and INT32_MIN <= round_half_away_f64(scaled) <= INT32_MAX):
            raise ValueError(f"the {activation} bound {v} / scale {scale:.4g} overflows int32")
        return zero_point + int(round_half_away_f64(scaled))

    if activation == "NONE":
        return qmin, qmax
    if activation == "RELU":
        return max(qmin, quantize(0.0)), qmax
    if activation == "RELU6":
        return max(qmin, quantize(0.0)), min(qmax, quantize(6.0))
    if activation == "RELU_N1_TO_1":
        return max(qmin, quantize(-1.0)), min(qmax, quantize(1.0))
    raise ValueError(
        f"fused activation {activation} is not supported (NONE, RELU, RELU6, RELU_N1_TO_1)"
    )
