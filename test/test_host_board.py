"""The firmware runtime as a Linux process (firmware/bsp/host), built with ASan/UBSan against the
echo test double (test/fixtures/echo_model.cc: 16 int8 in, output = input reversed plus a
trainable bias; training adds floor(lr * label + 0.5) to the bias per step), once more as a
regression double (ECHO_MSE) and once without training (ECHO_NO_TRAIN).

`run_robustness_suite(device)` is board-independent: the lead runs it against QEMU as well."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from mcutrain.host.cli import main as cli_main
from mcutrain.host.device import Device, ProcessTransport, build_host_firmware, open_device
from mcutrain.host.protocol import (
    PROTOCOL_VERSION,
    CounterUnit,
    DeviceError,
    DType,
    LossKind,
    RequestType,
    Status,
    read_params_payload,
    train_payload,
)
from robustness import run_robustness_suite

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "test" / "fixtures"



def build_echo(tmp_path_factory: pytest.TempPathFactory, variant: str = "") -> Path:
    """The echo double, optionally with ECHO_<variant> defined (NO_TRAIN, MSE)."""
    if shutil.which("g++") is None:
        pytest.fail("host g++ is needed for the host-process board: apt-get install g++")
    gen = tmp_path_factory.mktemp("gen")
    define = f"#define ECHO_{variant}\n" if variant else ""
    (gen / "model.cc").write_text(f'{define}#include "{FIXTURES / "echo_model.cc"}"\n')
    out = tmp_path_factory.mktemp("fw") / "echo_fw"
    return build_host_firmware(gen, out, include_kernels=False, werror=True).path


@pytest.fixture(scope="module")
def host_fw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_echo(tmp_path_factory)


@pytest.fixture(scope="module")
def host_fw_no_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_echo(tmp_path_factory, "NO_TRAIN")


@pytest.fixture(scope="module")
def host_fw_mse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_echo(tmp_path_factory, "MSE")


@pytest.fixture()
def dev(host_fw: Path):
    with open_device(f"host:{host_fw}", timeout=5.0) as device:
        yield device
    assert isinstance(device.transport, ProcessTransport)


def test_info(dev: Device) -> None:
    info = dev.info()
    assert info.protocol_version == PROTOCOL_VERSION
    assert info.board == "host" and info.counter_unit == CounterUnit.CYCLES
    assert info.model == "echo" and info.model_sha256 == bytes(range(32))
    assert info.arena_bytes == 32 and info.weight_bytes == 0 and info.macs == 0
    assert info.input.dtype == DType.INT8 and info.input.shape == (1, 16)
    assert (info.input.scale, info.input.zero_point, info.input.nbytes) == (0.5, -3, 16)
    assert (info.output.scale, info.output.zero_point, info.output.nbytes) == (0.25, 7, 16)
    assert info.serves(RequestType.INFO) and info.serves(RequestType.INFER)
    assert all(info.serves(r) for r in (RequestType.TRAIN, RequestType.EVAL, RequestType.RESET,
                                        RequestType.SET_LR, RequestType.READ_PARAMS))
    t = info.train
    assert t.enabled and t.loss == LossKind.CROSS_ENTROPY and info.num_classes == 16
    assert (t.label_bytes, t.default_lr, t.current_lr, t.seed) == (2, 0.5, 0.5, 1)
    assert (t.state_bytes, t.backward_macs) == (8, 16)


def test_infer(dev: Device) -> None:
    x = np.array([[0, -1, 127, -128, 5, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8]], dtype=np.int8)
    out, counter = dev.infer(x)
    assert out.shape == (1, 16) and out.dtype == np.int8
    assert np.array_equal(out[0], x[0, ::-1])
    assert counter > 0
    out, _ = dev.infer(x[0])  # leading batch dimension may be omitted
    assert np.array_equal(out[0], x[0, ::-1])
    with pytest.raises(ValueError, match="shape"):
        dev.infer(np.zeros((2, 16), dtype=np.int8))


def test_robustness(dev: Device) -> None:
    run_robustness_suite(dev)


def test_robustness_without_training(host_fw_no_train: Path) -> None:
    with open_device(f"host:{host_fw_no_train}", timeout=5.0) as device:
        run_robustness_suite(device)


def test_robustness_regression(host_fw_mse: Path) -> None:
    with open_device(f"host:{host_fw_mse}", timeout=5.0) as device:
        run_robustness_suite(device)


def test_regression_training(host_fw_mse: Path) -> None:
    with open_device(f"host:{host_fw_mse}", timeout=5.0) as device:
        t = device.info().train
        assert t.loss == LossKind.MEAN_SQUARED_ERROR and t.label_bytes == 64
        target = np.full(16, 2.0, dtype=np.float32)
        r = device.eval(np.zeros(16, dtype=np.int8), target)
        assert (r.loss, r.prediction) == (4.0, 0)
        device.train(np.zeros(16, dtype=np.int8), target)  # bias += floor(0.5 * 2 + 0.5) = 1
        assert echo_state(device) == (1, 1)
        assert device.eval(np.zeros(16, dtype=np.int8), target).loss == 1.0
        bad = target.copy()
        bad[3] = np.inf
        with pytest.raises(ValueError, match="NaN or infinity"):
            device.train(np.zeros(16, dtype=np.int8), bad)
        with pytest.raises(DeviceError, match="NaN or infinity") as exc:
            device.request(RequestType.TRAIN, bytes(16) + bad.tobytes())
        assert exc.value.status == Status.NOT_FINITE
        assert echo_state(device) == (1, 1)


def echo_state(dev: Device) -> tuple[int, int]:
    """(bias, updating steps) of the echo double's 8-byte state."""
    return struct.unpack("<iI", dev.read_params())


