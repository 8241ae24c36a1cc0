"""Backward rules of MEAN, pooling, PAD/PADV2 and CONCATENATION, activation masks, losses and the
fan-out sum (docs/training.md): numpy definition vs C++ kernel, bit for bit.

Each case is one line. Two checks per case:
- the numpy rule equals the kernel, reached through the code the production emitters write
  (test/kernels/emitted.py: run_backward for each operator's backward rule, Emission for the
  training codegen's masks, losses and fan-out sum), int16 data equal, scales equal as float32
  bits;
- independently, the real-valued gradient (scale * data) matches the float gradient of the
  dequantized operator (TensorFlow's GradientTape, or a float64 numpy formula) within the
  quantization error of the rule.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import test_misc_kernels as misc
from emitted import Emission, run_backward
from host_build import host_compile

from mcutrain.ops.base import BACKWARD, GradRef, lookup
from mcutrain.ops.cxx import ConstPool
from mcutrain.ops.train_math import F32, GRAD_MAX, QGrad, XorShift32
from mcutrain.train import grad_rules

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "firmware" / "kernels"

# ---- single-operator graphs ----------------------------------------------------------------


@dataclass
class Case(misc.Case):
    """The forward kernels' single-operator case, plus what its backward test feeds it."""

    dy_kind: str = "rand"  # rand | max | zero
    x_kind: str = "rand"  # rand | ties | distinct
    seed: int = 0

    @property
    def dynamic(self) -> list[int]:
        return [i for i in self.inputs if not self.tensors[i].is_const]


class Builder(misc.Builder):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.seed = seed

    def act(self, shape, scale=None, zp=None, const=False) -> int:
        q = misc._quant(self.rng, scale, zp)
        data = self.rng.integers(-128, 128, size=shape, dtype=np.int8) if const else None
        return self._add(shape, "int8", q, data)

    def case(self, opcode, inputs, out_shape, options, same_quant_as=None, **kinds) -> Case:
        if same_quant_as is not None:
            q = self.tensors[same_quant_as].quant
            self.act(out_shape, float(q.scale[0]), int(q.zero_point[0]))
        else:
            self.act(out_shape)
        return Case(opcode, options, self.tensors, list(inputs), seed=self.seed, **kinds)


def mean(seed, shape, axes, keep_dims=False, **kinds) -> Case:
    b = Builder(seed)
    x = b.act(shape)
    rank = len(shape)
    axes_n = [a % rank for a in axes]
    out = [1 if d in axes_n else n for d, n in enumerate(shape)] if keep_dims else \
        [n for d, n in enumerate(shape) if d not in axes_n]
    return b.case("MEAN", [x, b.ints(axes)], out, {"keep_dims": keep_dims}, **kinds)


def pool(seed, opcode, shape, filt, stride, padding, out_hw, **kinds) -> Case:
    b = Builder(seed)
    x = b.act(shape)
    opts = {"padding": padding, "stride_h": stride[0], "stride_w": stride[1],
            "filter_h": filt[0], "filter_w": filt[1], "activation": "NONE"}
    return b.case(opcode, [x], (shape[0], *out_hw, shape[3]), opts, same_quant_as=x, **kinds)


def pad(seed, shape, pads, value=None, **kinds) -> Case:
    b = Builder(seed)
    x = b.act(shape)
    inputs = [x, b.ints(pads)]
    opcode = "PAD"
    if value is not None:
        opcode = "PADV2"
        inputs.append(b._add((1,), "int8", b.tensors[x].quant, np.array([value], np.int8)))
    out = tuple(d + p0 + p1 for d, (p0, p1) in zip(shape, pads, strict=True))
    return b.case(opcode, inputs, out, {}, same_quant_as=x, **kinds)


def concat(seed, shapes, axis, const=(), **kinds) -> Case:
    b = Builder(seed)
    ids = [b.act(s, 0.05, 3, const=k in const) for k, s in enumerate(shapes)]
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return b.case("CONCATENATION", ids, out, {"axis": axis, "activation": "NONE"},
                  same_quant_as=ids[0], **kinds)


def logistic(seed, shape, scale, **kinds) -> Case:
    b = Builder(seed)
    x = b.act(shape, scale)
    b.act(shape, 1.0 / 256.0, -128)  # the output quantization TFLite requires
    return Case("LOGISTIC", {}, b.tensors, [x], seed=seed, **kinds)


