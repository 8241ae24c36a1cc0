"""Training of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED (docs/training.md).

(a) the numpy backward step (ops.<op>.BACKWARD.reference) equals the C++ kernels run through
    the emitted backward step (test/kernels/emitted.py run_train_step) exactly: input gradient
    (int16 and scale), updated weights and bias, PRNG state;
(b) the gradient math agrees with float64 autodiff (tf.GradientTape) of the dequantized operator;
(c) emitted C++ (forward with a TrainBinding, and the backward step) compiled on the host equals
    the numpy reference.
Cases are one line each and reuse the graph builder of test_conv_kernels.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
from emitted import BroadcastDy, Emission, run_train_step
from test_conv_kernels import MODULES, Case, build_graph

from mcutrain.frontend.graph import ModelError
from mcutrain.ops import param_train
from mcutrain.ops.base import BACKWARD, REGISTRY, TrainBinding, TrainSlot
from mcutrain.ops.train_math import F32, GRAD_MAX, QGrad, XorShift32

OPCODES = {"conv": "CONV_2D", "dw": "DEPTHWISE_CONV_2D", "fc": "FULLY_CONNECTED"}


@dataclass(frozen=True)
class Step:
    case: Case
    n_train: int | str = "all"  # output channels trained ("all" = out_c, 0 = weights frozen)
    bias: bool = True  # bias trains
    dx: bool = True  # input gradient wanted
    stochastic: bool = True
    qas: bool = True
    seed: int = 0


STEPS = [
    Step(Case("conv", (1, 5, 5, 3), 4)),
    Step(Case("conv", (1, 7, 6, 3), 5, stride=(2, 2), seed=1), n_train=3, qas=False),
    Step(Case("conv", (1, 8, 8, 4), 6, stride=(2, 2), padding="VALID", seed=2), stochastic=False),
    Step(Case("conv", (2, 9, 7, 5), 3, kernel=(3, 2), stride=(1, 2), padding="VALID", seed=3),
         n_train=1),
    Step(Case("conv", (1, 9, 9, 2), 3, dilation=(2, 2), seed=4), bias=False),
    Step(Case("conv", (1, 6, 6, 8), 16, kernel=(1, 1), per_channel=False, seed=5), n_train=8),
    Step(Case("conv", (1, 5, 5, 6), 4, groups=2, seed=6), n_train=3),
    Step(Case("conv", (1, 6, 6, 6), 6, groups=3, stride=(2, 2), seed=7), dx=False),
    Step(Case("conv", (1, 3, 3, 2), 3, kernel=(5, 5), seed=8), n_train=0),
    Step(Case("conv", (1, 7, 7, 3), 8, kernel=(5, 5), stride=(2, 2), seed=9), n_train=2,
         stochastic=False, qas=False),
    Step(Case("dw", (1, 6, 6, 4))),
    Step(Case("dw", (1, 7, 7, 3), stride=(2, 2), dm=2, seed=1), n_train=3),
    Step(Case("dw", (1, 8, 9, 5), stride=(2, 2), padding="VALID", seed=2), stochastic=False),
    Step(Case("dw", (2, 9, 9, 3), dilation=(2, 2), dm=2, seed=3), qas=False),
    Step(Case("dw", (1, 5, 7, 4), kernel=(5, 3), per_channel=False, seed=4), n_train=2),
    Step(Case("dw", (1, 6, 6, 2), bias=False, dm=3, seed=5), bias=False, n_train=5),
    Step(Case("dw", (1, 5, 5, 8), seed=6), n_train=0, dx=True),
    Step(Case("fc", (1, 16), 10)),
    Step(Case("fc", (3, 33), 7, seed=1), n_train=4, stochastic=False),
    Step(Case("fc", (1, 2, 3, 4), 5, per_channel=False, seed=2), qas=False),
    Step(Case("fc", (2, 3, 10), 6, keep_num_dims=True, seed=3), n_train=1, dx=False),
    Step(Case("fc", (1, 20), 4, bias=False, seed=5), bias=False),
    Step(Case("fc", (4, 12), 9, seed=6), n_train=0),
    # More input channels per group than one gather block (16): full blocks and a remainder.
    Step(Case("conv", (1, 5, 4, 37), 6, stride=(2, 2), seed=10), n_train=2),
    Step(Case("conv", (1, 4, 4, 40), 4, groups=2, seed=11), n_train=3, stochastic=False),
]


def _step_id(s: Step) -> str:
    c = s.case
    return (f"{c.kind}-{'x'.join(map(str, c.shape))}-n{s.n_train}-{'b' if s.bias else ''}"
            f"{'x' if s.dx else ''}-{'sr' if s.stochastic else 'rn'}-{'qas' if s.qas else 'raw'}"
            f"-seed{c.seed}")


def _out_c(p) -> int:
    return int(p.multiplier.size)


def _n_train(step: Step, p) -> int:
    return _out_c(p) if step.n_train == "all" else int(step.n_train)


def make_slot(step: Step, p) -> TrainSlot:
    module = MODULES[step.case.kind]
    n = _n_train(step, p)
    w_coef, bias_coef = param_train.coefficients(p, n, step.qas)
    bias = None
    if step.bias:
        bias = (p.bias if p.bias is not None else np.zeros(_out_c(p), np.int32)).copy()
    return TrainSlot(n_train=n, weights=module.trainable_weights(p, n) if n else None,
                     bias=bias, w_coef=w_coef, bias_coef=bias_coef,
                     stochastic=step.stochastic)


def random_dy(p, rng: np.random.Generator) -> QGrad:
    shape = p.output_shape
    d = rng.integers(-GRAD_MAX, GRAD_MAX + 1, size=shape)
    d[rng.random(size=shape) < 0.2] = 0  # masked positions, as after a RELU
    d.flat[0] = GRAD_MAX
    return QGrad(d.astype(np.int16), F32(rng.uniform(1e-5, 1e-3)))


def pick_lr(step: Step, p, x: np.ndarray, dy: QGrad) -> np.float32:
    """A learning rate that moves the largest weight by ~3 levels, so updates are not all 0."""
    module = MODULES[step.case.kind]
    n = max(_n_train(step, p), 1)
    gw = module.weight_grad(p, x, dy.data.astype(np.int64), n).astype(np.float64)
    w_coef, _ = param_train.coefficients(p, n, step.qas)
    axis = module.GEOMETRY.channel_axis
    shape = [1] * gw.ndim
    shape[axis] = n
    biggest = np.max(np.abs(gw * dy.scale * p.input_scale * w_coef.reshape(shape)))
    return F32(3.0 / biggest) if biggest > 0 else F32(0.01)


def prepared(step: Step):
    graph, op = build_graph(step.case)
    p = MODULES[step.case.kind].prepare(op, graph)
    rng = np.random.default_rng(1000 + step.seed + step.case.seed)
    x = rng.integers(-128, 128, size=step.case.shape).astype(np.int8)
    dy = random_dy(p, rng)
    return p, x, dy, pick_lr(step, p, x, dy)


def run_kernel_step(kind: str, p, slot: TrainSlot, x: np.ndarray, dy: QGrad, lr: np.float32,
                    want_dx: bool, prng: int):
    """The emitted backward step on copies of the slot; returns (dx or None, weights, bias,
    prng)."""
    step = run_train_step(OPCODES[kind], p, [x], dy, [x.size if want_dx else None], slot,
                          float(lr), prng)
    return step.dxs[0], step.weights, step.bias, step.prng


@pytest.mark.parametrize("step", STEPS, ids=[_step_id(s) for s in STEPS])
def test_backward_reference_equals_kernels(step: Step) -> None:
    kind = step.case.kind
    p, x, dy, lr = prepared(step)
    slot = make_slot(step, p)
    before_w = None if slot.weights is None else slot.weights.copy()
    before_b = None if slot.bias is None else slot.bias.copy()
    got_dx, got_w, got_b, got_state = run_kernel_step(kind, p, slot, x, dy, lr,
                                                      step.dx, prng=12345 + step.case.seed)
    bdef = BACKWARD[OPCODES[kind]]
    saved = [x if bdef.saves_input(p, slot)[0] else None]
    rng = XorShift32(12345 + step.case.seed)
    (dx,) = bdef.reference(p, saved, dy, [step.dx], slot, lr, rng)
    if step.dx:
        assert dx is not None and got_dx is not None
        np.testing.assert_array_equal(got_dx.data, dx.data.ravel())
        assert np.float32(got_dx.scale).tobytes() == np.float32(dx.scale).tobytes()
        assert dx.data.shape == tuple(x.shape) and dx.scale > 0
        assert np.abs(dx.data).max() == GRAD_MAX
    else:
        assert dx is None
    if slot.weights is not None:
        np.testing.assert_array_equal(got_w, slot.weights)
        assert not np.array_equal(before_w, slot.weights), "learning rate too small to test"
    if slot.bias is not None:
        np.testing.assert_array_equal(got_b, slot.bias)
        # Without QAS the bias step is scaled by (sx * sW)^2 relative to QAS: usually 0.
        assert not step.qas or not np.array_equal(before_b, slot.bias)
    assert got_state == rng.state
    draws = slot.weights.size if slot.weights is not None and step.stochastic else 0
    reference_rng = XorShift32(12345 + step.case.seed)
    for _ in range(draws):
        reference_rng.next()
    assert rng.state == reference_rng.state, "one PRNG draw per trained weight"


# One step per operator with the input gradient wanted, trained prefix inside the channels.
DIRECT_STEPS = [STEPS[1], STEPS[11], STEPS[18]]


@pytest.mark.parametrize("zero_dy", [False, True], ids=["dy", "zero-dy"])
@pytest.mark.parametrize("step", DIRECT_STEPS, ids=[_step_id(s) for s in DIRECT_STEPS])
def test_input_gradient_is_written_as_int16_in_two_bytes_per_element(step: Step,
                                                                     zero_dy: bool) -> None:
    """The rule promises int16 dx (BackwardDef.int16_dx: the planner gives the gradient 2 bytes
    per element, no int32 accumulators); the harness gives it just that, guarded, and the values
    and scale must still equal the reference's int32 sums requantized, an all-zero dy too."""
    kind = step.case.kind
    bdef = BACKWARD[OPCODES[kind]]
    assert bdef.int16_dx
    p, x, dy, _ = prepared(step)
    if zero_dy:
        dy = QGrad(np.zeros_like(dy.data), dy.scale)
    slot = make_slot(step, p)
    got = run_train_step(OPCODES[kind], p, [x], dy, [x.size], slot, 0.0, 5).dxs[0]
    (want,) = bdef.reference(p, [x], dy, [True], slot, F32(0.0), XorShift32(5))
    assert got is not None and want is not None
    np.testing.assert_array_equal(got.data, want.data.ravel())
    assert np.float32(got.scale).tobytes() == np.float32(want.scale).tobytes()
    assert (want.scale == 0) == zero_dy


