"""The emulated board behind `mcutrain --port qemu` keeps its state between commands, like a real
board, and runs the ELF of the PlatformIO project the user is in (issue 6, items 1 and 3).

Each test works on its own copy of the default build (model + training scheme) in a temporary
project, so the boards it keeps are its own; the fixture stops them and checks the process is
gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from firmware_support import build_firmware
from mcutrain.host import kept_board
from mcutrain.host.cli import main as cli_main
from mcutrain.host.device import open_device
from mcutrain.host.qemu import QemuError, resolve_elf

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "har_cnn1d_int8.tflite"
SCHEME = ROOT / "train" / "har_adapt.json"


@pytest.fixture(scope="module")
def built_elf() -> Path:
    return build_firmware(MODEL, scheme=SCHEME)


def make_project(root: Path, built: Path) -> Path:
    """A PlatformIO project directory holding a copy of the build; returns its ELF."""
    out = root / ".pio" / "build" / "qemu"
    out.mkdir(parents=True)
    shutil.copy(built, out / "firmware.elf")
    shutil.copy(built.parent / "report.json", out / "report.json")
    return (out / "firmware.elf").resolve()


@pytest.fixture()
def project(tmp_path: Path, built_elf: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project as cwd, with the ELF of the default build; stops any board kept for it."""
    root = tmp_path / "proj"
    elf = make_project(root, built_elf)
    monkeypatch.chdir(root)
    try:
        yield elf
    finally:
        record = kept_board.read_record(elf)
        kept_board.stop(elf)
        assert kept_board.read_record(elf) is None
        if record is not None:
            assert not kept_board.process_alive(record.pid, record.elf)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("data")
    for name, count in (("train", 24), ("test", 40)):
        src = np.load(ROOT / "data" / f"adapt_{name}.npz")
        pick = np.random.default_rng(0).permutation(len(src["x"]))[:count]  # all classes
        np.savez(out / f"{name}.npz", x=src["x"][pick], y=src["y"][pick])
    return out / "train.npz", out / "test.npz"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    code = cli_main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def eval_losses(out_dir: Path) -> list[float]:
    curve = json.loads((out_dir / "curve.json").read_text())
    return [e["eval_loss"] for e in curve["epochs"]]


def flashed_params(elf: Path) -> bytes:
    with open_device(f"qemu:{elf}", timeout=60) as dev:  # a private board: the flashed state
        return dev.read_params()


