"""The Cortex-M7 kernel variants against the numpy reference on randomised shapes.

Each variant must equal the reference kernel bit for bit wherever its `serves` predicate accepts
the shape; a backward variant equals the numpy training step (input gradient and its scale,
updated weights and bias, PRNG state). Here the host build compiles the variants with the plain
C++ stand-ins of the DSP instructions (firmware/kernels/dsp.h), so what is checked is the
algorithm: the blocking,
the column order, the odd-channel and odd-pixel tails, padding and strides. The same kernels
with the real SMLAD/SXTB16 run on the emulated Cortex-M7 in test_firmware_bitexact.py (every
shipped model against LiteRT) and test_m7_emulated.py (random layers).
"""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest
from emitted import BroadcastDy, run_op, run_train_step
from host_build import host_compile
from test_conv_backward import Step, _n_train, make_slot, pick_lr, prepared
from test_conv_kernels import Case, build_graph

from mcutrain.ops import conv2d, depthwise_conv2d
from mcutrain.ops.base import TrainBinding
from mcutrain.ops.train_math import F32, GRAD_MAX, QGrad, XorShift32


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


@pytest.mark.parametrize("roomy", [False, True], ids=["plain", "roomy"])
@pytest.mark.parametrize(("shape", "out_c", "bias"), [
    ((1, 5, 7, 8), 48, True), ((2, 6, 6, 8), 40, False), ((1, 4, 9, 16), 96, True),
    ((1, 3, 5, 4), 20, True), ((1, 1, 3, 8), 17, True), ((1, 4, 8, 8), 24, True)])
def test_conv2d_m7_expansion_equals_reference(shape: tuple[int, int, int, int], out_c: int,
                                              bias: bool, roomy: bool) -> None:
    """MobileNetV2's expansion layers: a pointwise layer with many more outputs than input
    words takes doubled columns, and at depth 8 runs pixels sixteen at a time; odd pixel
    counts leave a remainder to the four-pixel blocks."""
    case = Case("conv", shape, out_c=out_c, kernel=(1, 1), bias=bias, per_channel=True,
                activation="RELU6" if out_c % 2 else "NONE", seed=out_c)
    graph, op = build_graph(case)
    params = conv2d.prepare(op, graph)
    x = _inputs(case, params, np.random.default_rng(out_c))
    expected = conv2d.reference(params, [x])
    got = run_op(conv2d.OPDEF, params, [x], tuple(params.output_shape), variant=conv2d.M7,
                 roomy=roomy)
    np.testing.assert_array_equal(got, expected.reshape(got.shape))


@pytest.mark.parametrize("seed", range(30))
def test_conv2d_m7_with_trained_parameters_equals_reference(seed: int) -> None:
    """A training layer's forward: the first n_train rows from the SRAM copy, with whatever int8
    weights training gave them, and a bias that trains, small (the short form for every channel,
    requant_table's bias limit) or beyond the limit (the kernel sees it and requantizes the
    checked way)."""
    from mcutrain.ops import m7

    case = random_conv_case(300 + seed)
    graph, op = build_graph(case)
    params = conv2d.prepare(op, graph)
    rng = np.random.default_rng(5000 + seed)
    out_c = params.filter.shape[0]
    n_train = int(rng.integers(0, out_c + 1))
    weights = rng.integers(-127, 128, size=(n_train, *params.filter.shape[1:])).astype(np.int8)
    bias = None
    if rng.random() < 0.8:
        bias = rng.integers(-2 ** 12, 2 ** 12 + 1, size=out_c)
        if seed % 3 == 0:  # past 2^30, where doubling the accumulator would wrap
            bias = np.sign(bias + 0.5) * (2 ** 30 + rng.integers(0, 2 ** 29, size=out_c))
        bias = bias.astype(np.int32)
    x = _inputs(case, params, rng)
    expected = conv2d.reference(conv2d.with_trained(params, weights, bias), [x])
    got = run_op(conv2d.OPDEF, params, [x], tuple(params.output_shape), variant=conv2d.M7,
                 trained=(weights if n_train else None, bias))
    np.testing.assert_array_equal(got, expected.reshape(got.shape))
    table = m7.requant_table(params.filter.reshape(out_c, -1), dataclasses.replace(
        params, train=TrainBinding(n_train, "w" if n_train else None,
                                   "b" if bias is not None else None)))
    if table is not None and (n_train or bias is not None):
        assert table.size == 3 * out_c + 1


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


