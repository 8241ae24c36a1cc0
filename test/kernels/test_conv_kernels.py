"""CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED: numpy reference vs the C++ reference kernels.

Each one-line case builds a one-operator Graph with seeded random weights and quantization,
runs ops.<op>.prepare, then compares reference() with the kernel run through the C++ that emit()
generates (test/kernels/emitted.py) on random int8 inputs: they must be equal byte for byte. A
last test checks the emitted code of a few more operators on fresh inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from emitted import run_op

from mcutrain.frontend.graph import Graph, ModelError, Operator, Quant, Tensor
from mcutrain.ops import common, conv2d, depthwise_conv2d, fully_connected

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Case:
    kind: str  # "conv", "dw" or "fc"
    shape: tuple[int, ...]  # input shape
    out_c: int = 4  # conv output channels / fc units / dw: unused (depth multiplier instead)
    kernel: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    dm: int = 1  # depthwise depth multiplier
    groups: int = 1  # conv groups
    per_channel: bool = True
    activation: str = "NONE"
    bias: bool = True
    small: bool = False  # weights in [-2, 2], inputs within 3 of the zero point: with a tiny
    # output scale this gives requantization multipliers above 1 (left shifts) without saturating
    weight_zp: int = 0  # fc per-tensor weight zero point
    keep_num_dims: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict, hash=False, compare=False)


CASES = [
    Case("conv", (1, 5, 5, 3), 4),
    Case("conv", (1, 7, 6, 3), 5, stride=(2, 2)),
    Case("conv", (1, 8, 8, 4), 6, stride=(2, 2), padding="VALID"),
    Case("conv", (2, 9, 7, 5), 3, kernel=(3, 2), stride=(1, 2), padding="VALID", seed=1),
    Case("conv", (1, 9, 9, 2), 3, dilation=(2, 2), seed=2),
    Case("conv", (1, 10, 11, 3), 4, kernel=(3, 3), dilation=(2, 3), padding="VALID", seed=3),
    Case("conv", (1, 6, 6, 8), 16, kernel=(1, 1), per_channel=False, seed=4),
    Case("conv", (1, 6, 6, 8), 8, kernel=(1, 1), activation="RELU6", seed=5),
    Case("conv", (1, 7, 7, 3), 8, kernel=(5, 5), stride=(2, 2), activation="RELU", seed=6),
    Case("conv", (1, 5, 5, 6), 4, groups=2, seed=7),
    Case("conv", (1, 4, 4, 3), 2, bias=False, activation="RELU_N1_TO_1", seed=8),
    Case("conv", (1, 5, 5, 3), 4, small=True, seed=9),
    Case("conv", (1, 3, 3, 2), 3, kernel=(5, 5), seed=10),  # filter larger than the image
    Case("dw", (1, 6, 6, 4)),
    Case("dw", (1, 7, 7, 3), stride=(2, 2), dm=2, seed=1),
    Case("dw", (1, 8, 9, 5), stride=(2, 2), padding="VALID", seed=2),
    Case("dw", (2, 9, 9, 3), dilation=(2, 2), dm=2, activation="RELU6", seed=3),
    Case("dw", (1, 5, 7, 4), kernel=(5, 3), per_channel=False, seed=4),
    Case("dw", (1, 6, 6, 2), kernel=(3, 3), bias=False, dm=3, seed=5),
    Case("dw", (1, 5, 5, 8), activation="RELU", small=True, seed=6),
    Case("fc", (1, 16), 10),
    Case("fc", (3, 33), 7, activation="RELU", seed=1),
    Case("fc", (1, 2, 3, 4), 5, per_channel=False, seed=2),
    Case("fc", (2, 3, 10), 6, keep_num_dims=True, activation="RELU6", seed=3),
    Case("fc", (4, 12), 9, per_channel=False, weight_zp=3, seed=4),
    Case("fc", (1, 20), 4, bias=False, seed=5),
    Case("fc", (2, 8), 3, small=True, seed=6),
]


def _case_id(c: Case) -> str:
    return f"{c.kind}-{'x'.join(map(str, c.shape))}-s{c.stride[0]}{c.padding[0]}-seed{c.seed}"


def _quant(scale: np.ndarray, zp: np.ndarray | int = 0, axis: int = 0) -> Quant:
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float32))
    zp_arr = np.broadcast_to(np.asarray(zp, dtype=np.int64), scale.shape).copy()
    return Quant(scale=scale, zero_point=zp_arr, axis=axis)


def build_graph(c: Case) -> tuple[Graph, Operator]:
    """A one-operator Graph for the case: tensors input 0, filter 1, bias 2, output 3."""
    rng = np.random.default_rng(c.seed)
    in_scale = float(rng.uniform(0.01, 0.1))
    if c.kind == "fc":
        depth = c.shape[-1]
        units = c.out_c
        w_shape: tuple[int, ...] = (units, depth)
        channels, axis, accum = units, 0, depth
        batches = int(np.prod(c.shape)) // depth
        out_shape: tuple[int, ...] = (*c.shape[:-1], units) if c.keep_num_dims else (batches, units)
    else:
        n, h, w, ch = c.shape
        if c.kind == "conv":
            w_shape = (c.out_c, *c.kernel, ch // c.groups)
            channels, axis, accum = c.out_c, 0, c.kernel[0] * c.kernel[1] * ch // c.groups
        else:
            w_shape = (1, *c.kernel, ch * c.dm)
            channels, axis, accum = ch * c.dm, 3, c.kernel[0] * c.kernel[1]
        win = common.compute_window(c.padding, (h, w), c.kernel, c.stride, c.dilation)
        out_shape = (n, win.out_h, win.out_w, channels)
    f_scales = rng.uniform(0.002, 0.02, size=channels if c.per_channel else 1)
    w_max, x_std = (2, 2.0) if c.small else (127, 74.0)
    acc_std = (w_max * 0.6) * x_std * np.sqrt(accum)
    # Output scale chosen so typical accumulators land inside int8 (std ~ 40 levels).
    out_scale = in_scale * float(f_scales.mean()) * acc_std / 40.0
    weights = rng.integers(-w_max, w_max + 1, size=w_shape, dtype=np.int64).astype(np.int8)
    bias_bound = int(acc_std)
    tensors = [
        Tensor(0, "input", tuple(c.shape), "int8", _quant(in_scale, int(rng.integers(-128, 128)))),
        Tensor(1, "filter", w_shape, "int8", _quant(f_scales, c.weight_zp, axis), weights),
        Tensor(2, "bias", (channels,), "int32", _quant(in_scale * f_scales, 0, 0),
               rng.integers(-bias_bound, bias_bound + 1, size=channels).astype(np.int32)),
        Tensor(3, "output", out_shape, "int8", _quant(out_scale, int(rng.integers(-128, 128)))),
    ]
    if c.kind == "fc":
        opcode = "FULLY_CONNECTED"
        options = {"activation": c.activation, "keep_num_dims": c.keep_num_dims,
                   "weights_format": "DEFAULT"}
    else:
        opcode = "CONV_2D" if c.kind == "conv" else "DEPTHWISE_CONV_2D"
        options = {"padding": c.padding, "stride_h": c.stride[0], "stride_w": c.stride[1],
                   "dilation_h": c.dilation[0], "dilation_w": c.dilation[1],
                   "activation": c.activation}
        if c.kind == "dw":
            options["depth_multiplier"] = c.dm
    op = Operator(0, opcode, [0, 1, 2 if c.bias else -1], [3], options)
    return Graph("case", tensors, [op], [0], [3]), op


MODULES = {"conv": conv2d, "dw": depthwise_conv2d, "fc": fully_connected}


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_reference_equals_kernel(case: Case) -> None:
    graph, op = build_graph(case)
    module = MODULES[case.kind]
    params = module.prepare(op, graph)
    rng = np.random.default_rng(100 + case.seed)
    if case.small:
        assert params.shift.max() > 0, "case meant to exercise multipliers above 1"
    for _ in range(3):
        if case.small:
            zp = -params.input_offset
            x = np.clip(zp + rng.integers(-3, 4, size=case.shape), -128, 127).astype(np.int8)
        else:
            x = rng.integers(-128, 128, size=case.shape, dtype=np.int64).astype(np.int8)
        expected = module.reference(params, [x])
        assert expected.shape == graph.tensor(3).shape
        got = run_op(module.OPDEF, params, [x], tuple(params.output_shape))
        np.testing.assert_array_equal(got.reshape(expected.shape), expected)
    # The case must exercise requantization, not just saturate to the clamp bounds.
    assert len(np.unique(expected)) > 2 or expected.size < 8


def test_reference_matches_direct_loop() -> None:
    """The vectorised numpy conv equals a literal transcription of TFLite's loop nest."""
    case = Case("conv", (1, 6, 5, 4), 4, kernel=(3, 2), stride=(2, 1), dilation=(1, 2),
                groups=2, seed=11)
    graph, op = build_graph(case)
    p = conv2d.prepare(op, graph)
    x = np.random.default_rng(5).integers(-128, 128, size=case.shape).astype(np.int8)
    acc = np.zeros(p.output_shape, dtype=np.int64)
    out_c, f_h, f_w, f_c = p.filter.shape
    per_group = out_c // (p.input_shape[3] // f_c)
    for oy in range(p.output_shape[1]):
        for ox in range(p.output_shape[2]):
            for oc in range(out_c):
                for fy in range(f_h):
                    for fx in range(f_w):
                        iy = oy * p.stride[0] - p.pad[0] + fy * p.dilation[0]
                        ix = ox * p.stride[1] - p.pad[1] + fx * p.dilation[1]
                        if 0 <= iy < p.input_shape[1] and 0 <= ix < p.input_shape[2]:
                            c0 = (oc // per_group) * f_c
                            xs = x[0, iy, ix, c0:c0 + f_c].astype(np.int64) + p.input_offset
                            acc[0, oy, ox, oc] += int(xs @ p.filter[oc, fy, fx].astype(np.int64))
    np.testing.assert_array_equal(conv2d.accumulate(p, x), acc)


@pytest.mark.parametrize("mutate, message", [
    (lambda g, op: setattr(g.tensors[0], "dtype", "int16"), "int16"),
    (lambda g, op: setattr(g.tensors[1], "data", None), "constant"),
    (lambda g, op: setattr(g.tensors[1].quant, "zero_point", np.ones(4, np.int64)), "zero point"),
    (lambda g, op: op.options.update(activation="TANH"), "TANH"),
    (lambda g, op: op.options.update(padding="EXPLICIT"), "padding"),
    (lambda g, op: setattr(g.tensors[3], "shape", (1, 4, 4, 4)), "output shape"),
    (lambda g, op: setattr(g.tensors[0], "quant", None), "quantization"),
])
def test_prepare_rejects(mutate, message: str) -> None:
    graph, op = build_graph(Case("conv", (1, 5, 5, 3), 4))
    mutate(graph, op)
    with pytest.raises(ModelError, match=message) as err:
        conv2d.prepare(op, graph)
    assert str(err.value).startswith("operator 0 (CONV_2D)")


def test_fc_rejects_shuffled_weights_and_float_input() -> None:
    graph, op = build_graph(Case("fc", (1, 16), 10))
    op.options["weights_format"] = "SHUFFLED4x16INT8"
    with pytest.raises(ModelError, match="weights_format"):
        fully_connected.prepare(op, graph)
    graph, op = build_graph(Case("fc", (1, 16), 10))
    graph.tensors[0].dtype = "float32"
    with pytest.raises(ModelError, match="float32"):
        fully_connected.prepare(op, graph)


def test_emitted_code_matches_reference() -> None:
    cases = [Case("conv", (1, 7, 6, 3), 5, stride=(2, 2), seed=1),
             Case("dw", (1, 7, 7, 3), stride=(2, 2), dm=2, activation="RELU6", seed=2),
             Case("fc", (2, 3, 10), 6, bias=False, seed=3),
             Case("fc", (2, 12), 9, activation="RELU", seed=4)]
    prepared = []
    for i, case in enumerate(cases):
        graph, op = build_graph(case)
        op.index = i
        prepared.append(MODULES[case.kind].prepare(op, graph))
    rng = np.random.default_rng(7)
    for case, params in zip(cases, prepared, strict=True):
        x = rng.integers(-128, 128, size=case.shape).astype(np.int8)
        expected = MODULES[case.kind].reference(params, [x])
        out = run_op(MODULES[case.kind].OPDEF, params, [x], expected.shape)
        np.testing.assert_array_equal(out, expected)
        assert MODULES[case.kind].macs(params) > 0



LIMIT_TAPS = (2**31 - 1) // (128 * 255)  # taps of |w| 128 times |x - zp| 255 that fit int32


@pytest.mark.parametrize(("kind", "shape", "kernel"), [
    ("conv", (1, 1, 1, LIMIT_TAPS + 1), (1, 1)),
    ("dw", (1, 1, LIMIT_TAPS + 1, 1), (1, LIMIT_TAPS + 1)),
    ("fc", (1, LIMIT_TAPS + 1), (1, 1)),
])
def test_accumulator_bound_refuses_one_tap_past_int32(kind: str, shape: tuple[int, ...],
                                                      kernel: tuple[int, int]) -> None:
    """One output channel of LIMIT_TAPS + 1 taps, all weights -128 but the last, input zero
    point 127: accepted when the last is 0 (65793 * 128 * 255 fits int32), refused in one line
    naming the depth when it is -128 too. The kernels add in plain int32 inside that bound."""
    graph, op = build_graph(Case(kind, shape, 1, kernel=kernel, padding="VALID"))
    graph.tensors[0].quant.zero_point[...] = 127
    weights = np.full(graph.tensors[1].shape, -128, dtype=np.int8)
    weights.reshape(-1)[-1] = 0
    graph.tensors[1].data = weights
    MODULES[kind].prepare(op, graph)
    graph.tensors[1].data = np.full_like(weights, -128)
    with pytest.raises(ModelError) as err:
        MODULES[kind].prepare(op, graph)
    message = str(err.value)
    assert message.startswith(f"operator 0 ({op.opcode})") and "\n" not in message
    assert f"{LIMIT_TAPS + 1} products" in message
