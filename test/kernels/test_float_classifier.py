"""The fp32 classifier (docs/training.md, "fp32 classifier"): numpy definition
(mcutrain.train.float_classifier) vs the C++ kernel (firmware/kernels/float_classifier.h, run
through the training codegen's emit_* calls in test/kernels/emitted.py), bit for bit over several
chained training steps, plus an independent float64 check of the forward pass and the gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from emitted import Emission

from mcutrain.compile.compiler import compile_model
from mcutrain.frontend.graph import ModelError
from mcutrain.ops.train_math import F32, GRAD_MAX
from mcutrain.train import float_classifier as fcl
from mcutrain.train.scheme import parse_scheme
from mcutrain.train.training_graph import build_training


def _classifier(depth: int, units: int, seed: int, bias: bool = True,
                logits: bool = False) -> fcl.FloatClassifier:
    """logits: the model ends in the FC (no SOFTMAX); its int8 output is the logits."""
    rng = np.random.default_rng(seed)
    # Logits of a few units: |x_real| <= 128 * sx ~ 4, |W| <= 127 * sW ~ 4 / sqrt(depth).
    sx = F32(rng.uniform(0.01, 0.05))
    w_scale = (rng.uniform(0.5, 2.0, units) / (32 * math.sqrt(depth))).astype(np.float32)
    return fcl.FloatClassifier(
        fc_step=0, softmax_step=None if logits else 1, operator=0, input_tensor=0,
        input_shape=(1, depth),
        depth=depth, units=units, input_scale=sx,
        input_zero_point=int(rng.integers(-128, 128)),
        weights_q=rng.integers(-127, 128, (units, depth), dtype=np.int8),
        bias_q=rng.integers(-3000, 3000, units).astype(np.int32) if bias else None,
        w_scale=w_scale, b_scale=(sx * w_scale).astype(np.float32),
        output_inv_scale=F32(1.0) / F32(0.04) if logits else F32(0.0),
        output_zero_point=int(rng.integers(-20, 20)) if logits else 0)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def _kernel_exp(xs: np.ndarray) -> np.ndarray:
    """mt::ref::exp_f32 of every value (no emitter calls it alone: the loop is the test's)."""
    e = Emission(fcl.HEADER)
    x, y = e.array(xs, "<f4"), e.space(4 * xs.size)
    body = (f"for (int32_t i = 0; i < {xs.size}; ++i) {y.as_ptr('float')}[i] = "
            f"mt::ref::exp_f32({x.as_ptr('const float')}[i]);")
    return e.run(body).array(y, "<f4")


def test_exp_matches_kernel_and_math() -> None:
    xs = np.concatenate([
        np.linspace(-100, 0, 20001, dtype=np.float32),
        -np.random.default_rng(0).exponential(3.0, 20000).astype(np.float32),
        np.array([0.0, -0.0, -80.0, np.nextafter(F32(-80), F32(-81)), -1e-30, -np.inf, np.nan],
                 np.float32)])
    want = fcl.exp_f32(xs)
    got = _kernel_exp(xs)
    assert np.array_equal(_bits(got), _bits(want))
    ok = np.isfinite(xs) & (xs >= -80)
    exact = np.exp(xs[ok].astype(np.float64))
    assert np.max(np.abs(want[ok] - exact) / exact) < 4e-7
    assert np.all(want[~ok] == 0)


CASES = [(32, 3, 0, True, False), (7, 10, 1, True, False), (64, 2, 2, False, False),
         (1, 5, 3, True, False), (300, 12, 4, True, False), (32, 3, 5, True, True),
         (300, 12, 6, False, True)]


def _emitted_init(c: fcl.FloatClassifier) -> tuple[np.ndarray, np.ndarray]:
    """(W_f, b_f) as the generated reset code computes them."""
    e = Emission(fcl.HEADER)
    w, b = e.space(c.weight_bytes), e.space(c.bias_bytes)
    ran = e.run(fcl.emit_init(c, e.pool, w.as_ptr("float"), b.as_ptr("float")))
    return ran.array(w, "<f4").reshape(c.units, c.depth), ran.array(b, "<f4")


@dataclass
class KernelStep:
    """What one generated training step of the classifier left: forward work, int8 output,
    loss and prediction, input gradient and its scale, and the updated float weights."""

    work: np.ndarray
    q: np.ndarray
    loss: float
    pred: int
    dx: np.ndarray | None
    scale: float
    w: np.ndarray
    b: np.ndarray


def _emitted_step(c: fcl.FloatClassifier, w: np.ndarray, b: np.ndarray, x: np.ndarray,
                  label: int, lr: np.float32, need_dx: bool) -> KernelStep:
    """Forward, loss and backward as the training codegen emits them, on copies of (w, b)."""
    e = Emission(fcl.HEADER)
    wb, bb, xb = e.array(w, "<f4"), e.array(b, "<f4"), e.array(x, np.int8)
    work, q = e.space(4 * c.work_floats), e.space(c.units)
    label_b, lr_b = e.array(np.int32(label), "<i4"), e.array(lr, "<f4")
    loss, pred = e.array(np.float32(-1), "<f4"), e.array(np.uint16(0xFFFF), "<u2")
    scale = e.array(np.float32(-1), "<f4")  # the kernel must write 0 without dx
    scratch, dx = e.space(4 * c.depth), e.space(2 * c.depth)
    wp, bp = wb.as_ptr("float"), bb.as_ptr("float")
    body = "\n".join([
        fcl.emit_forward(c, wp, bp, xb.ptr, work.ptr, q.ptr),
        fcl.emit_loss(c, work.ptr, label_b.lvalue("int32_t"), loss.lvalue("float"),
                      pred.lvalue("uint16_t")),
        fcl.emit_backward(c, wp, bp, work.ptr, label_b.lvalue("int32_t"), lr_b.lvalue("float"),
                          scratch.ptr if need_dx else None,
                          dx.as_ptr("int16_t") if need_dx else None, scale.lvalue("float"))])
    ran = e.run(body)
    return KernelStep(ran.array(work, "<f4"), ran.array(q, np.int8),
                      float(ran.scalar(loss, "<f4")), int(ran.scalar(pred, "<u2")),
                      ran.array(dx, "<i2") if need_dx else None, ran.scalar(scale, "<f4"),
                      ran.array(wb, "<f4").reshape(w.shape), ran.array(bb, "<f4"))


@pytest.mark.parametrize("depth, units, seed, bias, logits", CASES)
def test_training_steps_match_kernel(depth: int, units: int, seed: int, bias: bool,
                                     logits: bool) -> None:
    c = _classifier(depth, units, seed, bias, logits)
    rng = np.random.default_rng(100 + seed)
    w_ref, b_ref = c.initial()
    w_fw, b_fw = _emitted_init(c)
    assert np.array_equal(_bits(w_fw), _bits(w_ref)) and np.array_equal(_bits(b_fw), _bits(b_ref))
    lr = F32(0.37)  # large, so the logits move a lot over the steps
    for step in range(12):
        x = rng.integers(-128, 128, depth, dtype=np.int8)
        label = int(rng.integers(0, units))
        need_dx = step % 3 != 2
        ref_work, ref_q = fcl.forward(c, w_ref, b_ref, x)
        got = _emitted_step(c, w_fw, b_fw, x, label, lr, need_dx)
        w_fw, b_fw = got.w, got.b
        packed = np.concatenate([ref_work.x_real, ref_work.logits, ref_work.prob])
        assert np.array_equal(_bits(got.work), _bits(packed)), f"step {step}: forward"
        assert np.array_equal(got.q, ref_q), f"step {step}: int8 output"
        ref_loss, ref_pred = fcl.loss(ref_work, label)
        assert got.pred == ref_pred
        assert got.loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
        dx_ref = fcl.backward(c, w_ref, b_ref, ref_work, label, lr, need_dx)
        if need_dx:
            assert np.array_equal(got.dx, dx_ref.data.ravel()), f"step {step}: dx"
            assert _bits(np.float32(got.scale)) == _bits(dx_ref.scale)
        else:
            assert dx_ref is None and got.scale == 0.0
        assert np.array_equal(_bits(w_fw), _bits(w_ref)), f"step {step}: weights"
        assert np.array_equal(_bits(b_fw), _bits(b_ref)), f"step {step}: bias"


@pytest.mark.parametrize("depth, units, seed, bias, ends_in_logits", CASES)
def test_gradients_match_float64(depth: int, units: int, seed: int, bias: bool,
                                 ends_in_logits: bool) -> None:
    """Forward, input gradient and update against a float64 softmax cross-entropy."""
    c = _classifier(depth, units, seed, bias, ends_in_logits)
    rng = np.random.default_rng(200 + seed)
    w, b = c.initial()
    x = rng.integers(-128, 128, depth, dtype=np.int8)
    label = int(rng.integers(0, units))
    lr = F32(0.05)
    w64, b64 = w.astype(np.float64), b.astype(np.float64)
    x64 = (x.astype(np.float64) - c.input_zero_point) * float(c.input_scale)
    logits = w64 @ x64 + b64
    p = np.exp(logits - logits.max())
    p /= p.sum()
    work, q = fcl.forward(c, w, b, x)
    assert np.allclose(work.logits, logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())
    assert np.allclose(work.prob, p, rtol=1e-5, atol=1e-7)
    if ends_in_logits:  # the int8 output is the logits at the FC's output quantization
        want_q = np.clip(logits * float(c.output_inv_scale) + c.output_zero_point, -128, 127)
        assert np.all(np.abs(q.astype(np.int32) - want_q) <= 0.5 + 1e-4)
        assert np.any(q != -128) and np.any(q != 127)
    else:
        assert np.all(np.abs(q.astype(np.int32) + 128 - np.minimum(p * 256, 255)) <= 0.5 + 1e-4)
    loss, pred = fcl.loss(work, label)
    assert loss == pytest.approx(-math.log(p[label]), rel=1e-5, abs=1e-6)
    assert pred == int(np.argmax(logits))
    g = p.copy()
    g[label] -= 1.0
    dx_want = g @ w64
    dx = fcl.backward(c, w, b, work, label, lr, need_dx=True)
    real = dx.data.astype(np.float64).ravel() * float(dx.scale)
    tol = float(dx.scale) * 0.5 + 1e-5 * np.abs(dx_want).max()
    assert np.max(np.abs(real - dx_want)) <= tol
    assert np.max(np.abs(dx.data)) == GRAD_MAX
    step = float(lr) * np.abs(np.outer(g, x64)).max()
    assert np.allclose(w, w64 - float(lr) * np.outer(g, x64), rtol=0, atol=1e-5 * step + 1e-6)
    assert np.allclose(b, b64 - float(lr) * g, rtol=0, atol=1e-6 * (1 + np.abs(b64).max()))


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model, raw, message", [
    # Its final FULLY_CONNECTED is accepted as logits, but of one value: no classes.
    ("third_party/tflm_hello_world_int8", {"classifier": "fp32"}, "at least 2 classes"),
    ("har_cnn1d_int8", {"classifier": "fp32", "loss": "mse"}, "needs loss 'cross_entropy'"),
    ("har_cnn1d_int8", {"classifier": "fp16"}, "\"classifier\" must be one of"),
])
def test_refusals(model: str, raw: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        build_training(compile_model(ROOT / "models" / f"{model}.tflite"), parse_scheme(raw))


def test_program_layout() -> None:
    """The FC is left out of the int8 schedule whatever the scheme says about it, its float
    weights follow the int8 state, and with nothing else trained no gradient buffer exists."""
    har = compile_model(ROOT / "models" / "har_cnn1d_int8.tflite")
    program = build_training(har, parse_scheme(
        {"bias_layers": 3, "weights": [{"layer": -1, "ratio": 0.5}, {"layer": -2, "ratio": 0.5}],
         "classifier": "fp32"}))
    cls = program.classifier
    assert cls is not None and cls.need_dx and cls.fc_step not in program.trained
    assert [b.step for b in program.backward][0] < cls.fc_step
    assert cls.weight_offset % 4 == 0 and cls.bias_offset == cls.weight_offset + cls.weight_bytes
    assert program.state_bytes == cls.bias_offset + cls.bias_bytes
    assert program.loss_input == cls.input_tensor
    alone = build_training(har, parse_scheme({"classifier": "fp32"}))
    assert not alone.trained and not alone.backward and not alone.classifier.need_dx
    assert not any(p.name.startswith("g") for p in alone.planner.placements().values())
    w, b = alone.classifier.initial()
    assert alone.state_bytes == w.nbytes + b.nbytes


def test_program_layout_on_logits() -> None:
    """A model ending in FULLY_CONNECTED logits: the FC alone is the float step, its output is
    the model's (int8 logits for INFER), and the loss is the same softmax cross-entropy."""
    model = compile_model(ROOT / "models" / "test" / "wide_logits_int8.tflite")
    program = build_training(model, parse_scheme({"classifier": "fp32", "bias_layers": 2}))
    cls = program.classifier
    assert cls is not None and cls.softmax_step is None and cls.steps == [len(model.ops) - 1]
    assert cls.units == program.num_classes == 4
    assert cls.need_dx and program.loss_input == cls.input_tensor
    # The MEAN (step 2) is folded into the conv's step, which reads its broadcast as a view.
    assert [b.step for b in program.backward] == [1]
    assert program.backward[0].broadcast.step == 2
    out = model.graph.tensors[model.output]
    assert cls.output_inv_scale == F32(1.0) / F32(out.scale)
    assert cls.output_zero_point == out.zero_point