def random_ring_case(seed: int) -> Case:
    """A random 3x3 stride-1 DEPTHWISE_CONV_2D the staged-row (ring) path takes: rows of 16 or
    more outputs, whole groups of four channels, SAME or VALID padding, 1-2 images."""
    rng = np.random.default_rng(9000 + seed)
    padding = "SAME" if rng.random() < 0.6 else "VALID"
    w = int(rng.integers(16, 30)) + (2 if padding == "VALID" else 0)
    h = int(rng.integers(1, 7))
    if padding == "VALID":
        h += 2
    channels = int(rng.choice([4, 8, 12, 16, 20]))
    return Case("dw", (int(rng.integers(1, 3)), h, w, channels), kernel=(3, 3),
                padding=padding, per_channel=bool(rng.random() < 0.7),
                activation=str(rng.choice(["NONE", "RELU", "RELU6"])),
                bias=bool(rng.random() < 0.85), small=bool(rng.random() < 0.1), seed=seed)


@pytest.mark.parametrize("seed", range(24))
def test_depthwise_m7_ring_equals_reference(seed: int) -> None:
    case = random_ring_case(seed)
    graph, op = build_graph(case)
    params = depthwise_conv2d.prepare(op, graph)
    assert depthwise_conv2d.m7_ring_3x3(params) and depthwise_conv2d.M7.serves(params, 0)
    x = _inputs(case, params, np.random.default_rng(3000 + seed))
    expected = depthwise_conv2d.reference(params, [x])
    got = run_op(depthwise_conv2d.OPDEF, params, [x], tuple(params.output_shape),
                 variant=depthwise_conv2d.M7, roomy=True)
    np.testing.assert_array_equal(got, expected.reshape(got.shape))


def test_depthwise_m7_scratch_mirror_equals_the_kernels(tmp_path) -> None:
    """The host plans what DepthwiseScratchBytes and DepthwiseRingScratchBytes ask for: with one
    byte less the kernel would quietly run the reference or the slower path, which the
    bit-exact tests cannot see."""
    cases = [random_ring_case(k) for k in range(8)] + [random_depthwise_case(k) for k in range(24)]
    params = [depthwise_conv2d.prepare(op, graph) for graph, op in map(build_graph, cases)]
    fields = ["batches", "input_h", "input_w", "input_c", "filter_h", "filter_w", "output_h",
              "output_w", "output_c", "depth_multiplier", "stride_h", "stride_w", "dilation_h",
              "dilation_w", "pad_h", "pad_w"]
    rows = []
    for p in params:
        n, in_h, in_w, in_c = p.input_shape
        _, f_h, f_w, out_c = p.filter.shape
        _, out_h, out_w, _ = p.output_shape
        values = [n, in_h, in_w, in_c, f_h, f_w, out_h, out_w, out_c, p.depth_multiplier,
                  *p.stride, *p.dilation, *p.pad]
        sets = " ".join(f"p.{f} = {v};" for f, v in zip(fields, values, strict=True))
        rows.append(f"  {{ mt::DepthwiseConv2dParams p{{}}; {sets} "
                    'std::printf("%d %d %d\\n", (int)mt::m7::DepthwiseScratchBytes(p), '
                    "(int)mt::m7::DepthwiseRing3x3(p), (int)mt::m7::DepthwiseRingScratchBytes(p));"
                    " }")
    source = tmp_path / "mirror.cc"
    source.write_text('#include <cstdio>\n#include "kernels/depthwise_conv2d_m7.h"\n'
                      "int main() {\n" + "\n".join(rows) + "\n}\n")
    exe = host_compile([source], tmp_path / "mirror", shared=False)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    got = [tuple(int(v) for v in line.split()) for line in out.splitlines()]
    assert got == [(depthwise_conv2d.m7_scratch_bytes(p), int(depthwise_conv2d.m7_ring_3x3(p)),
                    depthwise_conv2d.m7_ring_scratch_bytes(p)) for p in params]
    assert any(depthwise_conv2d.m7_ring_3x3(p) for p in params)


