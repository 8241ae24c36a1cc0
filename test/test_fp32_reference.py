"""The float32 TensorFlow reference (mcutrain.train.fp32_reference): the float model built from
our IR behaves like the int8 model it came from, and its training follows the scheme."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_support import tflm_reference
from mcutrain.compile.compiler import compile_model  # noqa: E402
from mcutrain.train.fp32_reference import (
    build_float_model,
    parametric_layers,
    quantize_input,
    train_fp32,
)
from mcutrain.train.scheme import parse_scheme, plan_layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "models" / "har_cnn1d_int8.tflite"
HAR_ADAPT = {"preset": "sparse", "bias_layers": 3,
             "weights": [{"layer": -1, "ratio": 1.0}, {"layer": -2, "ratio": 0.5}],
             "lr": 0.005, "rounding": "stochastic", "qas": True}


def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(ROOT / "data" / f"{name}.npz")
    return d["x"], d["y"]


def _int8_outputs(path: Path, q: np.ndarray) -> np.ndarray:
    """TFLite Micro's int8 outputs, one row per sample of q."""
    return np.array([y.ravel() for y in tflm_reference(path, list(q))])


def test_float_har_model_matches_int8_tflm() -> None:
    """Against the int8 model as TFLite Micro runs it (the firmware's reference)."""
    compiled = compile_model(HAR)
    x, _ = _load("har_test")
    q = _int8_outputs(HAR, quantize_input(compiled.graph, x))
    out_t = compiled.graph.tensors[compiled.output]
    deq = (q.astype(np.float32) - out_t.zero_point) * out_t.scale
    prob = build_float_model(compiled).predict(x).reshape(deq.shape)
    agree = np.mean(prob.argmax(1) == q.argmax(1))
    err = np.abs(prob - deq)
    assert agree >= 0.95, f"float and int8 predictions agree on {agree:.3f} of the windows"
    assert err.mean() < 0.02, f"mean |p_float - p_int8| = {err.mean():.4f}"
    assert np.mean(err.max(1) < 0.1) >= 0.95


@pytest.mark.parametrize("model", ["test/residual_dw_f32io.tflite",
                                   "test/concat_pool_pertensor_int8.tflite",
                                   "third_party/tflm_micro_speech_int8.tflite"])
def test_every_tensor_tracks_the_int8_reference(model: str) -> None:
    """Tensor by tensor against the numpy integer reference (bit-exact with TFLite Micro), on a
    random input: covers ADD, PAD, CONCATENATION, pooling, DEPTHWISE_CONV_2D with multiplier."""
    compiled = compile_model(ROOT / "models" / model)
    graph = compiled.graph
    tin = graph.tensors[compiled.input]
    q = np.random.default_rng(7).integers(-128, 128, size=tin.shape).astype(np.int8)
    ints = {compiled.input: q}
    for p in compiled.ops:
        ints[p.output] = np.asarray(p.opdef.reference(p.params, [ints[t] for t in p.inputs]),
                                    np.int8).reshape(graph.tensors[p.output].shape)
    x = (q.astype(np.float32) - tin.zero_point) * np.float32(tin.scale)
    floats = build_float_model(compiled).tensors(x)
    for p in compiled.ops:
        t = graph.tensors[p.output]
        real = (ints[p.output].astype(np.float32) - t.zero_point) * t.scale
        err = np.abs(floats[p.output].numpy() - real).max() / (255 * t.scale)
        assert err < 0.03, f"{p.op.opcode} output {t.name}: max error {err:.4f} of the range"


def test_zero_learning_rate_changes_nothing() -> None:
    x, y = _load("adapt_train")
    xt, yt = _load("adapt_test")
    order = [np.arange(60)]
    result = train_fp32(HAR, HAR_ADAPT, x, y, order, lr=0.0, eval_sets={"test": (xt, yt)})
    before, after = result["epochs"][0]["test"], result["epochs"][1]["test"]
    assert result["steps"] == 60
    assert after == before


def test_training_follows_the_scheme() -> None:
    """Partial ratio: only the first ceil(ratio * out_c) channels of the last conv move."""
    compiled = compile_model(HAR)
    x, y = _load("adapt_train")
    initial = build_float_model(compiled)
    result = train_fp32(HAR, HAR_ADAPT, x, y, [np.arange(100)])
    plans = plan_layers(parse_scheme(HAR_ADAPT), parametric_layers(compiled))
    assert {(t["step"], t["kind"]) for t in result["trainable"]} == {
        (pl.step, kind) for pl in plans
        for kind, on in (("weights", pl.n_train > 0), ("bias", pl.train_bias)) if on}
    conv = next(pl for pl in plans if pl.n_train and pl.n_train < 32)
    w0 = initial.params[(conv.step, "weights")].value.numpy()
    w1 = result["state"][conv.step]["weights"]
    assert np.array_equal(w0[conv.n_train:], w1[conv.n_train:])
    assert not np.allclose(w0[:conv.n_train], w1[:conv.n_train])
    b0 = initial.params[(conv.step, "bias")].value.numpy()
    assert not np.allclose(b0, result["state"][conv.step]["bias"])


@pytest.mark.parametrize("scheme", [
    {"preset": "sparse", "bias_layers": 1, "weights": [{"layer": -1}], "lr": 0.005},
    HAR_ADAPT,
], ids=["classifier", "har_adapt"])
def test_training_improves_adapt_test(scheme: dict) -> None:
    x, y = _load("adapt_train")
    xt, yt = _load("adapt_test")
    order = [np.random.default_rng(0).permutation(len(y))]
    result = train_fp32(HAR, scheme, x, y, order, eval_sets={"test": (xt, yt)})
    before, after = (e["test"]["accuracy"] for e in result["epochs"])
    assert after >= before + 0.1, f"adapt_test accuracy {before:.3f} -> {after:.3f}"
    assert result["seconds"] < 20


def test_logits_model_trains_on_its_output_as_logits() -> None:
    """A model without a final SOFTMAX: the float cross-entropy is taken on its output, and it
    agrees with the int8 training loss (grad_rules.logits_cross_entropy on the int8 output)."""
    from mcutrain.train.grad_rules import logits_cross_entropy

    path = ROOT / "models" / "test" / "wide_logits_int8.tflite"
    compiled = compile_model(path)
    graph = compiled.graph
    tin, tout = graph.tensors[compiled.input], graph.tensors[compiled.output]
    rng = np.random.default_rng(3)
    q = rng.integers(-128, 128, size=(40, *tin.shape[1:])).astype(np.int8)
    y = rng.integers(0, tout.shape[-1], size=40)
    x = (q.astype(np.float32) - tin.zero_point) * np.float32(tin.scale)
    int8_out = _int8_outputs(path, q)
    int8_loss = np.mean([logits_cross_entropy(o, tout.scale, tout.zero_point, int(label))[0]
                         for o, label in zip(int8_out, y, strict=True)])
    result = train_fp32(path, {"preset": "full", "lr": 0.05}, x, y, [np.arange(40)],
                        eval_sets={"train": (x, y)})
    before = result["epochs"][0]["train"]["loss"]
    assert abs(before - int8_loss) < 0.05 * int8_loss, (before, int8_loss)
    assert result["epochs"][1]["train"]["loss"] < before
