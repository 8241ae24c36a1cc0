"""Checks on the committed models and datasets: they load in TFLite's interpreter, have the
expected I/O types, and together cover every operator mcutrain supports (its operator registry).

Op names are read straight from the flatbuffers with the `tflite` schema package; TensorFlow is
not imported (too slow). Regenerate with scripts/make_datasets.py and scripts/make_models.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tflite
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from mcutrain.frontend.options import FRONTEND_OPERATORS
from mcutrain.ops import load_all
from mcutrain.ops.base import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
ALL_MODELS = sorted(MODELS.rglob("*.tflite"))
FLOAT_IO = {"test/residual_dw_f32io.tflite"}

# Every operator an op module registers, and those the frontend handles itself (DEQUANTIZE, at a
# float output): a new operator is covered here by registering, and needs a shipped model.
load_all()
SUPPORTED_OPS = set(REGISTRY) | set(FRONTEND_OPERATORS)
_OPTIONS = {v: k for k, v in vars(tflite.BuiltinOptions).items() if isinstance(v, int)}
_ACTS = {v: k for k, v in vars(tflite.ActivationFunctionType).items() if isinstance(v, int)}


@dataclass
class Flat:
    ops: Counter = field(default_factory=Counter)
    activations: set[str] = field(default_factory=set)
    weight_quant: set[str] = field(default_factory=set)


def read_flat(path: Path) -> Flat:
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph, flat = model.Subgraphs(0), Flat()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = tflite.opcode2name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
        flat.ops[name] += 1
        options_cls = getattr(tflite, _OPTIONS.get(op.BuiltinOptionsType(), "NONE"), None)
        if op.BuiltinOptions() is not None and hasattr(options_cls, "FusedActivationFunction"):
            options = options_cls()
            options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            flat.activations.add(_ACTS[options.FusedActivationFunction()])
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            scales = graph.Tensors(op.Inputs(1)).Quantization().ScaleLength()
            flat.weight_quant.add("per-channel" if scales > 1 else "per-tensor")
    return flat


def rel(path: Path) -> str:
    return path.relative_to(MODELS).as_posix()


def test_expected_files_present() -> None:
    names = {rel(p) for p in ALL_MODELS}
    assert {"har_cnn1d_int8.tflite", "mobilenetv2_w035_128_int8.tflite",
            "third_party/tflm_hello_world_int8.tflite", "third_party/tflm_micro_speech_int8.tflite",
            "third_party/arduino_magic_wand_int8.tflite"} <= names
    assert len([n for n in names if n.startswith("test/")]) >= 2
    for folder in (MODELS / "third_party", ROOT / "data" / "third_party"):
        attribution = (folder / "ATTRIBUTION.md").read_text()
        for f in folder.iterdir():
            assert f.name == "ATTRIBUTION.md" or f"`{f.name}`" in attribution, f


@pytest.mark.parametrize("path", ALL_MODELS, ids=rel)
def test_model_loads_and_io_types(path: Path) -> None:
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    expected = np.float32 if rel(path) in FLOAT_IO else np.int8
    for detail in interp.get_input_details() + interp.get_output_details():
        assert detail["dtype"] == expected, detail["name"]
    for detail in interp.get_input_details():
        interp.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interp.invoke()


def test_operator_coverage() -> None:
    flats = [read_flat(p) for p in ALL_MODELS]
    ops = set().union(*(f.ops for f in flats))
    assert SUPPORTED_OPS <= ops, f"not covered: {sorted(SUPPORTED_OPS - ops)}"
    assert {"RELU", "RELU6"} <= set().union(*(f.activations for f in flats))
    assert {"per-channel", "per-tensor"} <= set().union(*(f.weight_quant for f in flats))
    # The project's own models must stay inside the supported set.
    for path, flat in zip(ALL_MODELS, flats, strict=True):
        if not rel(path).startswith("third_party/"):
            assert set(flat.ops) <= SUPPORTED_OPS, (rel(path), sorted(flat.ops))


def _manifest_ops(readme: Path) -> dict[str, Counter]:
    rows = {}
    for line in readme.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("`"):
            ops = Counter()
            for item in cells[4].split(", "):
                name, _, count = item.partition(" x")
                ops[name] = int(count or 1)
            rows[(readme.parent / cells[0].strip("`")).relative_to(MODELS).as_posix()] = ops
    return rows


def test_manifest_is_current() -> None:
    rows = _manifest_ops(MODELS / "README.md") | _manifest_ops(MODELS / "test" / "README.md")
    assert set(rows) == {rel(p) for p in ALL_MODELS}
    for path in ALL_MODELS:
        assert rows[rel(path)] == read_flat(path).ops, rel(path)


def test_mobilenet_shape() -> None:
    ops = read_flat(MODELS / "mobilenetv2_w035_128_int8.tflite").ops
    assert (ops["CONV_2D"], ops["DEPTHWISE_CONV_2D"], ops["ADD"]) == (35, 17, 10)
    assert ops["MEAN"] == ops["FULLY_CONNECTED"] == ops["SOFTMAX"] == 1


def _softmax_beta_scales(path: Path) -> list[tuple[float, float]]:
    """(beta, input scale) of every SOFTMAX in the model."""
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph, found = model.Subgraphs(0), []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != tflite.BuiltinOperator.SOFTMAX:
            continue
        options = tflite.SoftmaxOptions()
        options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        quant = graph.Tensors(op.Inputs(0)).Quantization()
        found.append((options.Beta(), float(quant.Scale(0)) if quant is not None else 0.0))
    return found


@pytest.mark.parametrize("path", ALL_MODELS, ids=rel)
def test_softmax_input_scale_usable(path: Path) -> None:
    # TFLite's reference int8 softmax (and mcutrain) reject beta * input_scale <= 2^-26: the
    # logits would then be too small to quantize into the kernel's fixed-point exp input.
    for beta, scale in _softmax_beta_scales(path):
        assert beta * scale > 2.0**-26, (rel(path), beta, scale)


def test_mobilenet_runs_in_reference_kernels() -> None:
    """BUILTIN_REF accepts the model and its output depends on the input."""
    interp = Interpreter(model_path=str(MODELS / "mobilenetv2_w035_128_int8.tflite"),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rng, outputs = np.random.default_rng(0), []
    for _ in range(3):
        interp.set_tensor(inp["index"], rng.integers(-128, 128, inp["shape"], dtype=np.int8))
        interp.invoke()
        outputs.append(interp.get_tensor(out["index"]).tolist())
    assert outputs[0] != outputs[1] or outputs[0] != outputs[2], outputs


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for sample in x:
        interp.set_tensor(inp["index"], sample.reshape(inp["shape"]))
        interp.invoke()
        results.append(interp.get_tensor(out["index"]).reshape(-1))
    return np.stack(results)


@pytest.mark.parametrize("word,expected", [("yes", [-128, -128, 127, -128]),
                                           ("no", [-128, -114, -128, 114])])
def test_micro_speech_reference_outputs(word: str, expected: list[int]) -> None:
    features = np.fromfile(
        MODELS / "third_party" / f"micro_speech_{word}_features_49x40_int8.bin", np.int8)
    out = _run(MODELS / "third_party" / "tflm_micro_speech_int8.tflite", features[None])
    assert out[0].tolist() == expected


def test_har_dataset_split_by_recording() -> None:
    train, test = (np.load(ROOT / "data" / f"har_{s}.npz") for s in ("train", "test"))
    for split in (train, test):
        assert split["x"].dtype == np.float32 and split["x"].shape[1:] == (64, 3)
        assert split["y"].dtype == np.int64 and len(split["y"]) == len(split["recording"])
        assert set(split["y"].tolist()) == {0, 1, 2}
        assert np.abs(split["x"]).max() <= 4.1  # +-4 g sensor range, in g
    assert list(train["classes"]) == ["stationary", "walking", "running"]
    assert not set(train["recording"].tolist()) & set(test["recording"].tolist())
    assert len(set(train["recording"].tolist()) | set(test["recording"].tolist())) == 92


def test_har_model_int8_accuracy() -> None:
    path = MODELS / "har_cnn1d_int8.tflite"
    assert path.stat().st_size < 30_000
    test = np.load(ROOT / "data" / "har_test.npz")
    interp = Interpreter(model_path=str(path))
    scale, zero = interp.get_input_details()[0]["quantization"]
    x = np.clip(np.round(test["x"] / scale) + zero, -128, 127).astype(np.int8)
    accuracy = np.mean(_run(path, x).argmax(1) == test["y"])
    assert accuracy > 0.9, accuracy