@pytest.mark.parametrize("seed", range(30))
def test_depthwise_m7_with_trained_parameters_equals_reference(seed: int) -> None:
    """A training layer's forward: the first n_train channels' taps from the SRAM copy with any
    int8 values (whole groups of four, and a group shared with frozen channels), a bias that
    trains small or past the requant table's limit, or one in flash."""
    case = random_depthwise_case(400 + seed)
    graph, op = build_graph(case)
    params = depthwise_conv2d.prepare(op, graph)
    rng = np.random.default_rng(5500 + seed)
    _, f_h, f_w, out_c = params.filter.shape
    n_train = int(rng.integers(1, out_c // 4 * 4 + 1)) if out_c >= 4 else 0
    n_train = min(n_train, out_c // 4 * 4 - 3) if seed % 4 == 0 and out_c >= 8 else n_train
    assert depthwise_conv2d.M7.serves(params, n_train)
    weights = rng.integers(-127, 128, size=(f_h, f_w, n_train)).astype(np.int8)
    bias = None
    if rng.random() < 0.7:
        bias = rng.integers(-2 ** 12, 2 ** 12 + 1, size=out_c)
        if seed % 3 == 0:
            bias = np.sign(bias + 0.5) * (2 ** 30 + rng.integers(0, 2 ** 29, size=out_c))
        bias = bias.astype(np.int32)
    x = _inputs(case, params, rng)
    trained = depthwise_conv2d.with_trained(params, weights if n_train else None, bias)
    expected = depthwise_conv2d.reference(trained, [x])
    got = run_op(depthwise_conv2d.OPDEF, params, [x], tuple(params.output_shape),
                 variant=depthwise_conv2d.M7, trained=(weights if n_train else None, bias),
                 n_train=n_train)
    np.testing.assert_array_equal(got, expected.reshape(got.shape))


def test_depthwise_m7_declines_what_it_does_not_compute() -> None:
    graph, op = build_graph(Case("dw", (1, 7, 7, 3), stride=(2, 2), dm=2, seed=1))
    params = depthwise_conv2d.prepare(op, graph)
    assert not depthwise_conv2d.M7.serves(params, 0)
    graph, op = build_graph(Case("dw", (1, 6, 6, 6)))
    six = depthwise_conv2d.prepare(op, graph)
    # Trained channels must end within the whole groups of four (the tail reads flash).
    assert depthwise_conv2d.M7.serves(six, 3) and depthwise_conv2d.M7.serves(six, 4)
    assert not depthwise_conv2d.M7.serves(six, 5)


# ---- backward ----


def random_depthwise_step(seed: int) -> Step:
    """A random depth-multiplier-1 DEPTHWISE_CONV_2D training step: the input gradient always,
    the trained prefix anywhere from none to every channel (it is read from the SRAM copy)."""
    case = random_depthwise_case(seed)
    rng = np.random.default_rng(7000 + seed)
    channels = case.shape[3]
    n_train = int(rng.choice([0, int(rng.integers(0, channels + 1)), channels]))
    return Step(case, n_train=n_train, bias=bool(rng.random() < 0.7),
                stochastic=bool(rng.random() < 0.5), qas=bool(rng.random() < 0.8), seed=seed)


@pytest.mark.parametrize("roomy", [None, -1, 1, 0], ids=["plain", "staged", "padded", "wide"])
@pytest.mark.parametrize("seed", range(40))
def test_depthwise_m7_backward_equals_reference(seed: int, roomy: int | None) -> None:
    """With the plain scratch the input gradient is gathered twice; with a roomy one once, its
    sums waiting in halves (GatherRequantizeStaged); at stride 1 along the width, given more,
    from zero-margined ring rows, four channels or M7_WIDE_LANES a block: the same bits every
    way."""
    step = random_depthwise_step(seed)
    p, x, dy, lr = prepared(step)
    variant = depthwise_conv2d.M7_BACKWARD
    n_train = _n_train(step, p)
    assert variant.serves(p, n_train)
    scratch = variant.step_scratch_bytes(p, True, n_train)
    if roomy is not None:
        sizes = variant.roomy_step_scratch_bytes(p, True, n_train)
        assert sizes[-1] == depthwise_conv2d.m7_staged_input_grad_scratch_bytes(p)
        padded = depthwise_conv2d.m7_padded_input_grad_scratch_bytes(p)
        wide = depthwise_conv2d.m7_wide_input_grad_scratch_bytes(p)
        assert sizes == ((sizes[-1],) if padded is None else (wide, padded, sizes[-1]))
        scratch = sizes[min(roomy, len(sizes) - 1)]
    slot = make_slot(step, p)
    got = run_train_step("DEPTHWISE_CONV_2D", p, [x], dy, [x.size], slot, float(lr), 99 + seed,
                         variant=variant, scratch_bytes=scratch)
    bdef = depthwise_conv2d.BACKWARD
    saved = [x if bdef.saves_input(p, slot)[0] else None]
    rng = XorShift32(99 + seed)
    (dx,) = bdef.reference(p, saved, dy, [True], slot, lr, rng)
    np.testing.assert_array_equal(got.dxs[0].data, dx.data.ravel())
    assert np.float32(got.dxs[0].scale).tobytes() == np.float32(dx.scale).tobytes()
    if slot.weights is not None:
        np.testing.assert_array_equal(got.weights, slot.weights)
    if slot.bias is not None:
        np.testing.assert_array_equal(got.bias, slot.bias)
    assert got.prng == rng.state


def test_depthwise_m7_backward_declines_a_depth_multiplier() -> None:
    graph, op = build_graph(Case("dw", (1, 7, 7, 3), stride=(2, 2), dm=2, seed=1))
    assert not depthwise_conv2d.M7_BACKWARD.serves(depthwise_conv2d.prepare(op, graph), 0)


def test_depthwise_m7_input_grad_without_enough_scratch_runs_the_reference() -> None:
    step = Step(Case("dw", (1, 6, 5, 6), seed=4), n_train=0, bias=False)
    p, x, dy, lr = prepared(step)
    short = dataclasses.replace(depthwise_conv2d.M7_BACKWARD, scratch_bytes=lambda p: 8)
    got = run_train_step("DEPTHWISE_CONV_2D", p, [x], dy, [x.size], variant=short)
    (dx,) = depthwise_conv2d.BACKWARD.reference(p, [None], dy, [True], None, lr, XorShift32(1))
    np.testing.assert_array_equal(got.dxs[0].data, dx.data.ravel())


def random_conv_step(seed: int) -> Step:
    """A random plain CONV_2D training step; half of them pointwise at stride 1, the shape the
    weight update is optimized for (the paper's sparse scheme trains those)."""
    case = random_conv_case(seed)
    rng = np.random.default_rng(8000 + seed)
    if rng.random() < 0.5:
        case = dataclasses.replace(case, kernel=(1, 1), stride=(1, 1), dilation=(1, 1),
                                   shape=(case.shape[0], case.shape[1], case.shape[2],
                                          int(rng.choice([4, 5, 8, 13, 16, 33]))))
    out_c = case.out_c
    n_train = int(rng.choice([0, int(rng.integers(0, out_c + 1)), out_c]))
    bias = bool(rng.random() < 0.7)
    # A step that wants nothing (no dx, nothing trained) is not emitted at all.
    dx = bool(rng.random() < 0.8) or (n_train == 0 and not bias)
    return Step(case, n_train=n_train, bias=bias, dx=dx, stochastic=bool(rng.random() < 0.5),
                qas=bool(rng.random() < 0.8), seed=seed)


def _check_step(got, p, x, dy, step: Step, slot, lr, state: int) -> None:
    bdef = conv2d.BACKWARD
    saved = [x if bdef.saves_input(p, slot)[0] else None]
    rng = XorShift32(state)
    (dx,) = bdef.reference(p, saved, dy, [step.dx], slot, lr, rng)
    if step.dx:
        np.testing.assert_array_equal(got.dxs[0].data, dx.data.ravel())
        assert np.float32(got.dxs[0].scale).tobytes() == np.float32(dx.scale).tobytes()
    if slot.weights is not None:
        np.testing.assert_array_equal(np.asarray(got.weights).ravel(), slot.weights.ravel())
    if slot.bias is not None:
        np.testing.assert_array_equal(got.bias, slot.bias)
    assert got.prng == rng.state


@pytest.mark.parametrize("seed", range(60))
def test_conv2d_m7_backward_equals_reference(seed: int) -> None:
    step = random_conv_step(seed)
    p, x, dy, lr = prepared(step)
    assert conv2d.M7_BACKWARD.serves(p, _n_train(step, p))
    slot = make_slot(step, p)
    got = run_train_step("CONV_2D", p, [x], dy, [x.size if step.dx else None], slot, float(lr),
                         55 + seed, variant=conv2d.M7_BACKWARD)
    _check_step(got, p, x, dy, step, slot, lr, 55 + seed)


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("seed", range(12))
def test_conv2d_m7_backward_reads_a_masked_broadcast_view(seed: int, masked: bool) -> None:
    """dy as a spatial MEAN's backward gives it (one vector at every pixel, mask bits applied
    on the fly, or none) equals the stored, masked broadcast."""
    step = random_conv_step(100 + seed)
    p, x, _, _ = prepared(step)
    out_shape = tuple(p.output_shape)
    channels, count = out_shape[-1], int(np.prod(out_shape[:-1]))
    rng = np.random.default_rng(300 + seed)
    source = rng.integers(-GRAD_MAX, GRAD_MAX + 1, size=channels)
    source[0] = GRAD_MAX
    source = QGrad(source.astype(np.int16), F32(rng.uniform(1e-4, 1e-2)))
    keep = rng.random(count * channels) > (0.3 if masked else -1.0)
    full = np.broadcast_to(source.data, out_shape).ravel()
    dy = QGrad(np.where(keep, full, 0).astype(np.int16).reshape(out_shape),
               F32(source.scale) / F32(count))
    lr = pick_lr(step, p, x, dy)
    slot = make_slot(step, p)
    bits = np.packbits(keep, bitorder="little") if masked else None
    got = run_train_step("CONV_2D", p, [x], BroadcastDy(source, count, bits),
                         [x.size if step.dx else None], slot, float(lr), 4321,
                         variant=conv2d.M7_BACKWARD)
    _check_step(got, p, x, dy, step, slot, lr, 4321)


def test_conv2d_m7_backward_declines_grouped_convolution() -> None:
    graph, op = build_graph(Case("conv", (1, 5, 5, 6), 4, groups=2, seed=7))
    assert not conv2d.M7_BACKWARD.serves(conv2d.prepare(op, graph), 0)


@pytest.mark.parametrize("scratch", [0, 4])
def test_conv2d_m7_backward_without_enough_scratch_runs_the_reference(scratch: int) -> None:
    """Given less scratch than it asks for, or none (a step that planned none passes nullptr,
    0), every kernel must still answer right: it falls back to the reference."""
    step = Step(Case("conv", (1, 5, 5, 8), 6, kernel=(1, 1), seed=2 + scratch), n_train=3)
    p, x, dy, lr = prepared(step)
    slot = make_slot(step, p)
    got = run_train_step("CONV_2D", p, [x], dy, [x.size], slot, float(lr), 9,
                         variant=conv2d.M7_BACKWARD, scratch_bytes=scratch)
    _check_step(got, p, x, dy, step, slot, lr, 9)


@pytest.mark.parametrize("roomy", [0, 1], ids=["fastest", "staged"])
@pytest.mark.parametrize("seed", range(24))
def test_conv2d_m7_roomy_input_grad_equals_reference(seed: int, roomy: int) -> None:
    """Given a roomy scratch the input gradient is gathered once, its sums waiting in halves
    (GatherRequantizeStaged), and a pointwise one four pixels at a time given the most: the
    same bits as the two-pass gather."""
    step = dataclasses.replace(random_conv_step(200 + seed), dx=True)
    p, x, dy, lr = prepared(step)
    slot = make_slot(step, p)
    n_train = _n_train(step, p)
    sizes = conv2d.M7_BACKWARD.roomy_step_scratch_bytes(p, True, n_train)
    column = conv2d.m7_weight_update_scratch_bytes(p) if n_train else 0
    expected = [conv2d.m7_staged_input_grad_scratch_bytes(p)]
    if conv2d.m7_pointwise_grad(p):
        expected.insert(0, conv2d.m7_pointwise_input_grad_scratch_bytes(p))
    if conv2d.m7_line_grad(p):
        expected.insert(0, conv2d.m7_line_input_grad_scratch_bytes(p, n_train))
    both = []
    if n_train and conv2d.m7_transposed_weight_grad(p):
        transposed = conv2d.m7_transposed_weight_update_scratch_bytes(p)
        both = [max(s, transposed) for s in expected]
    assert sizes == tuple(dict.fromkeys([*both, *(max(s, column) for s in expected)]))
    scratch = sizes[min(roomy, len(sizes) - 1)]
    got = run_train_step("CONV_2D", p, [x], dy, [x.size], slot, float(lr), 77 + seed,
                         variant=conv2d.M7_BACKWARD, scratch_bytes=scratch)
    _check_step(got, p, x, dy, step, slot, lr, 77 + seed)


@pytest.mark.parametrize("seed", range(16))
def test_conv2d_m7_line_input_grad_equals_reference(seed: int) -> None:
    """1-D layers (a column, as the HAR model's, or a row) of 2-7 taps, stride 1, any padding
    and trained prefix: given its roomy scratch the input gradient runs four positions at a
    time from a sliding window of the folded output gradient."""
    rng = np.random.default_rng(6100 + seed)
    k = int(rng.integers(2, 8))
    length = int(rng.integers(k if seed % 2 else 1, 20))
    in_c, out_c = int(rng.choice([1, 3, 4, 8, 13, 24])), int(rng.choice([1, 2, 5, 16, 32]))
    down = seed % 4 != 3
    shape = (int(rng.integers(1, 3)), length, 1, in_c) if down else (1, 1, length, in_c)
    case = Case("conv", shape, out_c, kernel=(k, 1) if down else (1, k),
                padding="VALID" if seed % 2 else "SAME", seed=seed)
    n_train = int(rng.integers(0, out_c + 1))
    step = Step(case, n_train=n_train, bias=bool(seed % 3), dx=True, seed=seed)
    p, x, dy, lr = prepared(step)
    assert conv2d.m7_line_grad(p)
    slot = make_slot(step, p)
    (scratch, *_) = conv2d.M7_BACKWARD.roomy_step_scratch_bytes(p, True, _n_train(step, p))
    got = run_train_step("CONV_2D", p, [x], dy, [x.size], slot, float(lr), 31 + seed,
                         variant=conv2d.M7_BACKWARD, scratch_bytes=scratch)
    _check_step(got, p, x, dy, step, slot, lr, 31 + seed)


@pytest.mark.parametrize("seed", range(24))
def test_conv2d_m7_transposed_weight_update_equals_reference(seed: int) -> None:
    """A single-image pointwise or 1-D layer with trained channels, given the room for its
    input transposed, with and without an input gradient in the same step: the same weights,
    bias and PRNG state as the reference."""
    rng = np.random.default_rng(6600 + seed)
    in_c, out_c = int(rng.choice([1, 3, 4, 8, 13, 24])), int(rng.choice([1, 2, 5, 16, 32]))
    if seed % 2:
        k = int(rng.integers(2, 6))
        length = int(rng.integers(k, 24))
        down = seed % 4 == 1
        case = Case("conv", (1, length, 1, in_c) if down else (1, 1, length, in_c), out_c,
                    kernel=(k, 1) if down else (1, k),
                    padding="VALID" if seed % 3 == 0 else "SAME", seed=seed)
    else:
        case = Case("conv", (1, int(rng.integers(1, 9)), int(rng.integers(1, 9)), in_c), out_c,
                    kernel=(1, 1), padding="VALID", seed=seed)
    dx = bool(seed % 3)
    step = Step(case, n_train=int(rng.integers(1, out_c + 1)), bias=bool(seed % 5),
                dx=dx, stochastic=bool(seed % 4 < 2), seed=seed)
    p, x, dy, lr = prepared(step)
    assert conv2d.m7_transposed_weight_grad(p)
    slot = make_slot(step, p)
    (scratch, *_) = conv2d.M7_BACKWARD.roomy_step_scratch_bytes(p, dx, _n_train(step, p))
    assert scratch >= conv2d.m7_transposed_weight_update_scratch_bytes(p)
    got = run_train_step("CONV_2D", p, [x], dy, [x.size if dx else None], slot, float(lr),
                         53 + seed, variant=conv2d.M7_BACKWARD, scratch_bytes=scratch)
    _check_step(got, p, x, dy, step, slot, lr, 53 + seed)


def test_a_backward_step_plans_only_the_scratch_of_what_it_computes() -> None:
    graph, op = build_graph(Case("conv", (1, 4, 4, 2), 40, kernel=(3, 3), seed=1))
    p = conv2d.prepare(op, graph)
    variant = conv2d.M7_BACKWARD
    input_grad = conv2d.m7_input_grad_scratch_bytes(p)
    column = conv2d.m7_weight_update_scratch_bytes(p)
    assert input_grad == 9 * 42 * 2 and column == (16 + 2) * 2
    assert variant.step_scratch_bytes(p, True, 0) == input_grad
    assert variant.step_scratch_bytes(p, False, 5) == column
    assert variant.step_scratch_bytes(p, False, 0) == 0  # the bias update needs none
    graph, op = build_graph(Case("dw", (1, 6, 6, 8), seed=2))
    dw = depthwise_conv2d.prepare(op, graph)
    dw_variant = depthwise_conv2d.M7_BACKWARD
    assert dw_variant.step_scratch_bytes(dw, False, 3) == 0  # its updates run the reference
    dw_input_grad = depthwise_conv2d.m7_input_grad_scratch_bytes(dw)
    assert dw_variant.step_scratch_bytes(dw, True, 0) == dw_input_grad


# ---- ADD ----


def random_add_case(seed: int):
    """Two operands of the output's shape (the variant's domain), random scales and zero points
    (same and different), a fused activation, sometimes a constant operand."""
    from test_misc_kernels import add

    rng = np.random.default_rng(9000 + seed)
    shape = tuple(int(v) for v in rng.integers(1, 9, size=int(rng.integers(1, 5))))
    const = None if rng.random() < 0.8 else int(rng.integers(0, 2))
    return add(seed, shape, shape, shape, act=str(rng.choice(["NONE", "RELU", "RELU6"])),
               const=const, same_scale=bool(rng.random() < 0.3))


@pytest.mark.parametrize("seed", range(30))
def test_add_m7_equals_reference(seed: int) -> None:
    from mcutrain.ops import add

    case = random_add_case(seed)
    params = add.prepare(case.op, case.graph)
    assert add.M7.serves(params, 0)
    rng = np.random.default_rng(seed)
    inputs = [rng.integers(-128, 128, size=case.tensors[i].shape, dtype=np.int64).astype(np.int8)
              for i in case.graph.dynamic_inputs(case.op)]
    got = run_op(add.OP, params, inputs, case.tensors[-1].shape, variant=add.M7)
    np.testing.assert_array_equal(got, add.reference(params, inputs))


def test_add_m7_declines_a_broadcast_and_checks_its_short_form() -> None:
    from test_misc_kernels import add as add_case

    from mcutrain.ops import add

    case = add_case(1, (2, 3, 4), (1, 1, 4), (2, 3, 4))
    assert not add.M7.serves(add.prepare(case.op, case.graph), 0)
    params = add.prepare(*(lambda c: (c.op, c.graph))(add_case(2, (4, 4), (4, 4), (4, 4))))
    tables = add.m7_tables(params)
    assert tables.shape == (2, 256)
    short = add.m7_requant(params, tables)
    assert short is not None and short[1] == -params.out_shift
    assert add.m7_requant(dataclasses.replace(params, out_shift=0), tables) is None


# ---- MAX_POOL_2D ----


def random_pool_case(seed: int):
    """A random MAX_POOL_2D: windows overlapping or not, clipped by SAME padding or not, a fused
    activation; channels a multiple of 4 (the forward variant's domain) but in every fifth
    case."""
    from test_misc_kernels import pool

    rng = np.random.default_rng(9500 + seed)
    filt = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    padding = str(rng.choice(["SAME", "VALID"]))
    h = int(rng.integers(filt[0], 9))
    w = int(rng.integers(filt[1], 9))
    channels = 4 * int(rng.integers(1, 7)) + (int(rng.integers(1, 4)) if seed % 5 == 4 else 0)
    if padding == "SAME":
        out_hw = (-(-h // stride[0]), -(-w // stride[1]))
    else:
        out_hw = ((h - filt[0]) // stride[0] + 1, (w - filt[1]) // stride[1] + 1)
    act = str(rng.choice(["NONE", "RELU", "RELU6"]))
    return pool(seed, "MAX_POOL_2D", (int(rng.integers(1, 3)), h, w, channels), filt, stride,
                padding, out_hw, act=act)


@pytest.mark.parametrize("seed", range(30))
def test_max_pool_m7_equals_reference(seed: int) -> None:
    """Forward (every fifth case has a channel count the variant declines: the reference then
    runs) and backward, with ties made likely by a narrow input range."""
    from mcutrain.ops import pooling

    case = random_pool_case(seed)
    p = pooling.prepare(case.op, case.graph)
    assert pooling.M7.serves(p, 0) == (p.channels % 4 == 0)
    rng = np.random.default_rng(seed)
    (x_id,) = case.graph.dynamic_inputs(case.op)
    x = rng.integers(-128, -120 if seed % 3 == 0 else 128, size=case.tensors[x_id].shape,
                     dtype=np.int64).astype(np.int8)
    got = run_op(pooling.MAX, p, [x], case.tensors[-1].shape, variant=pooling.M7)
    np.testing.assert_array_equal(got, pooling.reference_max(p, [x]))
    out_shape = case.tensors[-1].shape
    g = rng.integers(-GRAD_MAX, GRAD_MAX + 1, size=out_shape)
    # A requantized gradient's maximum is GRAD_MAX (with disjoint windows the kernel then moves
    # dy as it is); any other maximum takes the general rescale.
    if seed % 2:
        g.flat[int(rng.integers(g.size))] = GRAD_MAX * int(rng.choice([-1, 1]))
    else:
        g //= 3
    dy = QGrad(g.astype(np.int16), F32(rng.uniform(1e-4, 1e-2)))
    (want,) = pooling.MAX_BACKWARD.reference(p, [x], dy, [True], None, 0.0, XorShift32(1))
    result = run_train_step("MAX_POOL_2D", p, [x], dy, [x.size], variant=pooling.M7_BACKWARD)
    np.testing.assert_array_equal(result.dxs[0].data, want.data.ravel())
    assert np.float32(result.dxs[0].scale).tobytes() == np.float32(want.scale).tobytes()
