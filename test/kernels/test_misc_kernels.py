"""ADD, pooling, PAD, CONCATENATION, QUANTIZE (requantize) and RESHAPE: numpy reference vs the C++
reference kernels, bit for bit.

Each case is one line: a seeded random single-operator graph goes through the operator's
prepare(); its numpy reference() is compared with the code emit() generates, compiled on the host
and run by test/kernels/emitted.py (so each kernel gets its parameters through the struct the
code generator writes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from emitted import run_op

from mcutrain.frontend.graph import Graph, ModelError, Operator, Quant, Tensor
from mcutrain.ops.base import lookup
from mcutrain.ops.cxx import ConstPool

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "firmware" / "kernels"


@dataclass
class Case:
    """One operator in a graph of its own; tensors are numbered in the order they were added."""

    opcode: str
    options: dict
    tensors: list[Tensor]
    inputs: list[int]

    @property
    def op(self) -> Operator:
        return Operator(0, self.opcode, self.inputs, [len(self.tensors) - 1], self.options)

    @property
    def graph(self) -> Graph:
        out = len(self.tensors) - 1
        dynamic = [i for i in self.inputs if not self.tensors[i].is_const]
        return Graph("case", self.tensors, [self.op], dynamic[:1], [out])


def _quant(rng: np.random.Generator, scale: float | None, zp: int | None) -> Quant:
    scale = float(rng.uniform(0.005, 0.1)) if scale is None else scale
    zp = int(rng.integers(-128, 128)) if zp is None else zp
    return Quant(np.array([scale], np.float32), np.array([zp], np.int64))


class Builder:
    """Collects tensors for a Case; activations get random quantization unless given."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: list[Tensor] = []

    def _add(self, shape, dtype, quant=None, data=None) -> int:
        index = len(self.tensors)
        self.tensors.append(Tensor(index, f"t{index}", tuple(shape), dtype, quant, data))
        return index

    def act(self, shape, scale=None, zp=None) -> int:
        return self._add(shape, "int8", _quant(self.rng, scale, zp))

    def const_act(self, shape, scale=None, zp=None) -> int:
        data = self.rng.integers(-128, 128, size=shape, dtype=np.int8)
        return self._add(shape, "int8", _quant(self.rng, scale, zp), data)

    def ints(self, values, dtype="int32") -> int:
        return self._add(np.shape(values), dtype, None, np.asarray(values, dtype=dtype))

    def case(self, opcode, inputs, out_shape, options=None, out_quant=None) -> Case:
        scale, zp = out_quant if out_quant is not None else (None, None)
        self.act(out_shape, scale, zp)
        return Case(opcode, options or {}, self.tensors, list(inputs))


def add(seed, sa, sb, so, act="NONE", const=None, same_scale=False) -> Case:
    b = Builder(seed)
    mk = [b.act, b.act]
    if const is not None:
        mk[const] = b.const_act
    x = mk[0](sa)
    y = mk[1](sb, scale=b.tensors[x].scale if same_scale else None)
    return b.case("ADD", [x, y], so, {"activation": act})


def add_self(seed, shape) -> Case:
    b = Builder(seed)
    x = b.act(shape)
    return b.case("ADD", [x, x], shape, {"activation": "NONE"})


def pool(seed, opcode, shape, filt, stride, padding, out_hw, act="NONE") -> Case:
    b = Builder(seed)
    x = b.act(shape)
    q = b.tensors[x].quant
    opts = {"padding": padding, "stride_h": stride[0], "stride_w": stride[1],
            "filter_h": filt[0], "filter_w": filt[1], "activation": act}
    out = (shape[0], *out_hw, shape[3])
    return b.case(opcode, [x], out, opts, (float(q.scale[0]), int(q.zero_point[0])))


def pad(seed, shape, pads, value=None, dtype="int32") -> Case:
    b = Builder(seed)
    x = b.act(shape)
    q = b.tensors[x].quant
    inputs = [x, b.ints(pads, dtype)]
    opcode = "PAD"
    if value is not None:
        opcode = "PADV2"
        inputs.append(b._add((1,), "int8", q, np.array([value], np.int8)))
    out = tuple(d + p0 + p1 for d, (p0, p1) in zip(shape, pads, strict=True))
    return b.case(opcode, inputs, out, {}, (float(q.scale[0]), int(q.zero_point[0])))


def concat(seed, shapes, axis, const=()) -> Case:
    b = Builder(seed)
    scale, zp = 0.05, int(b.rng.integers(-128, 128))
    ids = [(b.const_act if k in const else b.act)(s, scale, zp) for k, s in enumerate(shapes)]
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return b.case("CONCATENATION", ids, out, {"axis": axis, "activation": "NONE"}, (scale, zp))


def requant(seed, shape, ratio) -> Case:
    b = Builder(seed)
    x = b.act(shape)
    out_scale = b.tensors[x].scale / ratio
    return b.case("QUANTIZE", [x], shape, {}, (out_scale, None))


