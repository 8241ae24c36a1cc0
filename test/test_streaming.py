"""Row-streamed execution (compile/streaming.py): its geometry against the convolution's own tap
formula, its schedules replayed, band by band in numpy against whole-tensor execution, and the
generated C++ of streamed models against TFLite Micro (built for the host with the sanitizers).
The shipped models' streamed firmware runs on the emulated board in test_firmware_bitexact.py."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from firmware_support import tflm_reference
from mcutrain.compile.codegen import generate_model_source
from mcutrain.compile.compiler import CompiledModel, compile_model
from mcutrain.compile.reference import run_reference
from mcutrain.compile.streaming import Stream, candidates, check_schedule, geometries, refine
from mcutrain.host.device import build_host_firmware, open_device
from mcutrain.ops.base import RowGeometry

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "models").rglob("*.tflite"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT / "models").with_suffix(""))


def test_row_geometry_is_the_convolutions_taps() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        kernel, stride, dilation = rng.randint(1, 7), rng.randint(1, 3), rng.randint(1, 3)
        in_h, pad = rng.randint(1, 40), rng.randint(0, 4)
        out_h = max(1, (in_h + 2 * pad - (kernel - 1) * dilation - 1) // stride + 1)
        g = RowGeometry(in_h, out_h, kernel, stride, dilation, pad)

        def taps(y: int, g: RowGeometry = g) -> list[int]:
            rows = (y * g.stride - g.pad + k * g.dilation for k in range(g.kernel))
            return [r for r in rows if 0 <= r < g.in_h]

        for y in range(out_h + 1):
            read = [r for yy in range(y) for r in taps(yy)]
            assert g.end_row(y) == (max(read) + 1 if read else 0)
            later = [r for yy in range(y, out_h) for r in taps(yy)]
            if later:
                assert g.first_row(y) <= min(later)
                # nothing below first_row is read again, and first_row is tight for y's own taps
                assert g.first_row(y) == min(in_h, max(0, y * stride - pad))


@pytest.fixture(scope="module")
def compiled() -> dict[str, CompiledModel]:
    return {rel(p): compile_model(p) for p in SHIPPED}


def test_streams_only_ever_shrink_the_arena(compiled: dict[str, CompiledModel]) -> None:
    streamed = 0
    for name, model in compiled.items():
        whole = compile_model(ROOT / "models" / f"{name}.tflite", streaming=False)
        assert not whole.streams
        assert model.arena_bytes <= whole.arena_bytes, name
        if model.streams:
            streamed += 1
            assert model.arena_bytes < whole.arena_bytes, name
    assert streamed >= 3  # the premise: several shipped models stream


def test_mobilenetv2_inference_arena_is_far_below_layer_by_layer(
        compiled: dict[str, CompiledModel]) -> None:
    model = compiled["mobilenetv2_w035_128_int8"]
    whole = compile_model(ROOT / "models" / "mobilenetv2_w035_128_int8.tflite", streaming=False)
    # The 64x64x48 expansion (192 KB) never exists whole; the 48 KB input still does.
    assert whole.arena_bytes > 192 * 1024 and model.arena_bytes < 100 * 1024
    assert model.streams and model.streams[0].first == 0


def replay_in_numpy(model: CompiledModel, stream: Stream, x: np.ndarray,
                    seed: int = 0) -> dict[int, np.ndarray]:
    """Run `stream` band by band on windows of the planned capacities, dropping the oldest rows
    exactly as RowWindowAppend does; each band is computed by the operator's whole-tensor numpy
    reference on an input where every row outside the window is random garbage, so a band that
    reads a row its window does not hold gives a different result. Returns the sink and every
    tensor of the stream as assembled from its bands."""
    rng = np.random.default_rng(seed)
    g, ops = model.graph, model.ops
    values = {model.input: x}
    for step in range(stream.first):
        p = ops[step]
        values[p.output] = p.opdef.reference(p.params, [values[t] for t in p.inputs])
    windows: dict[int, tuple[int, np.ndarray]] = {}  # tensor -> (first row, rows held)
    for step in stream.steps:
        for tid in ops[step].inputs:
            if tid in values and tid not in windows:
                windows[tid] = (0, values[tid])
    assembled: dict[int, list[np.ndarray]] = {}
    done = [0] * len(stream.steps)
    for target in stream.rows:
        for k, step in enumerate(stream.steps):
            y0, y1 = done[k], target[k]
            if y1 <= y0:
                continue
            p = ops[step]
            inputs = []
            for tid in p.inputs:
                first, held = windows[tid]
                shape = g.tensors[tid].shape
                full = rng.integers(-128, 128, size=shape, dtype=np.int8)
                full[:, first:first + held.shape[1]] = held
                inputs.append(full)
            band = p.opdef.reference(p.params, inputs)[:, y0:y1]
            assembled.setdefault(p.output, []).append(band)
            first, held = windows.get(p.output, (0, band[:, :0]))
            held = np.concatenate([held, band], axis=1)
            capacity = stream.windows.get(p.output, g.tensors[p.output].shape[1])
            over = max(0, held.shape[1] - capacity)
            windows[p.output] = (first + over, held[:, over:])
        done = list(target)
    return {t: np.concatenate(bands, axis=1) for t, bands in assembled.items()}


def some_candidates(model: CompiledModel, count: int, seed: int) -> list[Stream]:
    pool = candidates(model.graph, model.ops)
    picked = random.Random(seed).sample(pool, min(count, len(pool)))
    return [*model.streams, *picked, *(refine(model.graph, model.ops, s) for s in picked)]


@pytest.mark.parametrize("name", ["mobilenetv2_w035_128_int8", "test/residual_dw_f32io",
                                  "third_party/arduino_magic_wand_int8"])
def test_bands_in_numpy_equal_whole_tensors(name: str, compiled: dict[str, CompiledModel]) -> None:
    model = compiled[name]
    shape = model.graph.tensors[model.input].shape
    x = np.random.default_rng(3).integers(-128, 128, size=shape, dtype=np.int8)
    whole = {model.input: x}
    for p in model.ops:
        whole[p.output] = p.opdef.reference(p.params, [whole[t] for t in p.inputs])
    for stream in some_candidates(model, 4, seed=len(name)):
        check_schedule(model.graph, model.ops, stream)
        got = replay_in_numpy(model, stream, x)
        sink = model.ops[stream.last].output
        np.testing.assert_array_equal(got[sink], whole[sink], err_msg=f"{stream.first}..")
        for tid, value in got.items():
            # a tensor may stop short of its last rows when no reader needs them
            np.testing.assert_array_equal(value, whole[tid][:, :value.shape[1]])


def test_refined_schedules_need_no_more_rows(compiled: dict[str, CompiledModel]) -> None:
    model = compiled["mobilenetv2_w035_128_int8"]
    for stream in random.Random(1).sample(candidates(model.graph, model.ops), 40):
        finer = refine(model.graph, model.ops, stream)
        check_schedule(model.graph, model.ops, finer)
        assert finer.rows[-1] == stream.rows[-1]
        assert all(finer.windows[t] <= stream.windows[t] for t in stream.windows)


def test_a_window_too_small_is_caught_by_the_replay(compiled: dict[str, CompiledModel]) -> None:
    model = compiled["test/residual_dw_f32io"]
    stream = model.streams[0]
    tid, rows = max(stream.windows.items(), key=lambda kv: kv[1])
    assert rows > 1
    small = Stream(stream.first, stream.last, stream.rows, {**stream.windows, tid: rows - 1})
    with pytest.raises(AssertionError, match="window holds"):
        check_schedule(model.graph, model.ops, small)


def chain_model(seed: int) -> bytes:
    """A random int8 chain of convolutions, depthwise convolutions and residual adds with odd
    sizes, strides and both paddings."""
    import tensorflow as tf

    from tflite_convert import convert_keras_int8

    rng = random.Random(seed)
    h, w = rng.randint(13, 24), rng.randint(5, 11)
    x = inp = tf.keras.Input((h, w, rng.choice([1, 3, 4])))
    x = tf.keras.layers.Conv2D(rng.choice([4, 8]), rng.choice([3, 5]), padding="same",
                               activation="relu")(x)
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(["dw", "conv", "res"])
        if kind == "dw":
            # (no dilation: the converter turns dilated convolutions into SPACE_TO_BATCH_ND)
            stride = rng.choice([1, 2]) if x.shape[1] > 6 else 1
            x = tf.keras.layers.DepthwiseConv2D(rng.choice([3, 5]) if stride == 1 else 3,
                                                strides=stride,
                                                padding=rng.choice(["same", "valid"]),
                                                activation="relu")(x)
        elif kind == "conv":
            x = tf.keras.layers.Conv2D(rng.choice([4, 6, 8]), rng.choice([1, 3]),
                                       strides=rng.choice([1, 2]) if x.shape[1] > 6 else 1,
                                       padding=rng.choice(["same", "valid"]))(x)
        else:
            y = tf.keras.layers.Conv2D(int(x.shape[-1]) * 3, 1, activation="relu")(x)
            y = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(y)
            y = tf.keras.layers.Conv2D(int(x.shape[-1]), 1)(y)
            x = tf.keras.layers.Add()([x, y])
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(3)(x))
    return convert_keras_int8(model, seed=seed)


@pytest.mark.parametrize("seed", range(6))
def test_streamed_chain_on_the_host_equals_tflm(seed: int, tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.fail("host g++ is needed for the sanitizer build: apt-get install g++")

    data = chain_model(seed)
    model = compile_model(data)
    assert model.streams, "the premise: this chain streams"
    assert all(g is not None for s in model.streams for g in geometries(model.ops)[s.first:
                                                                             s.last + 1])
    source, _ = generate_model_source(model)
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "model.cc").write_text(source)
    firmware = build_host_firmware(tmp_path / "gen", tmp_path / "fw" / "chain", werror=True).path
    shape = model.graph.tensors[model.input].shape
    rng = np.random.default_rng(seed)
    xs = [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(3)]
    with open_device(f"host:{firmware}", timeout=20.0) as device:
        got = [device.infer(x)[0] for x in xs]
    expected = tflm_reference(data, xs)
    for g, e, x in zip(got, expected, xs, strict=True):
        np.testing.assert_array_equal(g.ravel(), e.ravel())
        np.testing.assert_array_equal(g.ravel(), run_reference(model, x).ravel())


def test_report_json_records_the_streams_and_the_peak(tmp_path: Path) -> None:
    import json

    from mcutrain.build import generate_for_build
    from mcutrain.compile.report import BoardLimits, arena_summary

    result = generate_for_build(ROOT / "models" / "mobilenetv2_w035_128_int8.tflite", tmp_path,
                                BoardLimits("f746", 320 * 1024, 1024 * 1024))
    report = json.loads(result.report_path.read_text())
    model = compile_model(ROOT / "models" / "mobilenetv2_w035_128_int8.tflite")
    assert report["arena_layer_by_layer_bytes"] == 245808 > report["arena_bytes"]
    (stream,) = report["streams"]
    assert (stream["first_step"], stream["last_step"]) == (0, 9)
    # Every row is computed once: the bands execute exactly the chain's layer-by-layer MACs.
    assert stream["executed_macs"] == stream["macs"] == sum(p.macs for p in model.ops[:10])
    for w in stream["windows"]:
        shape = model.graph.tensors[w["tensor"]].shape
        assert w["of_rows"] == shape[1] and w["bytes"] == w["rows"] * shape[2] * shape[3]
        assert w["bytes"] < w["whole_bytes"]
    # The peak: the most bytes live at any step of the plan, counted here from the placements.
    placed = model.planner.placements().values()
    steps = {s for p in placed for s in range(p.first, p.last + 1)}
    most = max(sum(p.size for p in placed if p.first <= s <= p.last) for s in steps)
    peak = report["peak"]
    assert peak["live_bytes"] == most
    assert [b["bytes"] for b in peak["largest"]] == sorted(
        (b["bytes"] for b in peak["largest"]), reverse=True)
    assert peak["largest"][0]["bytes"] == 49152  # the 128x128x3 input, whole
    line = arena_summary(report)
    assert "steps 0..9 row-streamed (layer by layer: 245808 B)" in line and "\n" not in line