@pytest.mark.parametrize("kind", sorted(OPCODES))
def test_backward_macs_count_the_input_gradient_twice(kind: str) -> None:
    """The two-pass input gradient computes each sum twice, a staged one once: the reported
    MACs say so."""
    count = REGISTRY[OPCODES[kind]].trainable.backward_macs
    assert count(1000, 8, True, 0) == 2000
    assert count(1000, 8, False, 2) == 250
    assert count(1000, 8, True, 8) == 3000
    assert count(1000, 8, True, 8, 1) == 2000


def test_saves_input_and_depth() -> None:
    p, _, _, _ = prepared(STEPS[0])
    bdef = BACKWARD["CONV_2D"]
    assert bdef.saves_input(p, None) == [False]
    assert bdef.saves_input(p, make_slot(dataclasses.replace(STEPS[0], n_train=0), p)) == [False]
    assert bdef.saves_input(p, make_slot(STEPS[0], p)) == [True]
    assert bdef.input_grad_depth(p) == 4 * 3 * 3
    dw, _, _, _ = prepared(STEPS[11])
    assert BACKWARD["DEPTHWISE_CONV_2D"].input_grad_depth(dw) == 2 * 3 * 3
    fc, _, _, _ = prepared(STEPS[17])
    assert BACKWARD["FULLY_CONNECTED"].input_grad_depth(fc) == 10


