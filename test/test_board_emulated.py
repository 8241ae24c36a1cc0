"""The firmware as users meet it: the default build (model and training scheme, as `pio run`
makes it) on the emulated board or the board behind --port, driven through the `mcutrain`
command and hit with malformed traffic, training requests included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from firmware_support import build_firmware, open_board, port_scheme
from mcutrain.compile.compiler import compile_model
from mcutrain.compile.reference import run_reference
from mcutrain.host import kept_board
from mcutrain.host.cli import main as cli_main
from mcutrain.host.device import quantize_input
from mcutrain.host.protocol import CounterUnit
from mcutrain.train.scheme import load_scheme
from mcutrain.train.training_graph import build_training
from robustness import run_robustness_suite

ROOT = Path(__file__).resolve().parents[1]
HAR_TEST = ROOT / "data" / "har_test.npz"


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.getoption("--port-model"))


@pytest.fixture(scope="module")
def scheme(request: pytest.FixtureRequest) -> Path | None:
    return port_scheme(request.config)


@pytest.fixture(scope="module")
def port(request: pytest.FixtureRequest, model: Path, scheme: Path | None):
    given = request.config.getoption("--port")
    if given:
        yield given
        return
    elf = build_firmware(model, scheme=scheme).resolve()
    kept_board.stop(elf)  # `mcutrain` commands share the board kept for this ELF: start clean
    yield f"qemu:{elf}"
    kept_board.stop(elf)
    assert kept_board.read_record(elf) is None


def test_info_describes_the_model(request: pytest.FixtureRequest, model: Path,
                                  scheme: Path | None) -> None:
    compiled = compile_model(model)
    with open_board(request.config, model, scheme) as board:
        info = board.info()
    t_in = compiled.graph.tensors[compiled.input]
    assert info.input.shape == t_in.shape and info.input.zero_point == t_in.zero_point
    arena = (compiled.arena_bytes if scheme is None
             else build_training(compiled, load_scheme(scheme)).arena_bytes)
    assert info.arena_bytes == arena and info.macs == compiled.macs
    assert info.train.enabled == (scheme is not None)
    if not request.config.getoption("--port"):
        assert info.board == "qemu-mps2-an500"
        assert info.counter_unit == CounterUnit.INSTRUCTIONS


def test_malformed_traffic_gets_error_replies_and_service_continues(
        request: pytest.FixtureRequest, model: Path, scheme: Path | None) -> None:
    with open_board(request.config, model, scheme) as board:
        run_robustness_suite(board)


def test_cli_infer_reports_accuracy_and_saves_reference_exact_predictions(
        port: str, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = np.load(HAR_TEST)
    limit = 40
    out = tmp_path / "pred.npz"
    code = cli_main(["infer", "--port", port, "--data", str(HAR_TEST), "--limit", str(limit),
                     "--save", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "accuracy:" in printed and "instructions per inference" in printed
    saved = np.load(out)
    compiled = compile_model(model)
    t = compiled.graph.tensors[compiled.input]
    from mcutrain.host.protocol import DType, TensorDesc

    desc = TensorDesc(DType.INT8, t.shape, t.scale, t.zero_point, t.nbytes)
    for i in range(limit):
        want = run_reference(compiled, quantize_input(data["x"][i], desc).reshape(t.shape))
        assert saved["output"][i].tobytes() == want.tobytes(), f"sample {i}"
    accuracy = float((saved["pred"] == data["y"][:limit]).mean())
    assert f"accuracy: {accuracy:.4f}" in printed


def test_cli_errors_are_one_line(port: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 5, 5), np.float32))
    assert cli_main(["infer", "--port", port, "--data", str(bad), "--quiet"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    if port.startswith("qemu"):  # first the line naming the board and its ELF
        assert lines.pop(0).startswith("mcutrain infer: on the emulated board")
    assert len(lines) == 1 and lines[0].startswith("mcutrain infer: error:") and "shape" in lines[0]
