"""SOFTMAX (int8 -> int8): TFLite's fixed-point reference softmax, bit for bit.

What TFLite 2.21 runs (tensorflow/lite/kernels/activations.cc, SoftmaxPrepare/SoftmaxEval with
kReference, as the BUILTIN_REF resolver registers them): PreprocessSoftmaxScaling turns
beta * input_scale into a Q31 multiplier and a left shift for a Q5.26 input difference, and
reference_ops::Softmax evaluates, per row along the last axis,

    diff      = x - max(row)                      (skipped, output -128, when diff < diff_min)
    e         = exp_on_negative_values(Q5.26(diff * beta * input_scale))   (gemmlowp, Q0.31)
    sum       = sum of e rescaled to Q12.19
    1 / sum   = one_over_one_plus_x_for_x_in_0_1 on the normalised sum (Newton-Raphson)
    out       = RoundingDivideByPOT(e * (1 / sum), num_bits_over_unit + 23) - 128, clamped

The output must be scale 1/256, zero point -128 (TFLite checks it; the arithmetic assumes it).
TFLite Micro's int8 softmax uses this same reference recipe (CMSIS-NN's arm_softmax_s8 follows
it too).

The DEFAULT (optimized) resolver does not run this: its Prepare fills a 256-entry float table of
exp(-input_scale * beta * i) (optimized_ops::PopulateSoftmaxLookupTable; a uint16 table on
aarch64 clang builds) and its Eval sums and divides in float before rounding. It may therefore
differ from this reference by a step, though with TF 2.21 on x86 it agreed on all 3,950 outputs
that test/test_ops_reduce_vs_tflite.py compares. The reference resolver is what we match.

macs() counts the one multiplication per element of the final rescale (rows * row length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from ..frontend import options as opt
from ..frontend.graph import Graph, ModelError, Operator
from . import quant
from .base import EmitContext, OpDef, kernel_name, register
from .common import fail, output_tensor, require_int8_activation, struct_init, wrap_int32

SCALED_DIFF_INTEGER_BITS = 5  # the exp() input is Q5.26
ACCUMULATION_INTEGER_BITS = 12  # the sum of exps is Q12.19
MAX_DEPTH = 511  # longer rows could overflow TFLite's final shift (it aborts; we refuse)

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class SoftmaxParams:
    """Fields in the order of mt::SoftmaxParams (firmware/kernels/softmax.h), plus host data."""

    rows: int  # product of all dimensions but the last
    depth: int  # length of the last dimension, the softmax axis
    input_multiplier: int  # Q31 significand of beta * input_scale * 2^26
    input_left_shift: int  # its exponent, in [0, 30]
    diff_min: int  # differences below this contribute exp() = 0 (output -128)
    shape: tuple[int, ...]

    def fields(self) -> list[tuple[str, int]]:
        return [("rows", self.rows), ("depth", self.depth),
                ("input_multiplier", self.input_multiplier),
                ("input_left_shift", self.input_left_shift), ("diff_min", self.diff_min)]


def softmax_scaling(beta: float, input_scale: float) -> tuple[int, int, int]:
    """(multiplier, left_shift, diff_min) as TFLite's PreprocessSoftmaxScaling and
    CalculateInputRadius compute them (double rounding build), for beta * scale * 2^26 > 1."""
    real = min(beta * input_scale * (1 << (31 - SCALED_DIFF_INTEGER_BITS)), (1 << 31) - 1.0)
    fraction, exponent = math.frexp(real)
    significand = int(quant.round_half_away_f64(fraction * (1 << 31)))
    if significand == 1 << 31:
        significand //= 2
        exponent += 1
    max_rescaled = (((1 << SCALED_DIFF_INTEGER_BITS) - 1)
                    * float(1 << (31 - SCALED_DIFF_INTEGER_BITS)) / float(1 << exponent))
    diff_min = -int(math.floor(max_rescaled))
    # TFLite allows a shift of 31 (beta * scale >= 16); then diff_min is 0, only the row maximum
    # passes and its scaled difference is 0 whatever the multiplier, so 30 gives equal results.
    return significand, min(exponent, 30), diff_min


def prepare(op: Operator, graph: Graph) -> SoftmaxParams:
    if len(op.inputs) != 1 or op.inputs[0] < 0:
        raise fail(op, "expects exactly one input")
    x, out = graph.tensor(op.inputs[0]), output_tensor(op, graph)
    require_int8_activation(op, x, "input")
    require_int8_activation(op, out, "output")
    if len(x.shape) < 1:
        raise fail(op, "the input must have at least one dimension")
    if tuple(out.shape) != tuple(x.shape) and out.num_elements != x.num_elements:
        raise fail(op, f"output shape {tuple(out.shape)} differs from input {tuple(x.shape)}")
    scale_error = abs(np.float32(out.scale) - np.float32(1.0 / 256))
    if out.zero_point != -128 or scale_error > np.float32(0.001 / 256):
        raise fail(op, f"output quantization must be scale 1/256, zero point -128 (got "
                       f"{out.scale}, {out.zero_point})")
    beta = quant.as_double(op.options.get("beta", 1.0))
    if not beta * quant.as_double(x.scale) * (1 << 26) > 1.0:
        raise fail(op, f"beta * input_scale = {beta * x.scale:g} is too small (TFLite needs "
                       "more than 2^-26)")
    depth = int(x.shape[-1])
    if not 1 <= depth <= MAX_DEPTH:
        raise fail(op, f"softmax over {depth} values; supported row lengths are 1..{MAX_DEPTH}")
    multiplier, left_shift, diff_min = softmax_scaling(beta, quant.as_double(x.scale))
    return SoftmaxParams(rows=x.num_elements // depth, depth=depth, input_multiplier=multiplier,
                         input_left_shift=left_shift, diff_min=diff_min,
                         shape=tuple(int(d) for d in out.shape))


# --- gemmlowp fixed-point arithmetic on int64 arrays holding int32 values ----------------------

def _mul(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """FixedPoint product: SaturatingRoundingDoublingHighMul of the raw values."""
    return quant.saturating_rounding_doubling_high_mul(a, b)


def _shl_saturating(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingMultiplyByPOT for a positive exponent."""
    threshold = (1 << (31 - exponent)) - 1
    shifted = wrap_int32(np.asarray(x, dtype=np.int64) << exponent)
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, shifted))