def test_fc_with_weight_zero_point_is_refused() -> None:
    graph, op = build_graph(Case("fc", (4, 12), 9, per_channel=False, weight_zp=3, seed=4))
    p = MODULES["fc"].prepare(op, graph)
    with pytest.raises(ModelError, match="zero point"):
        BACKWARD["FULLY_CONNECTED"].saves_input(p, None)


# ---- (b) independent float check with tf.GradientTape ----


def _float_forward(tf, p, kind: str, x, w):
    """The operator's pre-activation output in float64, written with TF primitives only."""
    if kind == "fc":
        units, depth = p.filter.shape
        return tf.matmul(tf.reshape(x, (p.batches, depth)), w, transpose_b=True)
    _, in_h, in_w, in_c = p.input_shape
    _, out_h, out_w, out_c = p.output_shape
    f_h, f_w = p.filter.shape[1:3]
    after = []
    for axis, size in ((0, in_h), (1, in_w)):
        extent = (p.output_shape[1 + axis] - 1) * p.stride[axis] + \
            ((f_h, f_w)[axis] - 1) * p.dilation[axis] + 1
        after.append(max(0, extent - size - p.pad[axis]))
    xp = tf.pad(x, [[0, 0], [p.pad[0], after[0]], [p.pad[1], after[1]], [0, 0]])
    y = tf.zeros(p.output_shape, dtype=tf.float64)
    for fy in range(f_h):
        for fx in range(f_w):
            y0, x0 = fy * p.dilation[0], fx * p.dilation[1]
            tap = xp[:, y0:y0 + (out_h - 1) * p.stride[0] + 1:p.stride[0],
                     x0:x0 + (out_w - 1) * p.stride[1] + 1:p.stride[1], :]
            if kind == "dw":
                y = y + tf.repeat(tap, p.depth_multiplier, axis=3) * w[0, fy, fx]
            else:
                f_c = p.filter.shape[3]
                groups = in_c // f_c
                per = out_c // groups
                parts = [tf.einsum("nhwc,oc->nhwo", tap[..., g * f_c:(g + 1) * f_c],
                                   w[g * per:(g + 1) * per, fy, fx, :]) for g in range(groups)]
                y = y + tf.concat(parts, axis=3)
    return y


