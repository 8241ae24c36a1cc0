"""The firmware runtime as a Linux process (firmware/bsp/host), built with ASan/UBSan against the
echo test double (test/fixtures/echo_model.cc: 16 int8 in, output = input reversed).

`run_robustness_suite(device)` is board-independent: the lead runs it against QEMU as well."""

from __future__ import annotations

import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from mcutrain.cli import main as cli_main
from mcutrain.device import Device, ProcessTransport, build_host_firmware, open_device
from mcutrain.protocol import (
    ERROR_REPLY,
    PROTOCOL_VERSION,
    CounterUnit,
    DType,
    Frame,
    RequestType,
    Status,
    encode_frame,
    parse_error,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "test" / "fixtures"


# ---- reusable robustness suite (any board) ----


def raw_line(version: int, rtype: int, seq: int, payload: bytes, *, declared: int | None = None,
             crc_xor: int = 0) -> bytes:
    """A frame on the line with chosen defects: another version, a wrong declared length, a
    corrupted CRC."""
    length = len(payload) if declared is None else declared
    body = struct.pack("<BBHI", version, rtype, seq, length) + payload
    crc = zlib.crc32(body) ^ crc_xor
    return b"\x00" + cobs.encode(body + struct.pack("<I", crc)) + b"\x00"


def expect_error(dev: Device, statuses: set[Status], seq: int | None, what: str) -> Status:
    frame = dev.read_frame(f"the error reply to {what}")
    assert frame.type == ERROR_REPLY, f"{what}: expected an ERROR reply, got type {frame.type:#x}"
    err = parse_error(frame.payload)
    assert err.status in statuses, f"{what}: got {err}, expected one of {statuses}"
    if seq is not None:
        assert frame.seq == seq, f"{what}: error reply seq {frame.seq}, expected {seq}"
    return Status(err.status)


def run_robustness_suite(dev: Device, *, stall_seconds: float = 0.6) -> None:
    """Throws malformed traffic at a board; each case must get the right ERROR reply and the
    next valid INFER must still answer with the reference output.

    `stall_seconds` is host time to wait for the firmware's inter-byte timeout (200 ms of board
    time); raise it on boards whose clock runs slower than real time."""
    info = dev.info()
    n_in = info.input.nbytes
    rng = np.random.default_rng(1234)
    x = rng.integers(-128, 128, size=info.input.shape, dtype=np.int8)
    x.flat[:3] = 0  # zeros inside the payload exercise COBS
    reference, _ = dev.infer(x)
    good = x.tobytes()

    def still_serving(case: str) -> None:
        out, _ = dev.infer(x)
        assert np.array_equal(out, reference), f"wrong INFER output after {case}"

    def check(case: str, line: bytes, statuses: set[Status], seq: int | None,
              chained: bool = False) -> None:
        if not chained:
            dev.send_raw(line)
            expect_error(dev, statuses, seq, case)
            still_serving(case)
            return
        # Bytes that do not end in a delimiter are only ended by the next frame's leading one:
        # send both in one write, or the firmware's inter-byte timeout would answer first.
        next_seq = dev.next_seq()
        dev.send_raw(line + encode_frame(Frame(infer, next_seq, good)))
        expect_error(dev, statuses, seq, case)
        frame = dev.read_frame(f"the INFER reply after {case}")
        assert (frame.type, frame.seq) == (infer | 0x80, next_seq), f"bad reply after {case}"
        assert frame.payload[: info.output.nbytes] == reference.tobytes()

    infer = int(RequestType.INFER)
    v = PROTOCOL_VERSION
    check("garbage between frames", b"\x01\x02garbage\xff\xfe", {Status.BAD_FRAME}, None,
          True)
    check("frame decoding to nothing", b"\x00\x01\x00", {Status.BAD_FRAME}, 0)
    full = encode_frame(Frame(infer, 101, good))
    check("frame cut off by the next delimiter", full[: len(full) // 2],
          {Status.BAD_FRAME, Status.BAD_LENGTH}, None, True)
    check("frame cut after its header", full[:12], {Status.BAD_FRAME, Status.BAD_LENGTH}, None,
          True)
    check("wrong CRC", raw_line(v, infer, 102, good, crc_xor=0x10), {Status.BAD_CRC}, 102)
    check("shorter than declared", raw_line(v, infer, 103, good[:-1], declared=n_in),
          {Status.BAD_LENGTH}, 103)
    check("longer than declared", raw_line(v, infer, 104, good + b"\x05", declared=n_in),
          {Status.BAD_LENGTH}, 104)
    check("bad version", raw_line(v + 1, infer, 105, good), {Status.BAD_VERSION}, 105)
    check("unknown type", raw_line(v, 0x55, 106, b""), {Status.UNKNOWN_REQUEST}, 106)
    check("wrong input size", raw_line(v, infer, 107, good + b"\x01"), {Status.BAD_SHAPE}, 107)
    check("oversize INFER", raw_line(v, infer, 108, bytes(range(256)) * 16 + good),
          {Status.BAD_SHAPE}, 108)
    check("oversize INFO", raw_line(v, int(RequestType.INFO), 109, b"\x07" * 200),
          {Status.TOO_LONG}, 109)
    check("payload_len near 4 GB", raw_line(v, infer, 110, good, declared=0xFFFFFFF0),
          {Status.BAD_LENGTH}, 110)

    # Idle delimiters get no reply at all.
    stale = dev.stale_frames
    dev.send_raw(b"\x00" * 10)
    still_serving("idle delimiters")
    assert dev.stale_frames == stale, "idle delimiters produced a reply"

    # A frame that stops arriving: kTimeout, then the late remainder is dropped silently.
    line = encode_frame(Frame(infer, 111, good))
    dev.send_raw(line[:20])
    time.sleep(stall_seconds)
    expect_error(dev, {Status.TIMEOUT}, 111, "stalled frame")
    dev.send_raw(line[20:])
    still_serving("stalled frame")
    assert dev.stale_frames == stale, "the late remainder of a stalled frame got a reply"


# ---- host board ----


@pytest.fixture(scope="module")
def host_fw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("g++") is None:
        pytest.skip("no host g++")
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