def _exp_quarter_interval(a: np.ndarray) -> np.ndarray:
    """exp(a) for Q0.31 a in [-1/4, 0): 4th-order Taylor expansion around -1/8."""
    constant_term = 1895147668  # exp(-1/8) in Q0.31
    one_third = 715827883
    x = wrap_int32(a + (1 << 28))  # a + 1/8
    x2 = _mul(x, x)
    x3 = _mul(x2, x)
    x4 = _mul(x2, x2)
    x4_over_4 = quant.rounding_divide_by_pot(x4, 2)
    poly = quant.rounding_divide_by_pot(
        wrap_int32(_mul(wrap_int32(x4_over_4 + x3), one_third) + x2), 1)
    return wrap_int32(constant_term + _mul(constant_term, wrap_int32(x + poly)))


# exp(-2^k) in Q0.31 for k = -2..4, applied for each set bit of the Q5.26 remainder
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a: np.ndarray) -> np.ndarray:
    """exp(a) for Q5.26 a <= 0, result in Q0.31 (gemmlowp's exp_on_negative_values)."""
    a = np.asarray(a, dtype=np.int64)
    quarter = 1 << 24
    a_mod_quarter_minus_quarter = wrap_int32((a & (quarter - 1)) - quarter)
    result = _exp_quarter_interval(_shl_saturating(a_mod_quarter_minus_quarter, 5))
    remainder = wrap_int32(a_mod_quarter_minus_quarter - a)
    for exponent, factor in _EXP_BARREL:
        bit = 1 << (26 + exponent)
        result = np.where((remainder & bit) != 0, _mul(result, factor), result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """1 / (1 + a) for Q0.31 a in [0, 1), result in Q0.31 (three Newton-Raphson steps)."""
    total = np.asarray(a, dtype=np.int64) + INT32_MAX
    sign = np.where(total >= 0, 1, -1)
    half_denominator = (total + sign) // 2  # RoundingHalfSum; total >= 0, so // truncates
    x = wrap_int32(1515870810 + _mul(half_denominator, -1010580540))  # 48/17 - 32/17 * d, Q2.29
    for _ in range(3):
        one_minus = wrap_int32((1 << 29) - _mul(half_denominator, x))
        x = wrap_int32(x + _shl_saturating(_mul(x, one_minus), 2))
    return _shl_saturating(x, 1)


def reciprocal(total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 / total as Q0.31 scaled into [0.5, 1), num_bits_over_unit) of a positive Q12.19 sum,
    as TFLite's GetReciprocal."""
    total = np.asarray(total, dtype=np.int64)
    headroom_plus_one = 32 - np.frexp(total.astype(np.float64))[1].astype(np.int64)
    shifted_minus_one = wrap_int32((total << headroom_plus_one) - (1 << 31))
    return one_over_one_plus_x(shifted_minus_one), ACCUMULATION_INTEGER_BITS - headroom_plus_one


def reference(params: SoftmaxParams, inputs: list[np.ndarray]) -> np.ndarray:
    x = np.asarray(inputs[0], dtype=np.int64).reshape(params.rows, params.depth)
    diff = x - x.max(axis=1, keepdims=True)
    used = diff >= params.diff_min
    # |diff| <= -diff_min keeps diff << left_shift inside int32 (TFLite's input radius).
    scaled = _mul(np.where(used, diff, 0) << params.input_left_shift, params.input_multiplier)
    exps = exp_on_negative_values(scaled)
    rescaled = quant.rounding_divide_by_pot(exps, ACCUMULATION_INTEGER_BITS)
    total = wrap_int32(np.where(used, rescaled, 0).sum(axis=1, keepdims=True))
    scale, bits_over_unit = reciprocal(total)
    exponent = bits_over_unit + 31 - 8
    out = quant.rounding_divide_by_pot(_mul(scale, exps), exponent) - 128
    out = np.where(used, np.clip(out, -128, 127), -128)
    return out.astype(np.int8).reshape(params.shape)


def emit(params: SoftmaxParams, ctx: EmitContext, inputs: list[str], output: str) -> str:
    init = struct_init("mt::SoftmaxParams", "p", params.fields())
    body = init.replace("\n", "\n  ")
    return f"{{\n  {body}\n  {kernel_name(ctx, 'softmax_s8')}(p, {inputs[0]}, {output});\n}}\n"


def macs(params: SoftmaxParams) -> int:
    """One multiplication per element (the final rescale by 1 / sum)."""
    return params.rows * params.depth


def parse_options(op: Any) -> dict[str, Any]:
    """SoftmaxOptions; required (TFLite would run a missing table with beta 0), beta finite."""
    beta = float(opt.required(op, tflite.SoftmaxOptions, "beta").Beta())
    if not np.isfinite(beta):
        raise ModelError(f"a SOFTMAX has beta {beta}, which is not finite; re-export the model")
    return {"beta": beta}


OPTIONS = opt.OptionsDef(tflite.BuiltinOptions.SoftmaxOptions, parse_options)

OP = register(OpDef("SOFTMAX", prepare, reference, emit, macs, header="kernels/softmax.h",
                    options=OPTIONS))