def reshape(seed, shape, new_shape, out_shape, via_input=False) -> Case:
    b = Builder(seed)
    x = b.act(shape)
    q = b.tensors[x].quant
    inputs = [x, b.ints(new_shape)] if via_input else [x]
    opts = {} if via_input else {"new_shape": list(new_shape)}
    return b.case("RESHAPE", inputs, out_shape, opts, (float(q.scale[0]), int(q.zero_point[0])))


CASES: dict[str, Callable[[], Case]] = {
    "add_same_shape": lambda: add(1, (1, 4, 4, 8), (1, 4, 4, 8), (1, 4, 4, 8)),
    "add_relu": lambda: add(2, (1, 3, 5, 7), (1, 3, 5, 7), (1, 3, 5, 7), act="RELU"),
    "add_relu6": lambda: add(3, (2, 3, 3, 4), (2, 3, 3, 4), (2, 3, 3, 4), act="RELU6"),
    "add_equal_scales": lambda: add(4, (1, 6, 6, 3), (1, 6, 6, 3), (1, 6, 6, 3), same_scale=True),
    "add_bcast_channel": lambda: add(5, (1, 4, 4, 8), (1, 1, 1, 8), (1, 4, 4, 8)),
    "add_bcast_both": lambda: add(6, (1, 4, 1, 8), (1, 1, 5, 1), (1, 4, 5, 8)),
    "add_bcast_rank": lambda: add(7, (3, 5), (5,), (3, 5)),
    "add_scalar": lambda: add(8, (2, 7), (1,), (2, 7)),
    "add_const_b": lambda: add(9, (1, 3, 3, 6), (6,), (1, 3, 3, 6), const=1),
    "add_const_a": lambda: add(10, (1, 2, 2, 4), (1, 2, 2, 4), (1, 2, 2, 4), const=0),
    "add_self": lambda: add_self(11, (1, 5, 5, 2)),
    "avg_valid_2x2": lambda: pool(20, "AVERAGE_POOL_2D", (1, 6, 6, 3), (2, 2), (2, 2), "VALID",
                                  (3, 3)),
    "avg_same_3x3_s1": lambda: pool(21, "AVERAGE_POOL_2D", (2, 5, 7, 4), (3, 3), (1, 1), "SAME",
                                    (5, 7)),
    "avg_same_3x2_s2": lambda: pool(22, "AVERAGE_POOL_2D", (1, 7, 6, 5), (3, 2), (2, 2), "SAME",
                                    (4, 3)),
    "avg_global": lambda: pool(23, "AVERAGE_POOL_2D", (1, 4, 4, 9), (4, 4), (1, 1), "VALID",
                               (1, 1)),
    "avg_relu6": lambda: pool(24, "AVERAGE_POOL_2D", (1, 5, 5, 3), (2, 2), (1, 1), "SAME",
                              (5, 5), act="RELU6"),
    "max_valid_2x2": lambda: pool(30, "MAX_POOL_2D", (1, 6, 6, 3), (2, 2), (2, 2), "VALID",
                                  (3, 3)),
    "max_same_3x3_s2": lambda: pool(31, "MAX_POOL_2D", (2, 7, 5, 4), (3, 3), (2, 2), "SAME",
                                    (4, 3)),
    "max_same_s3": lambda: pool(32, "MAX_POOL_2D", (1, 8, 8, 2), (2, 3), (3, 3), "SAME",
                                (3, 3)),
    "max_relu": lambda: pool(33, "MAX_POOL_2D", (1, 4, 4, 3), (2, 2), (1, 1), "VALID", (3, 3),
                             act="RELU"),
    "pad_hw": lambda: pad(40, (1, 4, 5, 3), [[0, 0], [1, 2], [2, 1], [0, 0]]),
    "pad_all_dims": lambda: pad(41, (2, 3, 3, 2), [[1, 0], [0, 1], [1, 1], [2, 3]], dtype="int64"),
    "pad_2d": lambda: pad(42, (3, 4), [[1, 1], [0, 2]]),
    "padv2_value": lambda: pad(43, (1, 3, 3, 4), [[0, 0], [1, 1], [1, 1], [0, 0]], value=-7),
    "concat_channels": lambda: concat(50, [(1, 3, 3, 4), (1, 3, 3, 2)], 3),
    "concat_neg_axis": lambda: concat(51, [(1, 2, 3, 4), (1, 2, 3, 1), (1, 2, 3, 3)], -1),
    "concat_height": lambda: concat(52, [(2, 2, 3, 4), (2, 5, 3, 4)], 1),
    "concat_batch": lambda: concat(53, [(1, 4), (3, 4)], 0),
    "concat_const": lambda: concat(54, [(1, 2, 2, 3), (1, 2, 2, 5)], 3, const=(1,)),
    "requant_down": lambda: requant(60, (1, 4, 4, 8), 0.37),
    "requant_up": lambda: requant(61, (2, 33), 3.3),
    "requant_same": lambda: requant(62, (7,), 1.0),
    "reshape_option": lambda: reshape(70, (1, 2, 3, 4), [1, -1], (1, 24)),
    "reshape_input": lambda: reshape(71, (1, 1, 1, 10), [-1, 10], (1, 10), via_input=True),
}