AVG, MAX = "AVERAGE_POOL_2D", "MAX_POOL_2D"
CASES: dict[str, Callable[[], Case]] = {
    "mean_hw": lambda: mean(1, (1, 4, 4, 8), [1, 2]),
    "mean_hw_keep": lambda: mean(2, (2, 3, 5, 4), [1, 2], keep_dims=True),
    "mean_time": lambda: mean(3, (2, 7, 3), [1]),
    "mean_all": lambda: mean(4, (3, 5), [0, 1]),
    "mean_max_dy": lambda: mean(5, (1, 6, 6, 2), [1, 2], dy_kind="max"),
    "mean_zero_dy": lambda: mean(6, (1, 3, 3, 4), [1, 2], dy_kind="zero"),
    "avg_valid_2x2": lambda: pool(10, AVG, (1, 6, 6, 3), (2, 2), (2, 2), "VALID", (3, 3)),
    "avg_same_3x3_s1": lambda: pool(11, AVG, (2, 5, 7, 4), (3, 3), (1, 1), "SAME", (5, 7)),
    "avg_same_3x2_s2": lambda: pool(12, AVG, (1, 7, 6, 5), (3, 2), (2, 2), "SAME", (4, 3)),
    "avg_global_7x7": lambda: pool(13, AVG, (1, 7, 7, 6), (7, 7), (1, 1), "VALID", (1, 1)),
    "avg_1x1": lambda: pool(14, AVG, (1, 3, 3, 2), (1, 1), (1, 1), "VALID", (3, 3)),
    "avg_max_dy": lambda: pool(15, AVG, (1, 5, 5, 3), (3, 3), (1, 1), "SAME", (5, 5),
                               dy_kind="max"),
    "avg_zero_dy": lambda: pool(16, AVG, (1, 4, 4, 2), (2, 2), (2, 2), "VALID", (2, 2),
                                dy_kind="zero"),
    "max_valid_2x2": lambda: pool(20, MAX, (1, 6, 6, 3), (2, 2), (2, 2), "VALID", (3, 3)),
    "max_same_3x3_s2": lambda: pool(21, MAX, (2, 7, 5, 4), (3, 3), (2, 2), "SAME", (4, 3)),
    "max_same_s3": lambda: pool(22, MAX, (1, 8, 8, 2), (2, 3), (3, 3), "SAME", (3, 3)),
    "max_overlap_s1": lambda: pool(23, MAX, (1, 6, 5, 3), (3, 3), (1, 1), "SAME", (6, 5)),
    "max_ties_const": lambda: pool(24, MAX, (1, 4, 4, 2), (2, 2), (1, 1), "VALID", (3, 3),
                                   x_kind="ties"),
    "max_ties_few": lambda: pool(25, MAX, (2, 6, 6, 3), (3, 3), (2, 2), "SAME", (3, 3),
                                 x_kind="few"),
    "max_max_dy": lambda: pool(26, MAX, (1, 6, 6, 2), (3, 3), (1, 1), "SAME", (6, 6),
                               dy_kind="max", x_kind="ties"),
    "max_zero_dy": lambda: pool(27, MAX, (1, 4, 4, 2), (2, 2), (2, 2), "VALID", (2, 2),
                                dy_kind="zero"),
    "pad_hw": lambda: pad(30, (1, 4, 5, 3), [[0, 0], [1, 2], [2, 1], [0, 0]]),
    "pad_all_dims": lambda: pad(31, (2, 3, 3, 2), [[1, 0], [0, 1], [1, 1], [2, 3]]),
    "pad_2d": lambda: pad(32, (3, 4), [[1, 1], [0, 2]]),
    "pad_none": lambda: pad(33, (1, 2, 2, 3), [[0, 0], [0, 0], [0, 0], [0, 0]]),
    "padv2_value": lambda: pad(34, (1, 3, 3, 4), [[0, 0], [1, 1], [1, 1], [0, 0]], value=-7),
    "pad_max_dy": lambda: pad(35, (1, 3, 3, 2), [[0, 0], [1, 1], [1, 1], [0, 0]], dy_kind="max"),
    "concat_channels": lambda: concat(40, [(1, 3, 3, 4), (1, 3, 3, 2)], 3),
    "concat_neg_axis": lambda: concat(41, [(1, 2, 3, 4), (1, 2, 3, 1), (1, 2, 3, 3)], -1),
    "concat_height": lambda: concat(42, [(2, 2, 3, 4), (2, 5, 3, 4)], 1),
    "concat_batch": lambda: concat(43, [(1, 4), (3, 4)], 0),
    "concat_const": lambda: concat(44, [(1, 2, 2, 3), (1, 2, 2, 5), (1, 2, 2, 2)], 3,
                                   const=(1,)),
    "concat_zero_dy": lambda: concat(45, [(1, 2, 2), (1, 3, 2)], 1, dy_kind="zero"),
    "logistic_4d": lambda: logistic(50, (1, 4, 4, 8), 0.05),
    "logistic_wide": lambda: logistic(51, (3, 37), 0.2),
    "logistic_narrow": lambda: logistic(52, (2, 64), 0.01),
    "logistic_max_dy": lambda: logistic(53, (1, 5, 5, 3), 0.1, dy_kind="max"),
    "logistic_zero_dy": lambda: logistic(54, (7,), 0.1, dy_kind="zero"),
}


@dataclass
class Prepared:
    case: Case
    params: object
    xs: list[np.ndarray]  # dynamic inputs
    dy: QGrad
    expected: list[QGrad | None] = field(default_factory=list)


def _inputs(case: Case, rng: np.random.Generator) -> list[np.ndarray]:
    xs = []
    for i in case.dynamic:
        shape = case.tensors[i].shape
        if case.x_kind == "ties":
            xs.append(np.full(shape, int(rng.integers(-128, 128)), np.int8))
        elif case.x_kind == "few":
            xs.append(rng.integers(-1, 2, size=shape).astype(np.int8))
        elif case.x_kind == "distinct":  # no ties inside any (batch, channel) plane
            n, h, w, c = shape
            planes = [rng.choice(256, h * w, replace=False) - 128 for _ in range(n * c)]
            xs.append(np.stack(planes).reshape(n, c, h, w).transpose(0, 2, 3, 1).astype(np.int8))
        else:
            xs.append(rng.integers(-128, 128, size=shape, dtype=np.int8))
    return xs


