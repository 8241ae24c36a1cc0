"""The Cortex-M7 kernel variants against the numpy reference on randomised shapes.

Each variant must equal the reference kernel bit for bit wherever its `serves` predicate accepts
the shape. Here the host build compiles the variants with the plain C++ stand-ins of the DSP
instructions (firmware/kernels/dsp.h), so what is checked is the algorithm: the blocking,
the column order, the odd-channel and odd-pixel tails, padding and strides. The same kernels
with the real SMLAD/SXTB16 run on the emulated Cortex-M7 in test_firmware_bitexact.py (every
shipped model against LiteRT) and test_m7_emulated.py (random layers).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from emitted import run_op
from test_conv_kernels import Case, build_graph

from mcutrain.ops import conv2d, depthwise_conv2d


def random_conv_case(seed: int) -> Case:
    """A random CONV_2D case; odd sizes are as likely as even ones."""
    rng = np.random.default_rng(seed)
    kernel = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    if rng.random() < 0.4:
        kernel = (1, 1)  # pointwise, the bulk of MobileNetV2's MACs
    stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    dilation = (1, 1) if rng.random() < 0.7 else (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    padding = "SAME" if rng.random() < 0.6 else "VALID"
    span_h = (kernel[0] - 1) * dilation[0] + 1
    span_w = (kernel[1] - 1) * dilation[1] + 1
    h = int(rng.integers(span_h if padding == "VALID" else 1, span_h + 8))
    w = int(rng.integers(span_w if padding == "VALID" else 1, span_w + 8))
    channels = int(rng.choice([1, 2, 3, 4, 5, 7, 8, 12, 13, 16, 24]))
    return Case("conv", (int(rng.integers(1, 3)), h, w, channels),
                out_c=int(rng.integers(1, 12)), kernel=kernel, stride=stride, dilation=dilation,
                padding=padding, per_channel=bool(rng.random() < 0.7),
                activation=str(rng.choice(["NONE", "RELU", "RELU6"])),
                bias=bool(rng.random() < 0.85), small=bool(rng.random() < 0.1), seed=seed)


def random_depthwise_case(seed: int) -> Case:
    """A random DEPTHWISE_CONV_2D case with depth multiplier 1; 3x3 most often, as in
    MobileNets, and the 5x5 and 7x7 the kernel unrolls too."""
    rng = np.random.default_rng(seed)
    size = int(rng.choice([3, 3, 3, 5, 7, 2, 4]))
    kernel = (size, size) if rng.random() < 0.8 else (size, int(rng.integers(1, 6)))
    stride = (int(rng.integers(1, 3)),) * 2 if rng.random() < 0.8 else (1, 2)
    dilation = (1, 1) if rng.random() < 0.8 else (2, 2)
    padding = "SAME" if rng.random() < 0.7 else "VALID"
    span_h = (kernel[0] - 1) * dilation[0] + 1
    span_w = (kernel[1] - 1) * dilation[1] + 1
    h = int(rng.integers(span_h if padding == "VALID" else 1, span_h + 9))
    w = int(rng.integers(span_w if padding == "VALID" else 1, span_w + 9))
    channels = int(rng.choice([1, 3, 4, 5, 8, 11, 16, 24, 33]))
    return Case("dw", (int(rng.integers(1, 3)), h, w, channels), kernel=kernel, stride=stride,
                dilation=dilation, padding=padding, per_channel=bool(rng.random() < 0.7),
                activation=str(rng.choice(["NONE", "RELU", "RELU6"])),
                bias=bool(rng.random() < 0.85), small=bool(rng.random() < 0.1), seed=seed)


def _inputs(case: Case, params: object, rng: np.random.Generator) -> np.ndarray:
    if case.small:
        zp = -params.input_offset
        return np.clip(zp + rng.integers(-3, 4, size=case.shape), -128, 127).astype(np.int8)
    return rng.integers(-128, 128, size=case.shape, dtype=np.int64).astype(np.int8)


CONV_SEEDS = range(60)


@pytest.mark.parametrize("seed", CONV_SEEDS)
def test_conv2d_m7_equals_reference(seed: int) -> None:
    case = random_conv_case(seed)
    graph, op = build_graph(case)
    params = conv2d.prepare(op, graph)
    assert conv2d.M7.serves(params, 0)
    rng = np.random.default_rng(1000 + seed)
    x = _inputs(case, params, rng)
    expected = conv2d.reference(params, [x])
    got = run_op(conv2d.OPDEF, params, [x], tuple(params.output_shape), variant=conv2d.M7)
    np.testing.assert_array_equal(got, expected.reshape(got.shape))


def test_conv2d_m7_declines_grouped_convolution() -> None:
    graph, op = build_graph(Case("conv", (1, 5, 5, 6), 4, groups=2, seed=7))
    assert not conv2d.M7.serves(conv2d.prepare(op, graph), 0)


def test_conv2d_m7_without_enough_scratch_runs_the_reference() -> None:
    """Given less scratch than it asks for, the kernel must still answer right (it falls back),
    never write past the buffer it was given."""
    case = Case("conv", (1, 6, 5, 8), 6, kernel=(3, 3), seed=3)
    graph, op = build_graph(case)
    params = conv2d.prepare(op, graph)
    short = dataclasses.replace(conv2d.M7, scratch_bytes=lambda p: 4)
    x = _inputs(case, params, np.random.default_rng(3))
    got = run_op(conv2d.OPDEF, params, [x], tuple(params.output_shape), variant=short)
    np.testing.assert_array_equal(got, conv2d.reference(params, [x]).reshape(got.shape))


@pytest.mark.parametrize("seed", range(60))
def test_depthwise_m7_equals_reference(seed: int) -> None:
    case = random_depthwise_case(seed)
    graph, op = build_graph(case)
    params = depthwise_conv2d.prepare(op, graph)
    assert depthwise_conv2d.M7.serves(params, 0)
    x = _inputs(case, params, np.random.default_rng(2000 + seed))
    expected = depthwise_conv2d.reference(params, [x])
    got = run_op(depthwise_conv2d.OPDEF, params, [x], tuple(params.output_shape),
                 variant=depthwise_conv2d.M7)
    np.testing.assert_array_equal(got, expected.reshape(got.shape))


def test_depthwise_m7_declines_what_it_does_not_compute() -> None:
    graph, op = build_graph(Case("dw", (1, 7, 7, 3), stride=(2, 2), dm=2, seed=1))
    params = depthwise_conv2d.prepare(op, graph)
    assert not depthwise_conv2d.M7.serves(params, 0)
    graph, op = build_graph(Case("dw", (1, 6, 6, 4)))
    assert not depthwise_conv2d.M7.serves(depthwise_conv2d.prepare(op, graph), 2)
