"""A seeded fuzz campaign on three shipped models (issue 6, item 13): every mutant either
compiles to C++ or is refused with one short clean ModelError line, never another exception,
quickly. A handful of the accepted ones are then built for the host with ASan+UBSan and run:
no sanitizer report, outputs equal to the numpy reference and, where TFLite runs the mutant,
to TFLite Micro's interpreter."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import model_mutation as mm
from firmware_support import tflm_reference
from fuzz_models import Mutant, mutants
from mcutrain.compile.codegen import generate_model_source
from mcutrain.compile.compiler import compile_model
from mcutrain.compile.reference import run_reference
from mcutrain.frontend.graph import ModelError
from mcutrain.frontend.tflite_reader import read_tflite
from mcutrain.host.device import build_host_firmware, open_device

THIRD_PARTY = Path(__file__).resolve().parents[1] / "models" / "third_party"
MODELS = {name: (THIRD_PARTY / f"{name}.tflite").read_bytes()
          for name in ("tflm_hello_world_int8", "tflm_micro_speech_int8",
                       "arduino_magic_wand_int8")}
# Float edges (QUANTIZE/DEQUANTIZE), ADD, PAD and MEAN, which the three above lack.
MODELS["residual_dw_f32io"] = (THIRD_PARTY.parent / "test"
                               / "residual_dw_f32io.tflite").read_bytes()
COUNT = 2400
SECONDS_PER_MUTANT = 3


class MutantTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise MutantTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@cache
def campaign() -> tuple[dict[str, str], list[tuple[Mutant, str]], float]:
    """(problems by mutant label, accepted mutants with their C++, seconds taken)."""
    problems: dict[str, str] = {}
    accepted: list[tuple[Mutant, str]] = []
    start = time.monotonic()
    for m in mutants(MODELS, COUNT, seed=2026):
        try:
            with time_limit(SECONDS_PER_MUTANT):
                source, _ = generate_model_source(compile_model(m.data))
            accepted.append((m, source))
        except ModelError as exc:
            message = str(exc)
            if not (0 < len(message) <= 300 and message.isprintable()):
                problems[m.label()] = f"unclean message {message[:80]!r}"
        except MutantTimeout:
            problems[m.label()] = f"took over {SECONDS_PER_MUTANT} s"
        except Exception as exc:  # noqa: BLE001 - any other exception is the defect searched for
            problems[m.label()] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return problems, accepted, time.monotonic() - start


def test_mutants_compile_or_are_refused_in_one_clean_line() -> None:
    problems, accepted, seconds = campaign()
    assert not problems, f"{len(problems)} mutants failed badly, e.g. {list(problems.items())[:5]}"
    assert 0.1 * COUNT < len(accepted) < 0.9 * COUNT, "the mutants are not exercising the reader"
    assert seconds < 45, f"{COUNT} mutants took {seconds:.0f} s"


def saturating_fc_mutant() -> Mutant:
    """hello_world's last FULLY_CONNECTED with a 2^22 requantization multiplier whose bias scale
    still equals input x weight scale exactly (so TFLite accepts it): acc * scale leaves int32
    for many inputs, and the output zero point 5 is added on top."""
    data = MODELS["tflm_hello_world_int8"]
    for tensor, scale in ((8, 2.0**-6), (2, 2.0**-6), (1, 2.0**-12), (9, 2.0**-34)):
        data = mm.set_scale(data, tensor, scale)
    return Mutant("tflm_hello_world_int8", "saturating FC", 0, data)


def bias_at(data: bytes, tensor: int, value: int) -> bytes:
    """Every entry of an int32 bias buffer set to `value` (an int32 limit): the accumulator
    wraps, in TFLite as in the reference."""
    model = mm.model(data)
    buffer = model.Buffers(model.Subgraphs(0).Tensors(tensor).Buffer())
    start = mm.vector_pos(buffer, 4)
    out = bytearray(data)
    for i in range(buffer.DataLength() // 4):
        mm.put(out, start + 4 * i, "i", value)
    return bytes(out)


# The most taps whose |w| 128 times |x - zero point| 255 still fit int32: 65793 * 32640 =
# 2147483520. The compiler refuses any accumulator that could go further (the kernels add in
# plain signed int32 there).
LIMIT_TAPS = (2**31 - 1) // (128 * 255)


@cache
def wide_layer(kind: str) -> bytes:
    """TFLite's full-int8 conversion of one 2-channel layer whose channels sum LIMIT_TAPS + 1
    (fc) or LIMIT_TAPS (conv: 1x1 over that many channels, dw: a 1-row kernel that wide)
    products, with the input zero point then set to 127: an input of -128 is 255 steps off."""
    import tensorflow as tf

    from tflite_convert import convert_full_int8

    taps = LIMIT_TAPS + 1 if kind == "fc" else LIMIT_TAPS
    shape, layer = {"fc": ((taps,), tf.keras.layers.Dense(2)),
                    "conv": ((1, 1, taps), tf.keras.layers.Conv2D(2, 1)),
                    "dw": ((1, taps, 2), tf.keras.layers.DepthwiseConv2D((1, taps)))}[kind]
    tf.keras.utils.set_random_seed(3)
    inputs = tf.keras.Input(shape, batch_size=1)
    model = tf.keras.Model(inputs, layer(inputs))

    def calibration():
        rng = np.random.default_rng(0)
        for _ in range(4):
            yield [rng.uniform(-1, 1, size=(1, *shape)).astype(np.float32)]

    data = convert_full_int8(tf.lite.TFLiteConverter.from_keras_model(model), calibration)
    graph = read_tflite(data)
    return mm.set_zero_point(data, graph.operators[0].inputs[0], 127)


def at_accumulator_limit(kind: str, last_weight: int = -128) -> bytes:
    """wide_layer with channel 0's weights all -128 but the last, `last_weight`. Its
    accumulator then reaches at most 65793 * 128 * 255 = 2147483520 on an all -128 input (the
    most accepted), except for fc with last_weight -128, which could pass int32 by 32640."""
    data = wide_layer(kind)
    weights = read_tflite(data).operators[0].inputs[1]
    model = mm.model(data)
    buffer = model.Buffers(model.Subgraphs(0).Tensors(weights).Buffer())
    taps = LIMIT_TAPS + 1 if kind == "fc" else LIMIT_TAPS
    channel0 = np.full(taps, -128, np.int8)
    channel0[-1] = last_weight
    if kind == "dw":  # [1, 1, taps, 2]: channel 0 is every other byte
        positions = mm.vector_pos(buffer, 4) + 2 * np.arange(taps)
    else:  # OHWI / [units, depth]: channel 0's taps come first
        positions = mm.vector_pos(buffer, 4) + np.arange(taps)
    out = np.frombuffer(data, np.int8).copy()
    out[positions] = channel0
    return out.tobytes()


CRAFTED = {
    "saturating_fc": saturating_fc_mutant,
    **{f"{kind}_accumulator_at_int32_limit": (
        lambda kind=kind: Mutant(f"wide {kind}", "accumulator limit", 0,
                                 at_accumulator_limit(kind, 0 if kind == "fc" else -128)))
       for kind in ("fc", "conv", "dw")},
    "fc_bias_int32_max": lambda: Mutant("tflm_hello_world_int8", "bias max", 0,
                                        bias_at(MODELS["tflm_hello_world_int8"], 5, 2**31 - 1)),
    "fc_bias_int32_min": lambda: Mutant("tflm_hello_world_int8", "bias min", 0,
                                        bias_at(MODELS["tflm_hello_world_int8"], 5, -(2**31))),
    "conv_bias_int32_max": lambda: Mutant("arduino_magic_wand_int8", "bias max", 0,
                                          bias_at(MODELS["arduino_magic_wand_int8"], 3,
                                                  2**31 - 1)),
    "depthwise_bias_int32_max": lambda: Mutant("tflm_micro_speech_int8", "bias max", 0,
                                               bias_at(MODELS["tflm_micro_speech_int8"], 0,
                                                       2**31 - 1)),
}
FUZZED = 4


def distinct_accepted(limit: int) -> list[Mutant]:
    """Accepted mutants whose generated code differs from the originals' and from each other,
    round-robin over the models."""
    _, accepted, _ = campaign()
    seen = {generate_model_source(compile_model(data))[0] for data in MODELS.values()}
    chosen: dict[str, list[Mutant]] = {name: [] for name in MODELS}
    for m, source in accepted:
        if source not in seen and m.kind != "truncate":
            seen.add(source)
            chosen[m.source].append(m)
    ordered = [m for group in zip(*chosen.values(), strict=False) for m in group]
    return ordered[:limit]


def tflm_outputs(data: bytes, xs: list[np.ndarray]) -> list[np.ndarray] | None:
    """TFLite Micro's outputs, or None when TFLite refuses the mutant. TFLite Micro does not
    verify the flatbuffer, so a mutant reaches it only once LiteRT's verifier and Prepare have
    accepted it."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        Interpreter(model_content=data,
                    experimental_op_resolver_type=OpResolverType.BUILTIN_REF).allocate_tensors()
        return tflm_reference(data, xs)
    except (RuntimeError, ValueError):
        return None