def _dy(kind: str, shape, rng: np.random.Generator) -> QGrad:
    if kind == "zero":
        return QGrad(np.zeros(shape, np.int16), F32(0.0))
    if kind == "max":
        sign = np.where(rng.integers(0, 2, size=shape) == 1, 1, -1)
        data = (sign * GRAD_MAX).astype(np.int16)
        data.flat[0] = GRAD_MAX  # at least one positive extreme
        return QGrad(data, F32(rng.uniform(1e-4, 1e-1)))
    data = rng.integers(-GRAD_MAX, GRAD_MAX + 1, size=shape).astype(np.int16)
    data.flat[int(rng.integers(0, data.size))] = -GRAD_MAX
    return QGrad(data, F32(rng.uniform(1e-4, 1e-1)))


def prepare(case_id: str, x_kind: str | None = None) -> Prepared:
    case = CASES[case_id]()
    if x_kind is not None:
        case.x_kind = x_kind
    rng = np.random.default_rng(1000 + case.seed)
    params = lookup(case.op).prepare(case.op, case.graph)
    xs = _inputs(case, rng)
    dy = _dy(case.dy_kind, case.tensors[-1].shape, rng)
    bdef = BACKWARD[case.opcode]
    saves = bdef.saves_input(params, None)
    saved = [x if keep else None for x, keep in zip(xs, saves, strict=True)]
    expected = bdef.reference(params, saved, dy, [True] * len(xs), None, F32(0.0),
                              XorShift32(1))
    return Prepared(case, params, xs, dy, expected)


def run_emitted_rule(p: Prepared) -> list[tuple[np.ndarray, np.float32]]:
    """The case's input gradients from its emitted backward rule, as (int16 data, scale)."""
    sizes: list[int | None] = [int(np.prod(p.case.tensors[i].shape)) for i in p.case.dynamic]
    saves = BACKWARD[p.case.opcode].saves_input(p.params, None)
    saved = [x if keep else None for x, keep in zip(p.xs, saves, strict=True)]
    grads = run_backward(p.case.opcode, p.params, saved, p.dy, sizes)
    return [(g.data, g.scale) for g in grads if g is not None]


def assert_same(actual: np.ndarray, actual_scale, expected: QGrad, what: str) -> None:
    assert expected.data.dtype == np.int16, what
    np.testing.assert_array_equal(np.asarray(actual).ravel(), expected.data.ravel(), err_msg=what)
    assert np.float32(actual_scale).tobytes() == np.float32(expected.scale).tobytes(), \
        f"{what}: scale {actual_scale!r} != {expected.scale!r}"
    assert np.all(np.abs(expected.data.astype(np.int32)) <= GRAD_MAX), what


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_op_backward_kernel_matches_reference(case_id: str) -> None:
    p = prepare(case_id)
    for i, (t, exp) in enumerate(zip(p.case.dynamic, p.expected, strict=True)):
        assert exp is not None and exp.data.shape == p.case.tensors[t].shape, case_id
        if p.case.dy_kind == "zero":
            assert exp.scale == 0 and not exp.data.any()
        del i
    for k, ((data, scale), exp) in enumerate(zip(run_emitted_rule(p), p.expected, strict=True)):
        assert_same(data, scale, exp, f"{case_id} input {k}")


def test_need_dx_false_gives_none() -> None:
    p = prepare("concat_channels")
    bdef = BACKWARD["CONCATENATION"]
    out = bdef.reference(p.params, [None, None], p.dy, [False, True], None, F32(0), XorShift32(1))
    assert out[0] is None and out[1] is not None
    for case_id in ("mean_hw", "avg_valid_2x2", "max_valid_2x2", "pad_hw"):
        q = prepare(case_id)
        rule = BACKWARD[q.case.opcode]
        saved = [x if s else None for x, s in zip(q.xs, rule.saves_input(q.params, None),
                                                  strict=True)]
        assert rule.reference(q.params, saved, q.dy, [False], None, F32(0), XorShift32(1)) == [None]
        assert rule.emit(q.params, ConstPool(), ["x"], GradRef("(a)", "s", 1), [None], None) == ""


def test_saves_input_and_depth() -> None:
    for case_id, saves in (("mean_hw", [False]), ("avg_valid_2x2", [False]),
                           ("max_valid_2x2", [True]), ("pad_hw", [False]),
                           ("concat_const", [False, False]), ("logistic_4d", [True])):
        p = prepare(case_id)
        assert BACKWARD[p.case.opcode].saves_input(p.params, None) == saves, case_id
    # 3x3 stride 1 SAME: input (1, 1) sits in a corner window (4 taps, weight 1024), four edge
    # windows (6 taps, 683) and four full ones (9 taps, 455): 5576 = 43.6 * 128 -> K = 44.
    p = prepare("avg_same_3x3_s1")
    assert BACKWARD[AVG].input_grad_depth(p.params) == 44
    assert BACKWARD[MAX].input_grad_depth(prepare("max_overlap_s1").params) == 9
    assert BACKWARD[MAX].input_grad_depth(prepare("max_valid_2x2").params) == 1
    # |dy * s'| <= 8191 * 8192 = 8191 * 128 * 64
    assert BACKWARD["LOGISTIC"].input_grad_depth(prepare("logistic_4d").params) == 64


# ---- independent float check (TensorFlow GradientTape on the dequantized op) -------------------


def _dequant(case: Case, t: int, x: np.ndarray) -> np.ndarray:
    q = case.tensors[t].quant
    return (x.astype(np.float64) - float(q.zero_point[0])) * float(q.scale[0])