def sample(hot: int) -> np.ndarray:
    """An input whose reversed argmax (the echo's prediction) is 15 - hot."""
    x = np.zeros(16, dtype=np.int8)
    x[hot] = 50
    return x


def test_train_eval_reset(dev: Device) -> None:
    dev.reset()
    assert echo_state(dev) == (0, 0)
    r = dev.eval(sample(3), 5)  # prediction 12, loss |5 - 12|; nothing changes
    assert (r.loss, r.prediction) == (7.0, 12) and r.counter > 0
    assert echo_state(dev) == (0, 0)
    r = dev.train(sample(3), 5)  # bias += floor(0.5 * 5 + 0.5) = 3
    assert (r.loss, r.prediction) == (7.0, 12)
    assert echo_state(dev) == (3, 1)
    out, _ = dev.infer(np.zeros(16, dtype=np.int8))  # INFER sees the trained bias
    assert out.tolist() == [[3] * 16]
    assert dev.set_lr(2.0) == 2.0
    assert dev.info().train.current_lr == 2.0
    dev.train(sample(0), 15)  # bias += 30
    assert echo_state(dev) == (33, 2)
    dev.reset()
    assert echo_state(dev) == (0, 0) and dev.info().train.current_lr == 0.5
    assert dev.read_params_slice(4, 4) == b"\x00" * 4
    assert dev.read_params_slice(8, 0) == b""


def test_refused_label_changes_nothing(dev: Device) -> None:
    dev.reset()
    dev.train(sample(1), 2)
    before = dev.read_params()
    x = sample(1).tobytes()
    for rtype in (RequestType.TRAIN, RequestType.EVAL):
        with pytest.raises(DeviceError, match="label 16 outside") as exc:
            dev.request(rtype, train_payload(x, struct.pack("<H", 16)))
        assert exc.value.status == Status.BAD_LABEL
        with pytest.raises(DeviceError) as exc:
            dev.request(rtype, train_payload(x, b"\x01"))
        assert exc.value.status == Status.BAD_SHAPE
    with pytest.raises(ValueError, match="outside"):
        dev.train(sample(1), 16)  # the host refuses it before sending
    assert dev.read_params() == before


def test_set_lr_refuses_non_finite(dev: Device) -> None:
    dev.reset()
    for bad in (float("nan"), float("inf"), -0.5):
        with pytest.raises(DeviceError) as exc:
            dev.set_lr(bad)
        assert exc.value.status == Status.NOT_FINITE
    assert dev.info().train.current_lr == 0.5
    assert dev.set_lr(0.0) == 0.0


def test_read_params_bounds(dev: Device) -> None:
    for offset, length in ((0, 9), (8, 1), (9, 0), (0xFFFFFFFF, 1), (4, 0xFFFFFFFF)):
        with pytest.raises(DeviceError, match="outside the 8-byte state") as exc:
            dev.request(RequestType.READ_PARAMS, read_params_payload(offset, length))
        assert exc.value.status == Status.BAD_LENGTH


def test_firmware_without_training(host_fw_no_train: Path) -> None:
    with open_device(f"host:{host_fw_no_train}", timeout=5.0) as device:
        info = device.info()
        assert not info.train.enabled and not info.serves(RequestType.TRAIN)
        assert info.serves(RequestType.INFER)
        for call in (device.reset, lambda: device.set_lr(0.1), device.read_params,
                     lambda: device.request(RequestType.TRAIN, bytes(18))):
            with pytest.raises(DeviceError, match="without a training scheme: set custom_train"):
                call()
        out, _ = device.infer(np.arange(16, dtype=np.int8))
        assert out[0].tolist() == list(range(15, -1, -1))