@pytest.mark.parametrize("which", [*CRAFTED, *(f"fuzzed{i}" for i in range(FUZZED))])
def test_accepted_mutant_runs_clean_under_sanitizers(which: str, tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.fail("host g++ is needed for the sanitizer build: apt-get install g++")
    if which in CRAFTED:
        m = CRAFTED[which]()
    else:
        m = distinct_accepted(FUZZED)[int(which.removeprefix("fuzzed"))]
    compiled = compile_model(m.data)
    source, _ = generate_model_source(compiled)
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "model.cc").write_text(source)
    firmware = build_host_firmware(tmp_path / "gen", tmp_path / "fw" / "mutant",
                                   werror=True).path
    shape = compiled.graph.tensors[compiled.input].shape
    rng = np.random.default_rng(len(which))
    xs = [np.full(shape, -128, np.int8), np.full(shape, 127, np.int8),
          *(rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(6))]
    if int(np.prod(shape)) == 1:
        xs = [np.full(shape, v, np.int8) for v in range(-128, 128)]
    with open_device(f"host:{firmware}", timeout=10.0) as device:
        got = [device.infer(x)[0] for x in xs]  # a sanitizer report ends the process
    expected = [run_reference(compiled, x) for x in xs]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g.ravel(), e.ravel(), err_msg=m.label())
    tflm = tflm_outputs(m.data, xs)
    if which in CRAFTED:
        assert tflm is not None, f"TFLite must run the {which} mutant"
    if which == "saturating_fc":
        assert {-128, 127} <= set(np.concatenate([g.ravel() for g in got]).tolist())
    if tflm is not None:
        for g, t in zip(got, tflm, strict=True):
            np.testing.assert_array_equal(g.ravel(), t.ravel(), err_msg=m.label())


