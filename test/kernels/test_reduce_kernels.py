"""MEAN and SOFTMAX: numpy reference vs the C++ reference kernels, bit for bit.

Each case is one line: a seeded single-operator graph goes through the operator's prepare(); its
numpy reference() is compared, on random and extreme inputs, with the code emit() generates
(compiled on the host by test/kernels/emitted.py), which calls the C++ kernel with the struct the
code generator writes. A float sanity check keeps both implementations honest against the
real-valued definition.
(test/test_ops_reduce_vs_tflite.py checks the reference against TFLite itself.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from emitted import run_op

from mcutrain.frontend.graph import Graph, ModelError, Operator, Quant, Tensor
from mcutrain.ops.base import lookup


@dataclass
class Case:
    """One operator in a graph of its own: tensor 0 is the input, the last is the output."""

    opcode: str
    tensors: list[Tensor]
    options: dict

    @property
    def op(self) -> Operator:
        inputs = list(range(len(self.tensors) - 1))
        return Operator(0, self.opcode, inputs, [len(self.tensors) - 1], self.options)

    @property
    def graph(self) -> Graph:
        return Graph("case", self.tensors, [self.op], [0], [len(self.tensors) - 1])


def _q(scale: float, zp: int) -> Quant:
    return Quant(np.array([scale], np.float32), np.array([zp], np.int64))


def mean(shape, axes, keep_dims, in_q=(0.05, -3), out_q=None, axes_dtype="int32") -> Case:
    rank = len(shape)
    resolved = {a % rank for a in axes}
    if keep_dims:
        out_shape = tuple(1 if d in resolved else n for d, n in enumerate(shape))
    else:
        out_shape = tuple(n for d, n in enumerate(shape) if d not in resolved)
    out_q = in_q if out_q is None else out_q
    axes_data = np.array(axes, dtype=axes_dtype)
    tensors = [Tensor(0, "x", tuple(shape), "int8", _q(*in_q)),
               Tensor(1, "axes", axes_data.shape, axes_dtype, None, axes_data),
               Tensor(2, "y", out_shape, "int8", _q(*out_q))]
    return Case("MEAN", tensors, {"keep_dims": keep_dims})


def softmax(shape, in_scale, in_zp=5, beta=1.0, out_q=(1.0 / 256, -128)) -> Case:
    tensors = [Tensor(0, "logits", tuple(shape), "int8", _q(in_scale, in_zp)),
               Tensor(1, "probs", tuple(shape), "int8", _q(*out_q))]
    return Case("SOFTMAX", tensors, {"beta": beta})


CASES: dict[str, Callable[[], Case]] = {
    "mean_gap2d_keep": lambda: mean((1, 5, 5, 8), [1, 2], True),
    "mean_gap2d_flat_rescale": lambda: mean((1, 4, 6, 16), [1, 2], False, (0.1, 7), (0.02, -20)),
    "mean_gap2d_batch": lambda: mean((3, 3, 3, 5), [2, 1], False, (0.03, 12), (0.031, -1)),
    "mean_gap2d_neg_axes": lambda: mean((2, 7, 7, 4), [-3, -2], True, (0.2, -128), (0.2, -128)),
    "mean_gap2d_32x32": lambda: mean((1, 32, 32, 3), [1, 2], False, (0.07, 0), (0.01, 3)),
    "mean_gap2d_1x1": lambda: mean((1, 1, 1, 6), [1, 2], False, (0.05, 2), (0.08, -9)),
    "mean_gap2d_unit_rows": lambda: mean((1, 1, 9, 4), [1, 2], True, (0.05, 2), (0.03, 1)),
    "mean_gap1d": lambda: mean((1, 16, 6), [1], False),
    "mean_gap1d_rescale": lambda: mean((2, 50, 9), [1], False, (0.5, 100), (0.011, -60)),
    "mean_last_axis": lambda: mean((2, 3, 10), [2], True, (0.04, 0), (0.05, 4)),
    "mean_all_axes": lambda: mean((2, 3, 4), [0, 1, 2], False, (0.04, -5), (0.04, -5)),
    "mean_dup_axes": lambda: mean((1, 4, 4, 2), [1, 2, 1], False),
    "mean_huge_ratio": lambda: mean((1, 3, 3, 2), [1, 2], False, (2.0, 0), (0.001, 0)),
    "mean_tiny_ratio": lambda: mean((1, 8, 8, 2), [1, 2], False, (0.001, 0), (0.9, 0)),
    # More positions than an int16 lane of the Cortex-M7 kernel holds (mean_m7.h: chunks).
    "mean_gap2d_20x20": lambda: mean((1, 20, 20, 8), [1, 2], False, (0.05, -7), (0.04, 3)),
    "mean_gap2d_mbv2": lambda: mean((1, 4, 4, 1280), [1, 2], False, (0.02, -128), (0.01, -128)),
    "softmax_10_s0.1": lambda: softmax((1, 10), 0.1),
    "softmax_10_s0.01": lambda: softmax((1, 10), 0.01, in_zp=-128),
    "softmax_10_s0.5": lambda: softmax((1, 10), 0.5, in_zp=127),
    "softmax_rows": lambda: softmax((4, 7), 0.05),
    "softmax_3d": lambda: softmax((2, 3, 5), 0.2, beta=0.5),
    "softmax_beta2": lambda: softmax((1, 6), 0.08, beta=2.0),
    "softmax_depth1": lambda: softmax((3, 1), 0.1),
    "softmax_depth511": lambda: softmax((1, 511), 0.03),
    "softmax_sharp": lambda: softmax((2, 12), 3.0),
    "softmax_shift31": lambda: softmax((2, 5), 20.0),
    "softmax_flat": lambda: softmax((1, 4), 1e-6, beta=1.0),
}

EXTREMES = ("random", "all_min", "all_max", "spread", "one_hot")


def _input(case: Case, kind: str, seed: int) -> np.ndarray:
    shape = case.tensors[0].shape
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(-128, 128, size=shape, dtype=np.int8)
    if kind == "all_min":
        return np.full(shape, -128, np.int8)
    if kind == "all_max":
        return np.full(shape, 127, np.int8)
    if kind == "spread":
        return rng.choice(np.array([-128, 127], np.int8), size=shape)
    x = np.full(shape, -128, np.int8)
    x.reshape(-1, shape[-1])[:, rng.integers(0, shape[-1])] = 127
    return x


def _prepared(case: Case):
    opdef = lookup(case.op)
    return opdef, opdef.prepare(case.op, case.graph)


def _run_emitted(case: Case, params, x: np.ndarray, in_place: bool = False) -> np.ndarray:
    return run_op(lookup(case.op), params, [x], case.tensors[-1].shape, in_place=in_place)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_kernel_matches_reference(case_id: str) -> None:
    case = CASES[case_id]()
    opdef, params = _prepared(case)
    for k, kind in enumerate(EXTREMES * 2):
        x = _input(case, kind, seed=k)
        expected = opdef.reference(params, [x])
        assert expected.dtype == np.int8 and expected.shape == case.tensors[-1].shape
        np.testing.assert_array_equal(_run_emitted(case, params, x), expected,
                                      err_msg=f"{case_id} {kind}")


@pytest.mark.parametrize("case_id", sorted(c for c in CASES if c.startswith("mean")))
def test_mean_m7_matches_reference(case_id: str) -> None:
    """The Cortex-M7 MEAN (int16 lane sums, four channels a word) against the reference, on
    the extremes that fill the lanes most (all -128: a chunk's sum is exactly -2^15)."""
    from mcutrain.ops import mean as mean_op

    case = CASES[case_id]()
    opdef, params = _prepared(case)
    for k, kind in enumerate(EXTREMES * 2):
        x = _input(case, kind, seed=k)
        got = run_op(opdef, params, [x], case.tensors[-1].shape, variant=mean_op.M7)
        np.testing.assert_array_equal(got, opdef.reference(params, [x]),
                                      err_msg=f"{case_id} {kind}")


def test_softmax_in_place() -> None:
    case = CASES["softmax_rows"]()
    opdef, params = _prepared(case)
    x = _input(case, "random", 3)
    expected = opdef.reference(params, [x])
    buf = _run_emitted(case, params, x, in_place=True)
    np.testing.assert_array_equal(buf, expected)


# --- float sanity: the integer recipes approximate the real-valued definitions ---------------

def _dequant(t: Tensor, q: np.ndarray) -> np.ndarray:
    return (q.astype(np.float64) - t.zero_point) * t.scale


@pytest.mark.parametrize("case_id", sorted(k for k in CASES if k.startswith("mean")))
def test_mean_is_close_to_float(case_id: str) -> None:
    case = CASES[case_id]()
    opdef, params = _prepared(case)
    x = _input(case, "random", 9)
    axes = tuple(int(a) % x.ndim for a in set(case.tensors[1].data.tolist()))
    real = _dequant(case.tensors[0], x).mean(axis=axes)
    out_t = case.tensors[-1]
    ideal = np.clip(np.round(real / out_t.scale) + out_t.zero_point, -128, 127)
    got = opdef.reference(params, [x]).astype(np.float64).reshape(ideal.shape)
    assert np.max(np.abs(got - ideal)) <= 1


@pytest.mark.parametrize("case_id", sorted(k for k in CASES if k.startswith("softmax")))
def test_softmax_is_close_to_float(case_id: str) -> None:
    case = CASES[case_id]()
    opdef, params = _prepared(case)
    for kind in EXTREMES:
        x = _input(case, kind, 4)
        logits = _dequant(case.tensors[0], x) * case.options["beta"]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
        got = (opdef.reference(params, [x]).astype(np.float64) + 128) / 256
        assert np.max(np.abs(got - probs)) <= 1.5 / 256, kind


# --- emitted code, compiled on the host -------------------------------------------------------

def test_emitted_code_matches_reference() -> None:
    for case_id in sorted(CASES):
        case = CASES[case_id]()
        opdef, params = _prepared(case)
        x = _input(case, "random", 11)
        out = _run_emitted(case, params, x)
        np.testing.assert_array_equal(out, opdef.reference(params, [x]), err_msg=case_id)


# --- what prepare() must refuse ---------------------------------------------------------------

def _with(case: Case, index: int, **fields) -> Case:
    for key, value in fields.items():
        setattr(case.tensors[index], key, value)
    return case


REJECTED: dict[str, tuple[Callable[[], Case], str]] = {
    "mean_strided_axes": (lambda: mean((2, 3, 4, 5), [1, 3], False), "contiguous"),
    "mean_dynamic_axes": (lambda: _with(mean((1, 4, 4, 2), [1, 2], False), 1, data=None),
                          "constant"),
    "mean_empty_axes": (lambda: mean((1, 4, 4, 2), [], True), "empty axes"),
    "mean_axis_range": (lambda: _bad_axis(), "out of range"),
    "mean_int64_axes": (lambda: mean((1, 4, 4, 2), [1, 2], False, axes_dtype="int64"), "int32"),
    "mean_float_input": (lambda: _with(mean((1, 2, 2, 2), [1, 2], False), 0, dtype="float32"),
                         "only int8"),
    "mean_wrong_output": (lambda: _with(mean((1, 4, 4, 2), [1, 2], False), 2, shape=(1, 3)),
                          "output shape"),
    "softmax_output_zp": (lambda: softmax((1, 4), 0.1, out_q=(1.0 / 256, 0)), "zero point -128"),
    "softmax_output_scale": (lambda: softmax((1, 4), 0.1, out_q=(1.0 / 128, -128)), "1/256"),
    "softmax_long_rows": (lambda: softmax((1, 1000), 0.1), "row lengths"),
    "softmax_tiny_beta": (lambda: softmax((1, 4), 1e-5, beta=1e-5), "too small"),
}


def _bad_axis() -> Case:
    case = mean((1, 4, 4, 2), [1, 2], False)
    case.tensors[1].data = np.array([1, 4], np.int32)
    return case


@pytest.mark.parametrize("case_id", sorted(REJECTED))
def test_prepare_rejects(case_id: str) -> None:
    build, message = REJECTED[case_id]
    case = build()
    with pytest.raises(ModelError, match=message) as info:
        lookup(case.op).prepare(case.op, case.graph)
    assert "\n" not in str(info.value) and "operator 0" in str(info.value)


def test_macs() -> None:
    opdef, params = _prepared(CASES["mean_gap2d_keep"]())
    assert opdef.macs(params) == 5 * 5 * 8
    opdef, params = _prepared(CASES["softmax_rows"]())
    assert opdef.macs(params) == 4 * 7

