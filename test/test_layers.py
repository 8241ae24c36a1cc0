"""`mcutrain layers`: the layers a scheme can address, checked against TFLite's own reading of
the model, and costs that are exactly what the build's fit check then needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcutrain.compile.compiler import compile_model
from mcutrain.compile.report import BoardLimits
from mcutrain.frontend.graph import ModelError
from mcutrain.host.cli import main
from mcutrain.host.layers import list_layers
from mcutrain.train.report import check_training_fits
from mcutrain.train.scheme import parse_scheme, plan_layers
from mcutrain.train.training_graph import build_training

ROOT = Path(__file__).resolve().parents[1]
HAR = ROOT / "models" / "har_cnn1d_int8.tflite"
MOBILENET = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"
F746 = BoardLimits("f746", 320 * 1024, 1024 * 1024)


def tflite_parametric(model: Path) -> list[tuple[str, str, list[int], int]]:
    """(opcode, output name, filter shape, input bytes) of every CONV_2D, DEPTHWISE_CONV_2D and
    FULLY_CONNECTED, in TFLite's execution order, as its interpreter reads the file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model))
    interp.allocate_tensors()
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    out = []
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            x, w = tensors[op["inputs"][0]], tensors[op["inputs"][1]]
            out.append((op["op_name"], tensors[op["outputs"][0]]["name"], list(w["shape"]),
                        int(np.prod(x["shape"])) * np.dtype(x["dtype"]).itemsize))
    return out


@pytest.mark.parametrize("model", [HAR, MOBILENET])
def test_layers_match_what_tflite_reads(model: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["layers", str(model), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    want = tflite_parametric(model)
    got = [(r["opcode"], r["name"], r["weight_shape"], r["input_bytes"])
           for r in table["layers"]]
    assert got == want
    n = len(want)
    assert [(r["index"], r["negative"]) for r in table["layers"]] == [(i, i - n)
                                                                     for i in range(n)]
    assert all(r["weight_bytes"] == int(np.prod(r["weight_shape"])) for r in table["layers"])


def test_costs_are_what_the_fit_check_needs() -> None:
    model = compile_model(HAR)
    table = list_layers(model, F746)
    n = len(table.layers)
    for row in table.layers:
        schemes = [({"bias_layers": n - row.index}, row.bias_cost)] + [
            ({"weights": [{"layer": row.index, "ratio": float(r)}]}, cost)
            for r, cost in row.weight_cost.items()]
        for raw, cost in schemes:
            program = build_training(model, parse_scheme(raw))
            exact = table.forward_bytes + cost
            check_training_fits(program, 0, BoardLimits("b", F746.ram_bytes, F746.flash_bytes,
                                                        train_ram_bytes=exact))
            with pytest.raises(ModelError, match=r"\(1 B over\)"):
                check_training_fits(program, 0, BoardLimits(
                    "b", F746.ram_bytes, F746.flash_bytes, train_ram_bytes=exact - 1))


def test_table_names_work_in_a_scheme(capsys: pytest.CaptureFixture) -> None:
    assert main(["layers", str(MOBILENET)]) == 0
    out = capsys.readouterr().out
    # Row-streamed, MobileNetV2's forward pass leaves room in the 256 KB training budget.
    assert "53 parametric layers" in out and "Training budget 262144 B: a scheme may add" in out, \
        out[:800]
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 53
    model = compile_model(MOBILENET)
    steps = [i for i, p in enumerate(model.ops) if p.op.opcode in
             ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    parametric = [(s, model.graph.tensors[model.ops[s].output].name, 8) for s in steps]
    for row in (rows[0], rows[20], rows[-1]):
        index, negative, name = int(row[0]), int(row[1]), row[-1]
        for layer in (index, negative, name):
            plans = plan_layers(parse_scheme({"weights": [{"layer": layer}]}), parametric)
            assert [p.step for p in plans] == [steps[index]], (layer, row)


def test_layers_reads_the_model_without_tensorflow() -> None:
    code = ("import sys; from mcutrain.host.cli import main; main(['layers', sys.argv[1]]); "
            "assert not any(m.split('.')[0] in ('tensorflow', 'ai_edge_litert', 'keras') "
            "for m in sys.modules), 'imported a TensorFlow package'")
    proc = subprocess.run([sys.executable, "-c", code, str(HAR)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "4 parametric layers" in proc.stdout, proc.stderr


def test_bad_model_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    for path in (bad, tmp_path / "missing.tflite"):
        assert main(["layers", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("mcutrain layers: error: ") and err.count("\n") == 1, err