def _float_op(case: Case, params, tf):
    o = case.options
    if case.opcode == "MEAN":
        axes = [int(a) for a in case.tensors[case.inputs[1]].data]
        return lambda xs: tf.reduce_mean(xs[0], axis=axes, keepdims=bool(o["keep_dims"]))
    if case.opcode in (AVG, MAX):
        fn = tf.nn.avg_pool2d if case.opcode == AVG else tf.nn.max_pool2d
        return lambda xs: fn(xs[0], (o["filter_h"], o["filter_w"]),
                             (o["stride_h"], o["stride_w"]), o["padding"])
    if case.opcode in ("PAD", "PADV2"):
        pads = case.tensors[case.inputs[1]].data.astype(np.int64)
        return lambda xs: tf.pad(xs[0], pads)
    if case.opcode == "CONCATENATION":
        def concat_fn(xs):
            it = iter(xs)
            parts = [tf.constant(_dequant(case, i, case.tensors[i].data))
                     if case.tensors[i].is_const else next(it) for i in case.inputs]
            return tf.concat(parts, axis=int(o["axis"]))
        return concat_fn
    if case.opcode == "LOGISTIC":
        return lambda xs: tf.sigmoid(xs[0])
    raise AssertionError(case.opcode)


def _avg_weight_error(case: Case, params, dy_real: np.ndarray) -> np.ndarray:
    """Per input: sum over its windows of |dy| * |round(4096/count)/4096 - 1/count|."""
    p = params
    err = np.zeros((p.batches, p.in_h, p.in_w, p.channels))
    for oy in range(p.out_h):
        for ox in range(p.out_w):
            y0, x0 = oy * p.stride_h - p.pad_h, ox * p.stride_w - p.pad_w
            ys = slice(max(y0, 0), min(y0 + p.filter_h, p.in_h))
            xs = slice(max(x0, 0), min(x0 + p.filter_w, p.in_w))
            count = (ys.stop - ys.start) * (xs.stop - xs.start)
            w = abs(((4096 + count // 2) // count) / 4096 - 1 / count)
            err[:, ys, xs, :] += np.abs(dy_real[:, oy, ox, :])[:, None, None, :] * w
    return err


FLOAT_CASES = [c for c in sorted(CASES) if CASES[c]().dy_kind == "rand"]


@pytest.mark.parametrize("case_id", FLOAT_CASES)
def test_op_backward_matches_float_gradient(case_id: str) -> None:
    import tensorflow as tf
    x_kind = "distinct" if CASES[case_id]().opcode == MAX else None  # ties: no unique gradient
    p = prepare(case_id, x_kind)
    case = p.case
    xs = [tf.Variable(_dequant(case, t, x)) for t, x in zip(case.dynamic, p.xs, strict=True)]
    dy_real = p.dy.data.astype(np.float64) * float(p.dy.scale)
    with tf.GradientTape() as tape:
        y = _float_op(case, p.params, tf)(xs)
        objective = tf.reduce_sum(y * tf.constant(dy_real.reshape(y.shape)))
    grads = tape.gradient(objective, xs)
    for g, exp in zip(grads, p.expected, strict=True):
        want = g.numpy()
        got = exp.data.astype(np.float64) * float(exp.scale)
        tol = 0.5 * float(exp.scale) + 1e-6 * np.abs(want).max()
        if case.opcode == AVG:
            tol = tol + _avg_weight_error(case, p.params, dy_real.reshape(
                case.tensors[-1].shape)) * 1.0000001
        else:
            tol = np.full(want.shape, tol)
        if case.opcode == "LOGISTIC":  # plus the derivative table's rounding, 2^-16 per dy
            tol = tol + np.abs(dy_real.reshape(want.shape)) * 2.0**-16 * 1.0000001
        elif case.opcode not in (AVG, MAX):  # copies: only float rounding of the scale
            tol = np.full(want.shape, 1e-6 * np.abs(want).max() + 1e-30)
        assert np.all(np.abs(got - want) <= tol), f"{case_id}: max error " \
            f"{np.abs(got - want).max()} > {tol.max()}"


# ---- activation masks, losses, fan-out ---------------------------------------------------------

MASKS = {  # case -> (activation, act_min, act_max, n)
    "relu": ("RELU", -5, 127, 37),
    "relu_zp_min": ("RELU", -128, 127, 8),
    "relu6": ("RELU6", -100, 20, 64),
    "relu_n1_to_1": ("RELU_N1_TO_1", -30, 34, 13),
    "relu_one": ("RELU", 0, 127, 1),
}


def _mask_inputs(case_id: str):
    activation, lo_c, hi_c, n = MASKS[case_id]
    rng = np.random.default_rng(sum(map(ord, case_id)))
    y = rng.integers(lo_c, hi_c + 1, size=n).astype(np.int8)
    y[0] = lo_c  # the clamp values themselves are masked
    if n > 1:
        y[-1] = hi_c
    dy = _dy("rand", (n,), rng)
    return grad_rules.mask_bounds(activation, lo_c, hi_c), y, dy


def test_mask_bounds() -> None:
    assert grad_rules.mask_bounds("NONE", -128, 127) is None
    assert grad_rules.mask_bounds("RELU", -3, 127) == (-3, 128)
    assert grad_rules.mask_bounds("RELU6", -3, 90) == (-3, 90)
    assert grad_rules.mask_bounds("RELU_N1_TO_1", -50, 70) == (-50, 70)
    with pytest.raises(ValueError):
        grad_rules.mask_bounds("TANH", -128, 127)


@pytest.mark.parametrize("lo, hi", [(-128, 128), (-128, 127), (-3, 90), (-50, 70), (126, 128),
                                    (127, 128), (-129, -127), (5, 6), (-128, -127)])
@pytest.mark.parametrize("n", [1, 7, 8, 13, 64, 101])
def test_m7_mask_pack_equals_the_reference(lo: int, hi: int, n: int) -> None:
    """Every element value against the bounds, the bounds at the ends of int8 (where the byte
    lanes cannot hold them) and every tail length."""
    rng = np.random.default_rng(n * 1000 + lo)
    y = np.concatenate([np.arange(-128, 128), rng.integers(-128, 128, n)]).astype(np.int8)[-n:]
    if n >= 64:
        y = np.concatenate([np.arange(-128, 128), y]).astype(np.int8)
    e = Emission(*grad_rules.HEADERS)
    yb, c_bits = e.array(y, np.int8), e.space((y.size + 7) // 8)
    ran = e.run(grad_rules.emit_mask_pack(yb.ptr, y.size, lo, hi, c_bits.ptr, optimized=True))
    np.testing.assert_array_equal(ran.array(c_bits, np.uint8), grad_rules.mask_pack(y, lo, hi))


@pytest.mark.parametrize("case_id", sorted(MASKS))
def test_mask_kernel_matches_reference(case_id: str) -> None:
    (lo, hi), y, dy = _mask_inputs(case_id)
    bits = grad_rules.mask_pack(y, lo, hi)
    assert bits.dtype == np.uint8 and bits.size == (y.size + 7) // 8
    inside = (y.astype(int) > lo) & (y.astype(int) < hi)
    for i in range(y.size):  # layout: bit i of byte i // 8, least significant first
        assert (bits[i // 8] >> (i % 8)) & 1 == inside[i]
    # the forward step packs the mask, the backward step applies it to the gradient
    e = Emission(*grad_rules.HEADERS)
    yb, c_bits, g = e.array(y, np.int8), e.space(bits.size), e.grad(y.size, dy)
    ran = e.run("\n".join([grad_rules.emit_mask_pack(yb.ptr, y.size, lo, hi, c_bits.ptr),
                           grad_rules.emit_mask_apply(g.ref, c_bits.ptr)]))
    np.testing.assert_array_equal(ran.array(c_bits, np.uint8), bits)
    masked = grad_rules.mask_apply(dy, bits)
    np.testing.assert_array_equal(masked.data, np.where(inside, dy.data, 0))
    assert masked.scale == dy.scale
    d = ran.grad(g)
    assert_same(d.data, d.scale, masked, case_id)


def test_mask_matches_float_derivative() -> None:
    """The mask is the derivative of the real clamp, evaluated at the pre-activation value,
    except for values that round onto the clamp boundary."""
    rng = np.random.default_rng(7)
    scale, zp = 0.05, -20
    v = rng.uniform(-3, 9, size=500)
    for activation, lo_r, hi_r in (("RELU", 0.0, np.inf), ("RELU6", 0.0, 6.0),
                                   ("RELU_N1_TO_1", -1.0, 1.0)):
        act_min = max(-128, zp + round(lo_r / scale))
        act_max = 127 if hi_r == np.inf else min(127, zp + round(hi_r / scale))
        y = np.clip(np.round(v / scale) + zp, act_min, act_max).astype(np.int8)
        lo, hi = grad_rules.mask_bounds(activation, act_min, act_max)
        bits = np.unpackbits(grad_rules.mask_pack(y, lo, hi), count=v.size, bitorder="little")
        # int8 saturation above a RELU is straight-through (docs/training.md), so only the
        # activation's own bounds count.
        derivative = (v > lo_r) & (v < hi_r)
        near = (np.abs(v - lo_r) < scale) | (np.abs(v - hi_r) < scale)
        np.testing.assert_array_equal(bits[~near], derivative[~near], err_msg=activation)


def _run_loss(emit: Callable[..., str], n: int, label: int) -> tuple[float, int, QGrad]:
    """(loss, prediction, dl) of a loss emitter's code: emit(emission, dl, label, loss,
    prediction) -> C++, the last three as the training codegen passes them (lvalues)."""
    e = Emission(*grad_rules.HEADERS)
    g = e.grad(n)
    lb = e.array(np.int32(label), "<i4")
    lo, pr = e.array(np.float32(-1), "<f4"), e.array(np.uint16(0xFFFF), "<u2")
    ran = e.run(emit(e, g.ref, lb.lvalue("int32_t"), lo.lvalue("float"), pr.lvalue("uint16_t")))
    return float(ran.scalar(lo, "<f4")), int(ran.scalar(pr, "<u2")), ran.grad(g)


CE = {  # case -> (n, label, kind)
    "ce_rand": (10, 3, "rand"),
    "ce_label_zero_prob": (6, 0, "zero"),
    "ce_certain": (4, 2, "certain"),
    "ce_ties": (7, 5, "ties"),
    "ce_one_class": (1, 0, "rand"),
    "ce_many": (100, 99, "rand"),
}


def _ce_inputs(case_id: str) -> tuple[np.ndarray, int]:
    n, label, kind = CE[case_id]
    rng = np.random.default_rng(sum(map(ord, case_id)))
    q = rng.integers(-128, 128, size=(1, n)).astype(np.int8)
    if kind == "zero":
        q[0, label] = -128
    elif kind == "certain":
        q[:] = -128
        q[0, label] = 127
    elif kind == "ties":
        q[:] = 10
    return q, label


@pytest.mark.parametrize("case_id", sorted(CE))
def test_cross_entropy_kernel_matches_reference(case_id: str) -> None:
    q, label = _ce_inputs(case_id)
    loss, pred, dl = grad_rules.cross_entropy(q, label)
    assert dl.data.shape == q.shape and dl.scale == F32(1 / 256)
    assert pred == int(np.argmax(q.ravel()))
    c_loss, c_pred, d = _run_loss(lambda e, g, lb, lo, pr: grad_rules.emit_cross_entropy(
        e.array(q, np.int8).ptr, q.size, lb, g, lo, pr), q.size, label)
    assert c_pred == pred
    assert_same(d.data, d.scale, dl, case_id)
    assert abs(c_loss - loss) <= 1e-5 * abs(loss)
    p = max(int(q[0, label]) + 128, 0.5) / 256
    assert abs(loss + np.log(p)) <= 1e-6 * abs(loss) + 1e-7


def test_cross_entropy_matches_float_gradient() -> None:
    """d/dlogits of -log softmax(z)[label] = softmax(z) - onehot, within the output's 1/256
    quantization (rounded softmax values, 256 saturating at 255)."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        z = rng.normal(0, 2, size=12)
        label = int(rng.integers(0, 12))
        prob = np.exp(z - z.max())
        prob /= prob.sum()
        q = np.clip(np.round(prob * 256) - 128, -128, 127).astype(np.int8)
        loss, _, dl = grad_rules.cross_entropy(q, label)
        want = prob - np.eye(12)[label]
        assert np.abs(dl.real() - want).max() <= 1 / 256 + 1e-9
        if prob[label] > 0.05:
            assert abs(loss + np.log(prob[label])) <= (1 / 256) / (prob[label] - 1 / 256)


LOGITS_CE = {  # case -> (n, label, output scale, kind)
    "lce_rand": (10, 3, 0.1, "rand"),
    "lce_ties": (7, 5, 0.2, "ties"),
    "lce_certain": (4, 2, 0.5, "certain"),  # label's probability rounds to 1: tiny gradient
    "lce_hopeless": (5, 1, 0.7, "hopeless"),  # label far below the rest: exp underflows to 0
    "lce_flat": (12, 11, 1e-3, "rand"),  # nearly uniform softmax
    "lce_many": (100, 0, 0.05, "rand"),
    "lce_two": (2, 1, 0.08, "rand"),
}


def _lce_inputs(case_id: str) -> tuple[np.ndarray, float, int, int]:
    n, label, scale, kind = LOGITS_CE[case_id]
    rng = np.random.default_rng(sum(map(ord, case_id)))
    y = rng.integers(-128, 128, size=(1, n)).astype(np.int8)
    if kind == "ties":
        y[:] = -7
    elif kind == "certain":
        y[:] = -128
        y[0, label] = 127
    elif kind == "hopeless":
        y[:] = 127
        y[0, label] = -128
    return y, scale, int(rng.integers(-128, 128)), label


@pytest.mark.parametrize("case_id", sorted(LOGITS_CE))
def test_logits_cross_entropy_kernel_matches_reference(case_id: str) -> None:
    y, so, zo, label = _lce_inputs(case_id)
    loss, pred, dl = grad_rules.logits_cross_entropy(y, so, zo, label)
    assert dl.data.shape == y.shape
    assert pred == int(np.argmax(y.ravel()))
    c_loss, c_pred, d = _run_loss(lambda e, g, lb, lo, pr: grad_rules.emit_logits_cross_entropy(
        e.array(y, np.int8).ptr, y.size, so, lb, g, lo, pr), y.size, label)
    assert c_pred == pred
    assert_same(d.data, d.scale, dl, case_id)
    assert abs(c_loss - loss) <= 1e-5 * abs(loss) + 1e-7


@pytest.mark.parametrize("case_id", sorted(LOGITS_CE))
def test_logits_cross_entropy_matches_float64(case_id: str) -> None:
    """TensorFlow's from_logits=True in float64: loss = logsumexp(z) - z[label], dz = softmax(z)
    - onehot, z = so * (y - zo). The int16 gradient is within half a step (plus 2e-6 relative
    for the float32 softmax) of it, even when the label is nearly certain; the loss within 1e-5
    relative."""
    y, so, zo, label = _lce_inputs(case_id)
    loss, _, dl = grad_rules.logits_cross_entropy(y, so, zo, label)
    z = np.float64(F32(so)) * (y.ravel().astype(np.float64) - zo)
    top = z.max()
    lse = top + np.log(np.exp(z - top).sum())
    want_loss = lse - z[label]
    assert abs(loss - want_loss) <= 1e-5 * want_loss + 1e-6
    want = np.exp(z - lse) - np.eye(z.size)[label]
    err = np.abs(dl.real().ravel().astype(np.float64) - want).max()
    # exp_f32 is 0 below e^-80: smaller probabilities are lost (1e-33 covers 100 of them)
    assert err <= 0.5 * float(dl.scale) + 2e-6 * np.abs(want).max() + 1e-33, err
    assert float(dl.scale) <= np.abs(want).max() / GRAD_MAX * (1 + 1e-5) + 1e-12


MSE = {  # case -> (n, scale, zp, kind)
    "mse_rand": (10, 0.03, -5, "rand"),
    "mse_exact_zero": (4, 0.5, 0, "exact"),
    "mse_one": (1, 0.1, 3, "rand"),
    "mse_large": (300, 0.2, 17, "rand"),
    "mse_extreme": (6, 1.0, -128, "extreme"),
}


def _mse_inputs(case_id: str) -> tuple[np.ndarray, float, int, np.ndarray]:
    n, scale, zp, kind = MSE[case_id]
    rng = np.random.default_rng(sum(map(ord, case_id)))
    y = rng.integers(-128, 128, size=(1, n)).astype(np.int8)
    t = rng.normal(0, 3, size=n).astype(np.float32)
    if kind == "exact":
        t = (F32(scale) * (y.ravel().astype(np.int32) - zp).astype(np.float32)).astype(np.float32)
    elif kind == "extreme":
        y[:] = 127
        t[:] = -1e3
    return y, scale, zp, t


@pytest.mark.parametrize("case_id", sorted(MSE))
def test_mse_kernel_matches_reference(case_id: str) -> None:
    y, so, zo, t = _mse_inputs(case_id)
    loss, dy = grad_rules.mse(y, so, zo, t)
    assert dy.data.shape == y.shape
    c_loss, _, d = _run_loss(lambda e, g, lb, lo, pr: grad_rules.emit_mse(
        e.array(y, np.int8).ptr, y.size, so, zo, e.array(t, "<f4").as_ptr("const float"), g,
        lo), y.size, 0)
    assert_same(d.data, d.scale, dy, case_id)
    assert np.float32(c_loss) == np.float32(loss)
    if MSE[case_id][3] == "exact":
        assert dy.scale == 0 and loss == 0
    # float64 check of the value and the gradient
    err = (y.ravel().astype(np.float64) - zo) * np.float64(F32(so)) - t.astype(np.float64)
    assert abs(loss - np.mean(err**2)) <= 1e-5 * max(np.mean(err**2), 1e-30)
    want = 2.0 / y.size * err
    assert np.abs(dy.real().ravel() - want).max() <= 0.5 * float(dy.scale) + 1e-6 * np.abs(
        want).max()


SUMS = {  # case -> (n, scale a, scale b, kind)
    "sum_rand": (50, 0.01, 0.003, "rand"),
    "sum_equal_scales": (20, 0.02, 0.02, "rand"),
    "sum_b_larger": (33, 1e-4, 5e-2, "rand"),
    "sum_a_zero": (9, 0.0, 0.5, "rand"),
    "sum_b_zero": (9, 0.5, 0.0, "rand"),
    "sum_both_zero": (5, 0.0, 0.0, "zero"),
    "sum_extreme": (16, 0.7, 0.7, "max"),
    "sum_cancel": (8, 0.25, 0.25, "cancel"),
}


def _sum_inputs(case_id: str) -> tuple[QGrad, QGrad]:
    n, sa, sb, kind = SUMS[case_id]
    rng = np.random.default_rng(sum(map(ord, case_id)))
    if kind == "zero":
        return QGrad(np.zeros(n, np.int16), F32(0)), QGrad(np.zeros(n, np.int16), F32(0))
    a = _dy("max" if kind == "max" else "rand", (n,), rng).data
    b = a.copy() if kind == "max" else _dy("rand", (n,), rng).data
    if kind == "cancel":
        b = (-a).astype(np.int16)
    return QGrad(a, F32(sa)), QGrad(b, F32(sb))


@pytest.mark.parametrize("case_id", sorted(SUMS))
def test_grad_sum_kernel_matches_reference(case_id: str) -> None:
    a, b = _sum_inputs(case_id)
    total = grad_rules.grad_sum(a, b)
    e = Emission(*grad_rules.HEADERS)
    ga, gb, out = e.grad(a.data.size, a), e.grad(a.data.size, b), e.grad(a.data.size)
    got = e.run(grad_rules.emit_grad_sum(ga.ref, gb.ref, out.ref)).grad(out)
    assert_same(got.data, got.scale, total, case_id)
    if a.scale == 0:
        np.testing.assert_array_equal(total.data, b.data)
        assert total.scale == b.scale
    elif b.scale == 0:
        np.testing.assert_array_equal(total.data, a.data)
        assert total.scale == a.scale
    # real-valued: the sum of the two reals, within one rounding of the smaller-scale term and
    # the final requantization
    want = a.data.astype(np.float64) * float(a.scale) + b.data.astype(np.float64) * float(b.scale)
    tol = 0.5 * max(float(a.scale), float(b.scale)) + 0.5 * float(total.scale) + 1e-6 * (
        np.abs(want).max() + 1e-30)
    assert np.abs(total.real().astype(np.float64) - want).max() <= tol


# ---- whole training step: generated code built on the host vs the numpy reference -------------

_HARNESS = r"""
#include <cstdio>
#include "runtime/model.h"
// Reads: int32 steps, then per step the input and the label bytes; prints status, loss and
// prediction per step and writes the trainable state block at the end.
int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* f = std::fopen(argv[1], "rb");
  int32_t steps = 0;
  if (f == nullptr || std::fread(&steps, 4, 1, f) != 1) return 3;
  static uint8_t label[4096];
  for (int32_t s = 0; s < steps; ++s) {
    if (std::fread(mt::model_input(), 1, mt::kModel.input.bytes, f) != mt::kModel.input.bytes ||
        std::fread(label, 1, mt::kTrain.label_bytes, f) != mt::kTrain.label_bytes) return 4;
    mt::TrainResult r;
    const mt::Status st = mt::model_train_step(label, true, &r);
    std::printf("%d %.9g %d\n", static_cast<int>(st), static_cast<double>(r.loss),
                static_cast<int>(r.prediction));
  }
  FILE* o = std::fopen(argv[2], "wb");
  std::fwrite(mt::model_train_state(), 1, mt::kTrain.state_bytes, o);
  std::fclose(o);
  return 0;
}
"""

TRAIN_MODELS = {  # these models exercise MEAN, both pools, PAD, CONCATENATION, fan-out, masks
    "har_full": ("models/har_cnn1d_int8.tflite", {"preset": "full", "lr": 0.01}),
    "concat_pool_full": ("models/test/concat_pool_pertensor_int8.tflite",
                         {"preset": "full", "lr": 0.05, "rounding": "nearest"}),
    "residual_full": ("models/test/residual_dw_f32io.tflite", {"preset": "full", "lr": 0.02}),
    # cross-entropy on FULLY_CONNECTED logits, and a first layer whose dx would overflow
    "wide_logits_full": ("models/test/wide_logits_int8.tflite", {"preset": "full", "lr": 0.05}),
    "wide_logits_fp32": ("models/test/wide_logits_int8.tflite",
                         {"classifier": "fp32", "bias_layers": 3, "lr": 0.05,
                          "weights": [{"layer": 0, "ratio": 0.5}]}),
}


@pytest.mark.parametrize("case_id", sorted(TRAIN_MODELS))
def test_training_step_host_build_matches_reference(case_id: str, tmp_path: Path) -> None:
    path, raw = TRAIN_MODELS[case_id]
    _host_build_matches_reference(ROOT / path, raw, tmp_path, sum(map(ord, case_id)))


@pytest.fixture(scope="module")
def conv_logits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ends in CONV_2D logits [1, 1, 1, 3] and a RESHAPE (Flatten) to [1, 3]."""
    import tensorflow as tf

    from tflite_convert import convert_keras_int8

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((6, 6, 2), batch_size=1)
    t = tf.keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    t = tf.keras.layers.Flatten()(tf.keras.layers.Conv2D(3, 4)(t))
    model = tf.keras.Model(inputs, t)

    path = tmp_path_factory.mktemp("conv_logits") / "conv_logits.tflite"
    path.write_bytes(convert_keras_int8(model, samples=8))
    return path


def test_cross_entropy_on_conv_logits_through_reshape(conv_logits_model: Path,
                                                      tmp_path: Path) -> None:
    from mcutrain.compile.compiler import compile_model

    opcodes = [p.op.opcode for p in compile_model(conv_logits_model).ops]
    assert opcodes == ["CONV_2D", "CONV_2D", "RESHAPE"]
    _host_build_matches_reference(conv_logits_model, {"preset": "full", "lr": 0.1}, tmp_path, 5)


@pytest.fixture(scope="module")
def sigmoid_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv -> sigmoid -> Dense logits: the conv trains through LOGISTIC's backward rule."""
    from test_logistic import sigmoid_keras_model

    from tflite_convert import convert_keras_int8

    path = tmp_path_factory.mktemp("sigmoid") / "sigmoid.tflite"
    path.write_bytes(convert_keras_int8(sigmoid_keras_model(), samples=8))
    return path


def test_training_through_logistic_host_build(sigmoid_model: Path, tmp_path: Path) -> None:
    from mcutrain.compile.compiler import compile_model

    opcodes = [p.op.opcode for p in compile_model(sigmoid_model).ops]
    assert "LOGISTIC" in opcodes and opcodes[0] == "CONV_2D"
    _host_build_matches_reference(sigmoid_model, {"preset": "full", "lr": 0.1}, tmp_path, 7)


def _host_build_matches_reference(path: Path, raw: dict, tmp_path: Path, seed: int) -> None:
    from mcutrain.compile.compiler import compile_model
    from mcutrain.train.codegen import generate_training_source
    from mcutrain.train.reference import TrainingReference
    from mcutrain.train.scheme import parse_scheme
    from mcutrain.train.training_graph import build_training

    model = compile_model(path)
    program = build_training(model, parse_scheme(raw))
    source, _ = generate_training_source(program)
    (tmp_path / "model.cc").write_text(source)
    (tmp_path / "harness.cc").write_text(_HARNESS)
    exe = tmp_path / "train"
    host_compile([tmp_path / "model.cc", tmp_path / "harness.cc", *sorted(KERNELS.glob("*.cc"))],
                 exe, shared=False)
    reference = TrainingReference(program)
    rng = np.random.default_rng(seed)
    shape = model.graph.tensors[model.input].shape
    steps, blob, expected = 5, bytearray(struct.pack("<i", 5)), []
    for _ in range(steps):
        x = rng.integers(-128, 128, size=shape, dtype=np.int8)
        label = int(rng.integers(0, program.num_classes))
        blob += x.tobytes() + struct.pack("<H", label)
        expected.append(reference.step(x, label))
    (tmp_path / "in.bin").write_bytes(bytes(blob))
    out = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "state.bin")],
                         check=True, capture_output=True, text=True).stdout.split()
    for k, want in enumerate(expected):
        status, loss, prediction = out[3 * k:3 * k + 3]
        assert status == "0" and int(prediction) == want.prediction, f"step {k}"
        assert abs(float(loss) - want.loss) <= 1e-5 * abs(want.loss), f"step {k}"
    assert (tmp_path / "state.bin").read_bytes() == reference.state_bytes()