def _fixed_seed(case_id: str) -> int:
    return sum(map(ord, case_id))


def _inputs(case: Case) -> list[np.ndarray]:
    rng = np.random.default_rng(_fixed_seed(case.opcode))
    return [rng.integers(-128, 128, size=case.tensors[i].shape, dtype=np.int8)
            for i in case.graph.dynamic_inputs(case.op)]


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_kernel_matches_reference(case_id: str) -> None:
    case = CASES[case_id]()
    opdef = lookup(case.op)
    params = opdef.prepare(case.op, case.graph)
    inputs = _inputs(case)
    expected = opdef.reference(params, inputs)
    assert expected.dtype == np.int8 and expected.shape == case.tensors[-1].shape
    if case.opcode == "RESHAPE":
        assert opdef.aliases_input and opdef.emit(params, ConstPool(), ["in"], "out") == ""
        np.testing.assert_array_equal(expected.ravel(), inputs[0].ravel())
        return
    actual = run_op(opdef, params, inputs, case.tensors[-1].shape)
    np.testing.assert_array_equal(actual, expected)


# --- emitted code, compiled on the host -------------------------------------------------------

def test_emitted_code_matches_reference() -> None:
    case_ids = sorted(k for k in CASES if not k.startswith("reshape"))
    for case_id in case_ids:
        case = CASES[case_id]()
        opdef = lookup(case.op)
        params = opdef.prepare(case.op, case.graph)
        inputs = [np.ascontiguousarray(a) for a in _inputs(case)]
        expected = opdef.reference(params, inputs)
        out = run_op(opdef, params, inputs, case.tensors[-1].shape)
        np.testing.assert_array_equal(out, expected, err_msg=case_id)


# --- what prepare() must refuse ---------------------------------------------------------------

def _mutate(case: Case, **changes) -> Case:
    for index, fields in changes.items():
        t = case.tensors[int(index[1:])]
        for key, value in fields.items():
            setattr(t, key, value)
    return case


def _requant_float() -> Case:
    case = requant(80, (4,), 0.5)
    case.tensors[0].dtype = "float32"
    case.tensors[0].quant = None
    return case


def _concat_rescale() -> Case:
    case = concat(81, [(1, 2), (1, 3)], 1)
    case.tensors[1].quant = Quant(np.array([0.07], np.float32), np.array([3], np.int64))
    return case


def _pool_rescale() -> Case:
    case = pool(82, "AVERAGE_POOL_2D", (1, 4, 4, 2), (2, 2), (2, 2), "VALID", (2, 2))
    case.tensors[-1].quant = Quant(np.array([0.5], np.float32), np.array([0], np.int64))
    return case


REJECTED: dict[str, tuple[Callable[[], Case], str]] = {
    "quantize_float_mid_graph": (_requant_float, "only supported at the model input"),
    "concat_different_scales": (_concat_rescale, "quantization differs"),
    "concat_activation": (lambda: _set_option(concat(83, [(2,), (3,)], 0), activation="RELU"),
                          "fused activation"),
    "pool_rescale": (_pool_rescale, "quantization differ"),
    "pool_bad_padding": (lambda: _set_option(pool(84, "MAX_POOL_2D", (1, 4, 4, 1), (2, 2), (2, 2),
                                                  "VALID", (2, 2)), padding="EXPLICIT"), "padding"),
    "add_rank5": (lambda: add(85, (1, 1, 2, 2, 2), (1, 1, 2, 2, 2), (1, 1, 2, 2, 2)), "rank"),
    "add_no_broadcast": (lambda: add(86, (1, 3), (1, 4), (1, 4)), "broadcast"),
    "add_both_const": (lambda: _both_const(), "both operands are constant"),
    "pad_dynamic_paddings": (lambda: _dynamic_paddings(), "must be a constant"),
    "reshape_bad_count": (lambda: reshape(87, (1, 6), [4, -1], (4, 2)), "cannot hold"),
}


def _set_option(case: Case, **options) -> Case:
    case.options.update(options)
    return case


def _both_const() -> Case:
    b = Builder(88)
    x, y = b.const_act((2,)), b.const_act((2,))
    return b.case("ADD", [x, y], (2,), {"activation": "NONE"})


def _dynamic_paddings() -> Case:
    case = pad(89, (1, 2, 2, 1), [[0, 0], [1, 1], [1, 1], [0, 0]])
    case.tensors[1].data = None
    return case


@pytest.mark.parametrize("case_id", sorted(REJECTED))
def test_prepare_rejects(case_id: str) -> None:
    build, message = REJECTED[case_id]
    case = build()
    with pytest.raises(ModelError, match=message) as info:
        lookup(case.op).prepare(case.op, case.graph)
    assert "\n" not in str(info.value) and "operator 0" in str(info.value)


def test_macs_are_zero() -> None:
    for case_id in ("add_same_shape", "avg_global", "pad_hw", "concat_const", "requant_up"):
        case = CASES[case_id]()
        opdef = lookup(case.op)
        assert opdef.macs(opdef.prepare(case.op, case.graph)) == 0