FLOAT_CASES = [
    Step(Case("conv", (1, 7, 6, 3), 5, stride=(2, 2), seed=21)),
    Step(Case("conv", (1, 9, 9, 4), 6, dilation=(2, 2), groups=2, seed=22)),
    Step(Case("conv", (2, 6, 6, 8), 8, kernel=(1, 1), per_channel=False, seed=23)),
    Step(Case("dw", (1, 7, 7, 3), stride=(2, 2), dm=2, seed=24)),
    Step(Case("dw", (1, 8, 8, 4), kernel=(5, 5), padding="VALID", seed=25)),
    Step(Case("fc", (2, 40), 12, seed=26)),
    Step(Case("fc", (1, 3, 3, 4), 7, per_channel=False, seed=27)),
]


@pytest.mark.parametrize("step", FLOAT_CASES, ids=[_step_id(s) for s in FLOAT_CASES])
def test_gradients_match_float_autodiff(step: Step) -> None:
    import tensorflow as tf
    kind = step.case.kind
    module = MODULES[kind]
    p, x, dy, _ = prepared(step)
    sw = param_train.channel_scales(p).astype(np.float64)
    w_axis = 3 if kind == "dw" else 0
    shape = [1] * p.filter.ndim
    shape[w_axis] = sw.size
    w_real = tf.Variable(p.filter.astype(np.float64) * sw.reshape(shape))
    x_real = tf.Variable((x.astype(np.float64) + p.input_offset) * p.input_scale)
    g = dy.data.astype(np.float64).reshape(p.output_shape) * float(dy.scale)
    with tf.GradientTape() as tape:
        y = _float_forward(tf, p, kind, x_real, w_real)
        loss = tf.reduce_sum(y * tf.reshape(tf.constant(g), y.shape))
    dx_true, dw_true = (t.numpy() for t in tape.gradient(loss, [x_real, w_real]))
    # Input gradient: the integer rule with fold and requantization.
    (dx,) = BACKWARD[OPCODES[kind]].reference(p, [x], dy, [True], None, 0.0, XorShift32(1))
    dx_real = dx.data.astype(np.float64) * float(dx.scale)
    err = np.abs(dx_real - dx_true.reshape(dx_real.shape)).max()
    assert err < 2e-3 * np.abs(dx_true).max(), err
    # Weight gradient: GW * dy.scale * sx is the real gradient of the trained weights.
    out_c = _out_c(p)
    gw = module.weight_grad(p, x, dy.data.astype(np.int64), out_c).astype(np.float64)
    gw_real = gw * float(dy.scale) * p.input_scale
    dw_layout = dw_true[0] if kind == "dw" else dw_true  # SRAM layout of all channels
    np.testing.assert_allclose(gw_real, dw_layout.reshape(gw_real.shape), rtol=1e-9,
                               atol=1e-12 * np.abs(dw_layout).max())
    # Bias gradient: the column sums the bias update uses.
    gb_true = g.reshape(-1, out_c).sum(axis=0)
    gb = dy.data.astype(np.int64).reshape(-1, out_c).sum(axis=0) * float(dy.scale)
    np.testing.assert_allclose(gb, gb_true, rtol=1e-9, atol=1e-12)