def test_random_noise_never_breaks_the_firmware(dev: Device) -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        noise = rng.integers(0, 256, size=int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        dev.send_raw(noise + b"\x00")
    x = np.arange(16, dtype=np.int8)
    out, _ = dev.infer(x)
    assert np.array_equal(out[0], x[::-1])


def test_clean_exit_on_close(host_fw: Path) -> None:
    device = open_device(f"host:{host_fw}", timeout=5.0)
    device.info()
    device.close()
    assert device.transport._proc.returncode == 0  # type: ignore[attr-defined]


def test_cli(host_fw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = f"host:{host_fw}"
    assert cli_main(["info", "--port", port]) == 0
    assert "echo" in capsys.readouterr().out

    # Float input, quantized on the host with scale 0.5, zero point -3; output = reversed input,
    # so the argmax is at 15 - (index of the largest input).
    x = np.zeros((5, 16), dtype=np.float32)
    hot = np.array([0, 3, 15, 7, 3])
    x[np.arange(5), hot] = 10.0
    y = 15 - hot
    y[4] = 0  # one wrong label
    data = tmp_path / "d.npz"
    np.savez(data, x=x, y=y)
    saved = tmp_path / "out.npz"
    assert cli_main(["infer", "--port", port, "--data", str(data), "--save", str(saved),
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "accuracy: 0.8000 (4/5)" in out
    res = np.load(saved)
    assert res["output"].shape == (5, 1, 16) and res["pred"].tolist() == (15 - hot).tolist()

    np.savez(data, x=np.zeros((3, 17), dtype=np.float32))
    assert cli_main(["infer", "--port", port, "--data", str(data)]) == 1
    assert "does not match the model input" in capsys.readouterr().err
    assert cli_main(["infer", "--port", port, "--data", str(tmp_path / "missing.npz")]) == 1
    assert cli_main(["info", "--port", "host:/nonexistent"]) == 1
    assert "not an executable" in capsys.readouterr().err


def test_cli_train_eval_params(host_fw: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    port = f"host:{host_fw}"
    hot = np.array([0, 3, 15, 7, 3, 9])
    x = np.zeros((6, 16), dtype=np.float32)
    x[np.arange(6), hot] = 10.0
    y = 15 - hot
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:4], y=y[:4])
    out = tmp_path / "run"
    assert cli_main(["train", "--port", port, "--data", str(tmp_path / "train.npz"),
                     "--eval", str(tmp_path / "test.npz"), "--epochs", "2", "--lr", "0.0",
                     "--schedule", "cosine", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "epoch 0/2" in text and "epoch 2/2" in text
    curve = json.loads((out / "curve.json").read_text())
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [e["epoch"] for e in curve["epochs"]] == [0, 1, 2]
    # lr 0: the bias stays 0, so every prediction is right and every loss is 0.
    assert all(e["eval_accuracy"] == 1.0 and e["eval_loss"] == 0.0 for e in curve["epochs"])
    assert curve["epochs"][1]["train_accuracy"] == 1.0
    assert curve["epochs"][1]["counter_per_step"] > 0
    assert len(curve["order"]) == 2 and sorted(curve["order"][0]) == list(range(6))
    assert curve["order"][0] == np.random.default_rng(3).permutation(6).tolist()

    # A run with a learning rate on the first 2 samples. Each CLI call starts a fresh firmware
    # process, so the state read back below is the reset state.
    assert cli_main(["train", "--port", port, "--data", str(tmp_path / "train.npz"),
                     "--epochs", "1", "--lr", "0.5", "--limit", "2", "--out", str(out),
                     "--quiet"]) == 0
    capsys.readouterr()
    assert cli_main(["eval", "--port", port, "--data", str(tmp_path / "test.npz"),
                     "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "accuracy: 1.0000 (4/4)" in text and "true\\pred" in text
    assert cli_main(["params", "--port", port, "--out", str(tmp_path / "state.bin")]) == 0
    assert (tmp_path / "state.bin").read_bytes() == struct.pack("<iI", 0, 0)  # fresh process

    np.savez(tmp_path / "bad.npz", x=x, y=np.full(6, 16))
    assert cli_main(["train", "--port", port, "--data", str(tmp_path / "bad.npz"),
                     "--epochs", "1", "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label 16 outside [0, 16)" in err


def test_cli_train_without_training(host_fw_no_train: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 16), dtype=np.float32), y=np.zeros(2))
    for argv in (["train", "--data", str(tmp_path / "d.npz"), "--epochs", "1",
                  "--out", str(tmp_path / "o")],
                 ["params", "--out", str(tmp_path / "s.bin")]):
        assert cli_main([*argv, "--port", f"host:{host_fw_no_train}"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "without a training scheme" in err


def test_cli_train_regression(host_fw_mse: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    x = np.zeros((4, 16), dtype=np.float32)
    y = np.full((4, 16), 2.0, dtype=np.float32)
    np.savez(tmp_path / "r.npz", x=x, y=y)
    out = tmp_path / "run"
    assert cli_main(["train", "--port", f"host:{host_fw_mse}", "--data", str(tmp_path / "r.npz"),
                     "--eval", str(tmp_path / "r.npz"), "--epochs", "1", "--out", str(out),
                     "--quiet"]) == 0
    capsys.readouterr()
    curve = json.loads((out / "curve.json").read_text())
    assert curve["loss"] == "mean_squared_error"
    # Input 0 quantizes to the zero point -3, so the first output is -3 and the loss 25; the
    # first step adds 1 to the bias, the rest 1 each: losses 25, 16, 9, 4 -> mean 13.5.
    first, last = curve["epochs"]
    assert first["eval_loss"] == 25.0 and first["eval_accuracy"] is None
    assert last["train_loss"] == 13.5 and last["eval_loss"] == 1.0
    assert (out / "curve.png").is_file()


# ---- bad labels, saturated inputs, bad files, options (issue 6) ----


def _labelled(tmp_path: Path, y: np.ndarray, x: np.ndarray | None = None) -> Path:
    path = tmp_path / "labels.npz"
    np.savez(path, x=np.zeros((len(y), 16), np.float32) if x is None else x, y=y)
    return path


@pytest.mark.parametrize("labels, bad, index", [
    ([0, -1, 3], "-1", 1),          # used to wrap into the last confusion-matrix row
    ([0, 1, 16], "16", 2),          # used to add a row
    ([0.0, 2.5, 3.0], "2.5", 1),    # used to be truncated to 2
])
@pytest.mark.parametrize("command", ["infer", "train", "eval"])
def test_cli_refuses_bad_labels(host_fw: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str], command: str,
                                labels: list[float], bad: str, index: int) -> None:
    data = _labelled(tmp_path, np.array(labels))
    argv = [command, "--port", f"host:{host_fw}", "--data", str(data), "--quiet"]
    if command == "train":
        argv += ["--epochs", "1", "--out", str(tmp_path / "run")]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"label {bad} " in err and f"index {index}" in err, err
    assert not (tmp_path / "run").exists()


def test_cli_accepts_integral_float_labels(host_fw: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = _labelled(tmp_path, np.array([0.0, 0.0]))  # all-equal input: the echo predicts 0
    for command in ("infer", "eval"):
        assert cli_main([command, "--port", f"host:{host_fw}", "--data", str(data),
                         "--quiet"]) == 0
        assert "accuracy: 1.0000 (2/2)" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["infer", "eval"])
def test_cli_warns_when_float_inputs_saturate(host_fw: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              command: str) -> None:
    # The echo input has scale 0.5 and zero point -3: it represents [-62.5, 65].
    x = np.full((4, 16), 1.0, np.float32)
    x[:, :8] = 1000.0  # half the values, e.g. milli-g instead of g
    data = _labelled(tmp_path, np.zeros(4, np.int64), x)
    argv = [command, "--port", f"host:{host_fw}", "--data", str(data), "--quiet"]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "50.0% of the input values" in err and "[-62.5, 65]" in err, err
    np.savez(data, x=np.clip(x, -62.5, 65.0), y=np.zeros(4, np.int64))  # in range: no warning
    assert cli_main(argv) == 0
    assert "input values" not in capsys.readouterr().err


def test_cli_says_a_non_npz_file_is_not_an_npz(host_fw: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, np.uint8).tobytes())
    np.save(tmp_path / "array.npy", np.zeros(3))
    for path in (junk, tmp_path / "array.npy"):
        assert cli_main(["infer", "--port", f"host:{host_fw}", "--data", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not an .npz archive" in err, err
        assert "allow_pickle" not in err


@pytest.mark.parametrize("limit", ["0", "-5", "two"])
def test_cli_limit_must_be_at_least_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        limit: str) -> None:
    for argv in (["infer"], ["eval"], ["train", "--epochs", "1"]):
        with pytest.raises(SystemExit) as exc:
            cli_main([*argv, "--data", "d.npz", "--limit", limit])
        assert exc.value.code == 2
        assert "--limit: must be an integer >= 1" in capsys.readouterr().err


def test_cli_version_matches_pyproject(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exc:
        cli_main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mcutrain {version}"


def test_every_cli_option_has_help() -> None:
    import argparse

    from mcutrain.host.cli import build_parser

    def undocumented(parser: argparse.ArgumentParser, where: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                missing += [f"subcommand {n}" for n in action.choices if n not in helped]
                for name, sub in action.choices.items():
                    missing += undocumented(sub, f"{where} {name}")
            elif not action.help:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert undocumented(build_parser(), "mcutrain") == []
