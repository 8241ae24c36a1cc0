"""Host-side protocol tests: frame encoding, the streaming decoder, payload parsing, and the
firmware's COBS/CRC code (through test/fixtures/cobs_tool.cc) against the Python side."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from mcutrain.host.device import dequantize_output, quantize_input
from mcutrain.host.protocol import (
    CounterUnit,
    DeviceError,
    DeviceInfo,
    DType,
    Frame,
    FrameDecoder,
    LossKind,
    ProtocolError,
    RequestType,
    Status,
    TensorDesc,
    TrainInfo,
    TrainReply,
    check_reply,
    encode_frame,
    encode_label,
    frame_bytes,
    info_payload,
    parse_frame,
    parse_infer,
    parse_info,
    parse_set_lr,
    parse_train,
    read_params_payload,
    set_lr_payload,
    train_payload,
)

ROOT = Path(__file__).resolve().parents[1]

# Payloads that stress COBS: zeros everywhere, and non-zero runs around the 254-byte block limit.
COBS_CASES = [
    b"",
    b"\x00",
    b"\x00\x00",
    b"\x01",
    b"\x01\x00",
    b"\x00\x01",
    b"\x01" * 253,
    b"\x01" * 254,
    b"\x01" * 255,
    b"\x01" * 254 + b"\x00",
    b"\x01" * 253 + b"\x00",
    b"\x00" + b"\x01" * 254 + b"\x00",
    b"\xff" * 508,
    b"\xff" * 509,
    bytes(range(256)) * 3,
    bytes(300),
]


def decode_all(data: bytes, chunk: int = 7) -> list:
    dec = FrameDecoder()
    items = []
    for i in range(0, len(data), chunk):
        items += dec.feed(data[i : i + chunk])
    return items


@pytest.mark.parametrize("payload", COBS_CASES, ids=lambda p: f"{len(p)}B")
def test_frame_round_trip(payload: bytes) -> None:
    frame = Frame(int(RequestType.INFER), 0xBEEF, payload)
    line = encode_frame(frame)
    assert line[0] == 0 and line[-1] == 0 and 0 not in line[1:-1]
    assert decode_all(line) == [frame]
    assert decode_all(line, chunk=1) == [frame]


def test_frame_layout() -> None:
    raw = frame_bytes(Frame(0x02, 0x1234, b"\x05\x06"))
    assert raw[:8] == bytes([1, 2, 0x34, 0x12, 2, 0, 0, 0])
    assert raw[8:10] == b"\x05\x06"
    assert struct.unpack("<I", raw[10:])[0] == zlib.crc32(raw[:10])


def test_decoder_recovers_after_garbage_and_truncation() -> None:
    good = Frame(0x81, 7, b"abc\x00def")
    line = encode_frame(good)
    stream = b"noise" + line[: len(line) // 2] + line + b"\x00\x00" + line
    items = decode_all(stream)
    assert items[-2:] == [good, good]
    assert all(isinstance(i, ProtocolError) for i in items[:-2]) and items[:-2]


def test_decoder_reports_bad_frames() -> None:
    raw = bytearray(frame_bytes(Frame(0x81, 1, b"xyz")))
    raw[-1] ^= 0xFF
    (item,) = decode_all(b"\x00" + cobs.encode(bytes(raw)) + b"\x00")
    assert isinstance(item, ProtocolError) and "CRC" in str(item)
    (item,) = decode_all(b"\x00" + cobs.encode(b"\x01\x81\x00") + b"\x00")
    assert isinstance(item, ProtocolError) and "shorter" in str(item)
    (item,) = decode_all(b"\x00\x05ab\x00")  # COBS block cut by the delimiter
    assert isinstance(item, ProtocolError)


def test_decoder_bounds_an_undelimited_line() -> None:
    dec = FrameDecoder(max_frame_bytes=100)
    assert dec.feed(b"\x01" * 1000) == []
    (item,) = dec.feed(b"\x00")
    assert isinstance(item, ProtocolError) and "longer" in str(item)


def test_parse_frame_errors() -> None:
    raw = frame_bytes(Frame(0x81, 1, b"abcd"))
    with pytest.raises(ProtocolError, match="declares"):
        parse_frame(raw[:-5] + raw[-4:])
    with pytest.raises(ProtocolError, match="version"):
        parse_frame(b"\x02" + raw[1:])


def make_info() -> DeviceInfo:
    return DeviceInfo(
        protocol_version=1, counter_unit=CounterUnit.INSTRUCTIONS, max_small_payload=64,
        request_mask=0b110, board="qemu-mps2-an500", model="mbv2", model_sha256=bytes(range(32)),
        arena_bytes=123456, weight_bytes=654321, macs=2**33 + 5,
        input=TensorDesc(DType.INT8, (1, 128, 128, 3), 0.0078125, -1, 49152),
        output=TensorDesc(DType.INT8, (1, 10), 0.00390625, -128, 10),
        stack_used_bytes=1234, stack_size_bytes=8192,
        train=TrainInfo(True, LossKind.CROSS_ENTROPY, 10, 2, 0.0625, 0.03125, 7, 4096, 2**34 + 1),
    )


def test_info_round_trip() -> None:
    info = make_info()
    parsed = parse_info(info_payload(info))
    assert parsed == info
    assert parsed.serves(RequestType.INFER) and not parsed.serves(RequestType.TRAIN)
    with pytest.raises(ProtocolError, match="truncated"):
        parse_info(info_payload(info)[:-1])
    with pytest.raises(ProtocolError, match="extra"):
        parse_info(info_payload(info) + b"\x00")


def test_info_training_fields_layout() -> None:
    info = make_info()
    # The training fields, then u8 input_pulled last.
    tail = info_payload(info)[-33:]
    assert tail == struct.pack("<BBHIffIIQB", 1, 1, 10, 2, 0.0625, 0.03125, 7, 4096, 2**34 + 1,
                               0)
    assert parse_info(info_payload(info)).num_classes == 10
    assert not parse_info(info_payload(info)).input_pulled
    assert parse_info(info_payload(replace(info, input_pulled=True))).input_pulled
    with pytest.raises(ProtocolError, match="loss"):
        parse_info(info_payload(info)[:-32] + b"\x09" + info_payload(info)[-31:])


CE = TrainInfo(True, LossKind.CROSS_ENTROPY, 10, 2, 0.05, 0.05, 1, 16, 0)
MSE = TrainInfo(True, LossKind.MEAN_SQUARED_ERROR, 0, 12, 0.05, 0.05, 1, 16, 0)


def test_encode_label() -> None:
    assert encode_label(3, CE) == b"\x03\x00"
    assert encode_label(np.int64(9), CE) == b"\x09\x00"
    with pytest.raises(ValueError, match="outside"):
        encode_label(10, CE)
    assert encode_label(10, CE, check=False) == b"\x0a\x00"  # for firmware-side checks
    with pytest.raises(ValueError, match="u16"):
        encode_label(70000, CE, check=False)
    with pytest.raises(ValueError, match="one integer"):
        encode_label([1, 2], CE)
    assert encode_label([1.0, -2.5, 0.25], MSE) == struct.pack("<3f", 1.0, -2.5, 0.25)
    with pytest.raises(ValueError, match="targets"):
        encode_label([1.0, 2.0], MSE)
    with pytest.raises(ValueError, match="NaN"):
        encode_label([1.0, np.nan, 0.0], MSE)
    assert len(encode_label([1.0, np.nan, 0.0], MSE, check=False)) == 12
    with pytest.raises(ValueError, match="without a training scheme"):
        encode_label(1, TrainInfo())


def test_training_messages() -> None:
    assert train_payload(b"\x01\x02", b"\x03\x00") == b"\x01\x02\x03\x00"
    reply = struct.pack("<fHQ", 1.5, 7, 2**40 + 9)
    assert parse_train(reply) == TrainReply(1.5, 7, 2**40 + 9)
    with pytest.raises(ProtocolError, match="TRAIN/EVAL reply"):
        parse_train(reply[:-1])
    assert set_lr_payload(0.125) == struct.pack("<f", 0.125)
    assert parse_set_lr(struct.pack("<f", 0.125)) == 0.125
    with pytest.raises(ProtocolError):
        parse_set_lr(b"\x00")
    assert read_params_payload(4096, 100) == struct.pack("<II", 4096, 100)
    frame = Frame(int(RequestType.READ_PARAMS), 3, read_params_payload(1, 2))
    assert decode_all(encode_frame(frame)) == [frame]


def test_infer_and_error_replies() -> None:
    out, counter = parse_infer(b"\x01\x02\x03" + struct.pack("<Q", 2**40 + 3), 3)
    assert out == b"\x01\x02\x03" and counter == 2**40 + 3
    with pytest.raises(ProtocolError):
        parse_infer(b"\x01\x02", 3)
    err = Frame(0x7F, 4, struct.pack("<H", int(Status.BAD_SHAPE)) + b"payload of 3 bytes")
    with pytest.raises(DeviceError, match="BAD_SHAPE: payload of 3") as exc:
        check_reply(err, RequestType.INFER)
    assert exc.value.status == Status.BAD_SHAPE
    with pytest.raises(ProtocolError, match="reply type"):
        check_reply(Frame(0x81, 4, b""), RequestType.INFER)


def test_quantize_matches_tflite_rounding() -> None:
    desc = TensorDesc(DType.INT8, (6,), 0.5, -3, 6)
    x = np.array([0.25, -0.25, 0.75, 1000.0, -1000.0, 0.0], dtype=np.float32)
    # x / 0.5 = 0.5, -0.5, 1.5 round half away from zero -> 1, -1, 2; then +zp, clamp.
    assert quantize_input(x, desc).tolist() == [-2, -4, -1, 127, -128, -3]
    # Just below one half must round down (floor(x + 0.5) evaluated in float32 gives 1).
    below_half = np.nextafter(np.float32(0.5), np.float32(0))
    one = TensorDesc(DType.INT8, (1,), 1.0, 0, 1)
    assert quantize_input(np.array([below_half]), one).tolist() == [0]
    with pytest.raises(ValueError):
        quantize_input(np.array([np.nan], dtype=np.float32), one)
    q = np.array([-128, -3, 127], dtype=np.int8)
    assert dequantize_output(q, desc).tolist() == [-62.5, 0.0, 65.0]


# ---- the firmware's own COBS / CRC code ----


@pytest.fixture(scope="module")
def cobs_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.fail("host g++ is needed: apt-get install g++")
    out = tmp_path_factory.mktemp("cobs") / "cobs_tool"
    runtime = ROOT / "firmware" / "runtime"
    subprocess.run(
        [cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=undefined", f"-I{runtime}",
         str(ROOT / "test" / "fixtures" / "cobs_tool.cc"), str(runtime / "cobs.cc"),
         str(runtime / "crc32.cc"), "-o", str(out)],
        check=True,
    )
    return out


def run_tool(tool: Path, mode: str, data: bytes) -> bytes:
    return subprocess.run([str(tool), mode], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize("payload", COBS_CASES, ids=lambda p: f"{len(p)}B")
def test_firmware_cobs_matches_python(cobs_tool: Path, payload: bytes) -> None:
    assert run_tool(cobs_tool, "e", payload) == b"\x00" + cobs.encode(payload) + b"\x00"
    line = b"\x00" + cobs.encode(payload) + b"\x00"
    assert run_tool(cobs_tool, "d", line).decode() == f"END {payload.hex()}\n"


def test_firmware_cobs_decoder_streams(cobs_tool: Path) -> None:
    frames = [b"abc", b"\x00\x00", b"\x07" * 300]
    line = b"".join(b"\x00" + cobs.encode(f) + b"\x00" for f in frames)
    # A frame cut inside a block is reported as broken; the following frame still decodes.
    cut = b"\x00\x05ab" + line
    out = run_tool(cobs_tool, "d", cut).decode().splitlines()
    assert out == ["BROKEN 6162"] + [f"END {f.hex()}" for f in frames]


@pytest.mark.parametrize("data", [b"", b"hello", bytes(range(256)) * 40])
def test_firmware_crc32_matches_zlib(cobs_tool: Path, data: bytes) -> None:
    assert run_tool(cobs_tool, "c", data).decode().strip() == f"{zlib.crc32(data):08x}"