# ---- (c) emitted code on the host ----


FORWARD_CASES = [Case("conv", (1, 7, 6, 3), 5, stride=(2, 2), seed=1),
                 Case("conv", (1, 5, 5, 6), 4, groups=2, seed=7),
                 Case("dw", (1, 7, 7, 3), stride=(2, 2), dm=2, activation="RELU6", seed=2),
                 Case("fc", (2, 3, 10), 6, seed=3)]


def test_forward_with_trained_channels() -> None:
    """n_train in {0, some, all}: with the SRAM copy equal to flash the output equals the plain
    forward; with perturbed SRAM weights and bias it equals reference(with_trained(...))."""
    e = Emission(*(m.OPDEF.header for m in MODULES.values()))
    bodies, runs = [], []
    rng = np.random.default_rng(3)
    for i, case in enumerate(FORWARD_CASES):
        graph, op = build_graph(case)
        op.index = i
        module = MODULES[case.kind]
        p = module.prepare(op, graph)
        out_c = _out_c(p)
        for j, n in enumerate((0, out_c // 2, out_c)):
            for perturb in (False, True):
                tag = f"op{i}_{j}_{int(perturb)}"
                w = module.trainable_weights(p, n)
                bias = p.bias.copy()
                if perturb:
                    w = np.clip(w.astype(np.int64) + rng.integers(-9, 10, w.shape), -127,
                                127).astype(np.int8)
                    bias = bias + rng.integers(-500, 500, bias.shape).astype(np.int32)
                wb, bb = e.array(w, np.int8), e.array(bias, "<i4")
                binding = TrainBinding(n, wb.ptr if n else None,
                                       bb.as_ptr("int32_t") if perturb else None)
                x = rng.integers(-128, 128, size=case.shape).astype(np.int8)
                expected = module.reference(module.with_trained(p, w, bias if perturb else None),
                                            [x])
                xb, out = e.array(x, np.int8), e.space(expected.size)
                bodies.append(module.emit(dataclasses.replace(p, train=binding), e.pool,
                                          [xb.ptr], out.ptr))
                runs.append((tag, module.reference(p, [x]), expected, out))
    ran = e.run("\n".join(f"{{\n{b}\n}}" for b in bodies))
    for tag, plain, expected, out in runs:
        got = ran.array(out, np.int8).reshape(expected.shape)
        np.testing.assert_array_equal(got, expected, err_msg=tag)
        if tag.endswith("_0"):
            np.testing.assert_array_equal(got, plain, err_msg=tag)


EMIT_STEPS = [STEPS[1], STEPS[6], STEPS[11], STEPS[14], STEPS[18], STEPS[19]]


@pytest.mark.parametrize("step", EMIT_STEPS, ids=[_step_id(s) for s in EMIT_STEPS])
def test_emitted_backward_equals_reference(step: Step) -> None:
    check_emitted_backward(step, None)


@pytest.mark.parametrize("step", [s for s in STEPS if s.case.kind == "fc"],
                         ids=[_step_id(s) for s in STEPS if s.case.kind == "fc"])
def test_fully_connected_m7_backward_equals_reference(step: Step) -> None:
    from mcutrain.ops import fully_connected

    check_emitted_backward(step, fully_connected.M7_BACKWARD)


def check_emitted_backward(step: Step, variant) -> None:  # noqa: ANN001 - a KernelVariant
    kind = step.case.kind
    module = MODULES[kind]
    p, x, dy, lr = prepared(step)
    slot = make_slot(step, p)
    n = slot.n_train if slot.weights is not None else 0
    got = run_train_step(OPCODES[kind], p, [x], dy, [x.size if step.dx else None], slot,
                         float(lr), 777, variant=variant)
    rng = XorShift32(777)
    (dx,) = module.BACKWARD.reference(p, [x], dy, [step.dx], slot, lr, rng)
    if step.dx:
        got_dx = got.dxs[0]
        assert got_dx is not None
        np.testing.assert_array_equal(got_dx.data, dx.data.ravel())
        assert np.float32(got_dx.scale).tobytes() == np.float32(dx.scale).tobytes()
    if n:
        np.testing.assert_array_equal(np.asarray(got.weights).ravel(), slot.weights.ravel())
    if slot.bias is not None:
        np.testing.assert_array_equal(got.bias, slot.bias)
    assert got.prng == rng.state


@pytest.mark.parametrize("step", STEPS[:4], ids=[_step_id(s) for s in STEPS[:4]])
def test_non_finite_updates_never_reach_parameters(step: Step) -> None:
    """An infinite learning rate makes every delta non-finite: both sides must skip the update."""
    p, x, dy, _ = prepared(step)
    slot = make_slot(step, p)
    before_w = None if slot.weights is None else slot.weights.copy()
    before_b = None if slot.bias is None else slot.bias.copy()
    lr = np.float32(np.inf)
    _, got_w, got_b, _ = run_kernel_step(step.case.kind, p, slot, x, dy, lr,
                                         False, prng=7)
    bdef = BACKWARD[OPCODES[step.case.kind]]
    saved = [x if bdef.saves_input(p, slot)[0] else None]
    bdef.reference(p, saved, dy, [False], slot, lr, XorShift32(7))
    if before_w is not None:
        np.testing.assert_array_equal(got_w, before_w)
        np.testing.assert_array_equal(slot.weights, before_w)
    if before_b is not None:
        np.testing.assert_array_equal(got_b, before_b)
        np.testing.assert_array_equal(slot.bias, before_b)


# Trained prefixes strictly inside the channels (and one with every channel), with dx wanted.
PREFIX_STEPS = [s for s in STEPS if s.dx and s.n_train != 0]


@pytest.mark.parametrize("step", PREFIX_STEPS, ids=[_step_id(s) for s in PREFIX_STEPS])
def test_input_grad_reads_trained_prefix_from_sram_copy(step: Step) -> None:
    """After a few steps the SRAM copy differs from flash: the input gradient must take the
    trained channels [0, n_train) from the copy and the rest from flash, as the reference does."""
    kind = step.case.kind
    p, x, dy, _ = prepared(step)
    slot = make_slot(step, p)
    rng = np.random.default_rng(55 + step.case.seed)
    slot = dataclasses.replace(slot, weights=rng.integers(-127, 128, slot.weights.shape,
                                                          dtype=np.int8))
    bdef = BACKWARD[OPCODES[kind]]
    (want,) = bdef.reference(p, [x], dy, [True], dataclasses.replace(
        slot, weights=slot.weights.copy()), F32(0.0), XorShift32(3))
    (flash_only,) = bdef.reference(p, [x], dy, [True], None, F32(0.0), XorShift32(3))
    assert not np.array_equal(want.data, flash_only.data), "copy must matter to the gradient"
    got = run_train_step(OPCODES[kind], p, [x], dy, [x.size], slot, 0.0, 3).dxs[0]
    assert got is not None
    np.testing.assert_array_equal(got.data, want.data.ravel())
    assert np.float32(got.scale).tobytes() == np.float32(want.scale).tobytes()


# CONV_2D steps whose dy is read as a view (a spatial MEAN's broadcast, mask on the fly).
BROADCAST_STEPS = [STEPS[0], STEPS[1], STEPS[5], STEPS[6], STEPS[8], STEPS[23]]


@pytest.mark.parametrize("masked", [True, False], ids=["mask", "no-mask"])
@pytest.mark.parametrize("step", BROADCAST_STEPS, ids=[_step_id(s) for s in BROADCAST_STEPS])
def test_broadcast_dy_view_equals_the_stored_broadcast(step: Step, masked: bool) -> None:
    """The kernels reading one C-vector at every output pixel under the mask bits equal the
    numpy step on the explicit broadcast with the mask applied (values, scale / count)."""
    p, x, _, _ = prepared(step)
    out_shape = tuple(p.output_shape)
    channels, count = out_shape[-1], int(np.prod(out_shape[:-1]))
    rng = np.random.default_rng(77 + step.case.seed)
    source = rng.integers(-GRAD_MAX, GRAD_MAX + 1, size=channels)
    source[0] = GRAD_MAX
    source = QGrad(source.astype(np.int16), F32(rng.uniform(1e-4, 1e-2)))
    keep = rng.random(count * channels) > 0.3 if masked else np.ones(count * channels, bool)
    bits = np.packbits(keep, bitorder="little") if masked else None
    full = np.broadcast_to(source.data, out_shape).ravel()
    dy = QGrad(np.where(keep, full, 0).astype(np.int16).reshape(out_shape),
               F32(source.scale) / F32(count))
    lr = pick_lr(step, p, x, dy)
    slot = make_slot(step, p)
    got = run_train_step("CONV_2D", p, [x], BroadcastDy(source, count, bits),
                         [x.size if step.dx else None], slot, float(lr), 4321)
    rng_ref = XorShift32(4321)
    saved = [x if BACKWARD["CONV_2D"].saves_input(p, slot)[0] else None]
    (dx,) = BACKWARD["CONV_2D"].reference(p, saved, dy, [step.dx], slot, lr, rng_ref)
    if step.dx:
        np.testing.assert_array_equal(got.dxs[0].data, dx.data.ravel())
        assert np.float32(got.dxs[0].scale).tobytes() == np.float32(dx.scale).tobytes()
        assert dx.scale > 0
    if slot.weights is not None:
        np.testing.assert_array_equal(np.asarray(got.weights).ravel(), slot.weights.ravel())
    if slot.bias is not None:
        np.testing.assert_array_equal(got.bias, slot.bias)
    assert got.prng == rng_ref.state