def test_accumulator_that_could_leave_int32_is_refused_in_one_line() -> None:
    """One weight more at -128 than the largest accepted accumulator (run under the sanitizers
    above as fc_accumulator_at_int32_limit): the kernels could overflow, so it is refused."""
    with pytest.raises(ModelError) as err:
        generate_model_source(compile_model(at_accumulator_limit("fc")))
    message = str(err.value)
    assert 0 < len(message) <= 300 and message.isprintable(), message
    assert "operator 0 (FULLY_CONNECTED)" in message and f"{LIMIT_TAPS + 1} products" in message


def test_trained_weights_count_as_any_int8_in_the_accumulator_bound() -> None:
    """wide_layer("fc")'s own weights keep its accumulator in int32, but trained weights may become
    any int8 (-128 on every tap): training them is refused, training the bias is not."""
    from mcutrain.train.scheme import parse_scheme
    from mcutrain.train.training_graph import build_training

    compiled = compile_model(wide_layer("fc"))
    build_training(compiled, parse_scheme({"preset": "sparse", "bias_layers": 1, "loss": "mse"}))
    scheme = parse_scheme({"preset": "sparse", "weights": [{"layer": -1, "ratio": 0.5}],
                           "loss": "mse"})
    with pytest.raises(ModelError) as err:
        build_training(compiled, scheme)
    message = str(err.value)
    assert 0 < len(message) <= 300 and message.isprintable(), message
    assert "operator 0 (FULLY_CONNECTED)" in message and "freeze its weights" in message
