"""Firmware that pulls its input from the host row by row (custom_input = rows, docs/memory.md)
on the emulated board: outputs byte-identical to TFLite Micro and to the whole-input firmware, and
every bad answer to a pull (corrupt, mis-sized, late, another request, another seq) ends the
request with an ERROR reply, changes no trained weight, and leaves the board serving."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from firmware_support import build_firmware, tflm_reference
from mcutrain.compile.compiler import compile_model
from mcutrain.compile.reference import run_reference
from mcutrain.frontend.graph import ModelError
from mcutrain.host.device import Device, open_device
from mcutrain.host.protocol import (
    CRC,
    DELIMITER,
    ERROR_REPLY,
    HEADER,
    REPLY_FLAG,
    DeviceError,
    Frame,
    RequestType,
    Status,
    encode_frame,
    frame_bytes,
    parse_error,
)

ROOT = Path(__file__).resolve().parents[1]
WAND = ROOT / "models" / "third_party" / "arduino_magic_wand_int8.tflite"
MOBILENET = ROOT / "models" / "mobilenetv2_w035_128_int8.tflite"
LAST2 = ROOT / "test" / "fixtures" / "schemes" / "last2.json"


@pytest.fixture(scope="module")
def wand_board():
    elf = build_firmware(WAND, scheme=LAST2, input_rows=True)
    with open_device(f"qemu:{elf}", timeout=30) as board:
        yield board


def inputs(path: Path, count: int, seed: int) -> list[np.ndarray]:
    model = compile_model(path)
    shape = model.graph.tensors[model.input].shape
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(count)]


@pytest.mark.parametrize("path", [WAND, MOBILENET], ids=["magic_wand", "mobilenetv2"])
def test_pulled_input_gives_tflm_outputs(path: Path) -> None:
    model = compile_model(path, pull_input=True)
    whole = compile_model(path)
    assert any(s.pulled is not None for s in model.streams)
    assert model.arena_bytes < whole.arena_bytes  # the input no longer sits whole in SRAM
    xs = inputs(path, 2 if path == WAND else 1, seed=5)
    expected = tflm_reference(path, xs)
    with open_device(f"qemu:{build_firmware(path, input_rows=True)}", timeout=60) as board:
        info = board.info()
        assert info.input_pulled and info.arena_bytes >= model.arena_bytes
        for x, want in zip(xs, expected, strict=True):
            got, _ = board.infer(x)
            np.testing.assert_array_equal(got.ravel(), want.ravel())
            np.testing.assert_array_equal(got.ravel(), run_reference(model, x).ravel())


def frame(rtype: int, seq: int, payload: bytes, crc_flip: int = 0) -> bytes:
    body = HEADER.pack(1, rtype, seq, len(payload)) + payload
    return DELIMITER + cobs.encode(body + CRC.pack(zlib.crc32(body) ^ crc_flip)) + DELIMITER


def start_pull(board: Device, rtype: RequestType, payload: bytes) -> tuple[int, int, int]:
    """Sends a request and reads its first NEED_ROWS: (seq, first row, rows)."""
    seq = board.next_seq()
    board.send_raw(encode_frame(Frame(rtype, seq, payload)))
    need = board.read_frame("NEED_ROWS", 30)
    assert need.type == RequestType.ROWS | REPLY_FLAG and need.seq == seq, need
    first, rows = struct.unpack("<II", need.payload)
    return seq, first, rows


def error_of(board: Device, seq: int | None, timeout: float = 30) -> Status:
    """The ERROR reply the board sends next (for `seq`, or any when None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = board.read_frame("an ERROR reply", timeout)
        if reply.type == ERROR_REPLY and (seq is None or reply.seq == seq):
            return parse_error(reply.payload).status
    raise AssertionError("no ERROR reply")


def row_bytes(board: Device) -> int:
    _, _, w, c = board.cached_info.input.shape
    return w * c


def hostile_answers(board: Device, seq: int, rows: int) -> dict[str, tuple[bytes, Status, float]]:
    good = bytes(rows * row_bytes(board))
    return {
        "bad_crc": (frame(RequestType.ROWS, seq, good, crc_flip=1), Status.BAD_CRC, 30),
        "too_short": (frame(RequestType.ROWS, seq, good[:-1]), Status.BAD_SHAPE, 30),
        "too_long": (frame(RequestType.ROWS, seq, good + b"\x01"), Status.BAD_SHAPE, 30),
        "other_request": (frame(RequestType.INFO, seq, b""), Status.UNKNOWN_REQUEST, 30),
        "other_seq": (frame(RequestType.ROWS, (seq + 7) % 0xFFFF + 1, good), Status.BAD_FRAME,
                      30),
        "cut_off": (frame(RequestType.ROWS, seq, good)[:-40], Status.TIMEOUT, 30),
        "no_answer": (b"", Status.TIMEOUT, 30),
    }


@pytest.mark.parametrize("case", ["bad_crc", "too_short", "too_long", "other_request",
                                  "other_seq", "cut_off", "no_answer"])
@pytest.mark.parametrize("rtype", [RequestType.INFER, RequestType.TRAIN])
def test_a_bad_answer_ends_the_request_and_changes_nothing(wand_board: Device, case: str,
                                                           rtype: RequestType) -> None:
    board = wand_board
    x = inputs(WAND, 1, seed=9)[0]
    before = board.read_params()
    label = struct.pack("<H", 1) if rtype == RequestType.TRAIN else b""
    seq, first, rows = start_pull(board, rtype, label)
    assert first == 0 and rows >= 1
    data, status, timeout = hostile_answers(board, seq, rows)[case]
    board.send_raw(data)
    assert error_of(board, seq, timeout) == status, case
    assert board.read_params() == before, f"{case}: the trainable state changed"
    # The board serves again, and gives the right answer.
    got, _ = board.infer(x)
    np.testing.assert_array_equal(got.ravel(), tflm_reference(WAND, [x])[0].ravel())


def test_rows_outside_a_pull_are_refused(wand_board: Device) -> None:
    with pytest.raises(DeviceError, match="UNKNOWN_REQUEST"):
        wand_board.request(RequestType.ROWS, bytes(row_bytes(wand_board)))
    with pytest.raises(DeviceError, match="BAD_SHAPE"):  # INFER carries no input now
        wand_board.request(RequestType.INFER, bytes(32 * 32 * 3))


def test_training_with_pulled_input_equals_whole_input(wand_board: Device) -> None:
    whole = build_firmware(WAND, scheme=LAST2)
    xs = inputs(WAND, 3, seed=13)
    with open_device(f"qemu:{whole}", timeout=30) as reference:
        reference.reset()
        wand_board.reset()
        for i, x in enumerate(xs):
            a, b = wand_board.train(x, i % 3), reference.train(x, i % 3)
            assert (a.loss, a.prediction) == (b.loss, b.prediction)
            assert wand_board.read_params() == reference.read_params()


def test_a_model_whose_input_cannot_be_pulled_is_refused_in_one_line() -> None:
    with pytest.raises(ModelError) as err:
        compile_model(ROOT / "models" / "har_cnn1d_int8.tflite", pull_input=True)
    message = str(err.value)
    assert "\n" not in message and "operator 0 (RESHAPE)" in message
    assert "custom_input = rows" in message


def test_frame_helper_matches_the_protocol() -> None:
    assert frame(RequestType.INFO, 3, b"") == encode_frame(Frame(RequestType.INFO, 3, b""))
    assert frame_bytes(Frame(RequestType.INFO, 3, b""))[:HEADER.size] == HEADER.pack(1, 1, 3, 0)
