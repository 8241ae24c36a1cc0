"""The firmware runtime as a Linux process (firmware/bsp/host), built with ASan/UBSan against the
echo test double (test/fixtures/echo_model.cc: 16 int8 in, output = input reversed).

`run_robustness_suite(device)` is board-independent: the lead runs it against QEMU as well."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mcutrain.cli import main as cli_main
from mcutrain.device import Device, ProcessTransport, build_host_firmware, open_device
from mcutrain.protocol import (
    PROTOCOL_VERSION,
    CounterUnit,
    DType,
    RequestType,
)
from robustness import run_robustness_suite

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "test" / "fixtures"



@pytest.fixture(scope="module")
def host_fw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("g++") is None:
        pytest.fail("host g++ is needed for the host-process board: apt-get install g++")
    gen = tmp_path_factory.mktemp("gen")
    shutil.copy(FIXTURES / "echo_model.cc", gen / "model.cc")
    out = tmp_path_factory.mktemp("fw") / "echo_fw"
    return build_host_firmware(gen, out, include_kernels=False).path


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
    assert not info.serves(RequestType.TRAIN)


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