def test_train_then_eval_and_params_see_the_trained_state(
        project: Path, data: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    train, test = data
    common = ["--timeout", "60", "--quiet"]
    out, err = run(["train", "--data", str(train), "--eval", str(test), "--epochs", "1",
                    "--lr", "0.05", "--out", str(tmp_path / "run1"), *common], capsys)
    assert f"firmware {project}" in err and "started now with the flashed weights" in err
    before, after = eval_losses(tmp_path / "run1")
    assert before != after

    out, err = run(["eval", "--data", str(test), *common], capsys)
    assert "kept since" in err and f"firmware {project}" in err
    assert f"loss: {after:.6f}" in out  # the trained board, not the flashed weights

    run(["params", "--out", str(tmp_path / "state.bin"), "--timeout", "60"], capsys)
    trained = (tmp_path / "state.bin").read_bytes()
    assert trained == (tmp_path / "run1" / "params.bin").read_bytes()
    assert trained != flashed_params(project)
    layout = json.loads((tmp_path / "run1" / "layout.json").read_text())
    assert layout["source"] == str(project.parent / "report.json")
    assert layout["training"]["state_bytes"] == len(trained) == layout["state_bytes"]

    # --no-reset continues from the trained state; without it, training starts from the flash.
    run(["train", "--data", str(train), "--eval", str(test), "--epochs", "1", "--no-reset",
         "--out", str(tmp_path / "run2"), *common], capsys)
    assert eval_losses(tmp_path / "run2")[0] == after
    run(["train", "--data", str(train), "--eval", str(test), "--epochs", "1",
         "--out", str(tmp_path / "run3"), *common], capsys)
    assert eval_losses(tmp_path / "run3")[0] == before


def test_rebuilt_elf_restarts_the_board(project: Path, data: tuple[Path, Path],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    run(["board", "start"], capsys)
    first = kept_board.read_record(project)
    assert first is not None
    with project.open("ab") as fp:  # a "rebuild": other bytes, same program
        fp.write(b"\0")
    out, _ = run(["board", "status"], capsys)
    assert "ELF rebuilt since" in out
    _, err = run(["info", "--timeout", "60"], capsys)
    assert "restarted with the flashed weights because the ELF was rebuilt" in err
    second = kept_board.read_record(project)
    assert second is not None and second.pid != first.pid
    assert not kept_board.process_alive(first.pid, first.elf)


def test_board_start_status_stop(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run(["board", "status"], capsys)
    assert out.strip() == f"no emulated board running for {project}"
    out, _ = run(["board", "start"], capsys)
    record = kept_board.read_record(project)
    assert record is not None and f"QEMU pid {record.pid}" in out
    out, _ = run(["board", "start"], capsys)  # already running: the same board
    assert f"QEMU pid {record.pid}, kept since" in out
    out, _ = run(["board", "status"], capsys)
    assert out.startswith(f"emulated board running: QEMU pid {record.pid}")
    out, _ = run(["board", "stop"], capsys)
    assert f"stopped the emulated board (QEMU pid {record.pid})" in out
    assert not kept_board.process_alive(record.pid, record.elf)
    assert not kept_board.state_path(project).exists()
    assert cli_main(["board", "stop", "--port", "/dev/ttyACM0"]) == 1
    assert "emulated board only" in capsys.readouterr().err


def test_stale_records_are_dropped(tmp_path: Path) -> None:
    elf = tmp_path / "firmware.elf"
    elf.write_bytes(b"\x7fELF" + bytes(60))
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid in (dead.pid, os.getpid()):  # exited; alive but not a QEMU running this ELF
        kept_board.state_path(elf).write_text(json.dumps({
            "pid": pid, "serial_port": 1, "qmp_port": 2, "elf": str(elf),
            "sha256": kept_board.elf_sha256(elf), "started": "then"}))
        assert kept_board.status(elf).record is None
        assert not kept_board.state_path(elf).exists()


def test_port_qemu_runs_the_elf_of_the_current_project(
        tmp_path: Path, built_elf: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert cli_main(["info"]) == 1
    err = capsys.readouterr().err
    missing = empty.resolve() / ".pio" / "build" / "qemu" / "firmware.elf"
    assert err.count("\n") == 1 and str(missing) in err and "pio run -e qemu" in err
    assert "--project-dir" in err
    elf = make_project(tmp_path / "other", built_elf)
    assert resolve_elf("qemu", tmp_path / "other") == elf
    with pytest.raises(QemuError, match="firmware not built"):
        resolve_elf("qemu")
    assert resolve_elf(f"qemu:{os.path.relpath(elf)}") == elf


def test_info_from_a_non_editable_install(tmp_path: Path, built_elf: Path) -> None:
    """The installed package lives far from any project: it must use the cwd's ELF."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "python", src / "python",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    elf = make_project(tmp_path / "proj", built_elf)
    env = dict(os.environ, PYTHONPATH=str(target))

    def python(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *argv], env=env, cwd=elf.parents[3],
                              capture_output=True, text=True, timeout=120)

    where = python("-c", "import mcutrain; print(mcutrain.__file__)").stdout
    assert Path(where.strip()).is_relative_to(target)
    try:
        proc = python("-m", "mcutrain.host.cli", "info", "--timeout", "60")
        assert proc.returncode == 0, proc.stderr
        assert f"firmware ELF   {elf}" in proc.stdout
    finally:
        stopped = python("-m", "mcutrain.host.cli", "board", "stop")
    assert "stopped the emulated board" in stopped.stdout, stopped.stderr
    assert kept_board.read_record(elf) is None
