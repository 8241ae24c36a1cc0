"""Malformed-traffic suite shared by the board tests (host process, QEMU, a real board).

`run_robustness_suite(device)` sends garbage, truncated frames, bad CRCs, wrong lengths, bad
versions, unknown types and stalled frames; each must get the right ERROR reply and the next
valid INFER must still give the same answer as before. Malformed training requests (wrong label
size, bad CRC, refused labels and learning rates, out-of-range READ_PARAMS) must leave the
trainable state byte for byte as it was; firmware without training must refuse them all.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable

import numpy as np
from cobs import cobs

from mcutrain.host.device import Device
from mcutrain.host.protocol import (
    ERROR_REPLY,
    PROTOCOL_VERSION,
    DeviceInfo,
    Frame,
    LossKind,
    RequestType,
    Status,
    encode_frame,
    encode_label,
    parse_error,
    read_params_payload,
    set_lr_payload,
)


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


def run_robustness_suite(dev: Device, *, stall_seconds: float = 3.0) -> None:
    """Throws malformed traffic at a board; each case must get the right ERROR reply and the
    next valid INFER must still answer with the reference output.

    `stall_seconds` is host time to wait for the firmware's inter-byte timeout (2 s of board
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
    check_training_requests(dev, info, good, check)

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


NO_TRAINING = "without a training scheme"


def check_training_requests(dev: Device, info: DeviceInfo, good: bytes,
                            check: Callable[..., None]) -> None:
    """Malformed and refused training requests; `check` is the suite's send-expect-still-serving
    helper. The trainable state must not change."""
    v = PROTOCOL_VERSION
    train, ev = int(RequestType.TRAIN), int(RequestType.EVAL)
    if not info.train.enabled:
        for rtype, payload in ((train, good + b"\x00\x00"), (ev, good + b"\x00\x00"),
                               (int(RequestType.RESET), b""),
                               (int(RequestType.SET_LR), set_lr_payload(0.1)),
                               (int(RequestType.READ_PARAMS), read_params_payload(0, 0))):
            dev.send_raw(raw_line(v, rtype, 120, payload))
            frame = dev.read_frame(f"the error reply to request {rtype:#x}")
            err = parse_error(frame.payload)
            assert frame.type == ERROR_REPLY and err.status == Status.UNKNOWN_REQUEST, err
            assert NO_TRAINING in err.message, err.message
        return

    t = info.train
    before = dev.read_params()
    if t.loss == LossKind.CROSS_ENTROPY:
        label = encode_label(0, t)
        refused = encode_label(t.num_classes, t, check=False)
        refused_status = Status.BAD_LABEL
    else:
        label = encode_label(np.zeros(t.label_bytes // 4, dtype=np.float32), t)
        refused = encode_label(np.full(t.label_bytes // 4, np.nan, dtype=np.float32), t,
                               check=False)
        refused_status = Status.NOT_FINITE
    sample = good + label
    check("TRAIN with a wrong CRC", raw_line(v, train, 121, sample, crc_xor=1), {Status.BAD_CRC},
          121)
    check("TRAIN with a label byte too many", raw_line(v, train, 122, sample + b"\x00"),
          {Status.BAD_SHAPE}, 122)
    check("TRAIN with a label byte too few", raw_line(v, train, 123, sample[:-1]),
          {Status.BAD_SHAPE}, 123)
    check("TRAIN without a label", raw_line(v, train, 124, good), {Status.BAD_SHAPE}, 124)
    check("TRAIN shorter than declared", raw_line(v, train, 125, sample[:-1],
                                                  declared=len(sample)), {Status.BAD_LENGTH}, 125)
    check("TRAIN with a refused label", raw_line(v, train, 126, good + refused),
          {refused_status}, 126)
    check("EVAL with a refused label", raw_line(v, ev, 127, good + refused), {refused_status}, 127)
    check("SET_LR NaN", raw_line(v, int(RequestType.SET_LR), 128, set_lr_payload(float("nan"))),
          {Status.NOT_FINITE}, 128)
    check("SET_LR negative", raw_line(v, int(RequestType.SET_LR), 129, set_lr_payload(-1.0)),
          {Status.NOT_FINITE}, 129)
    check("SET_LR short", raw_line(v, int(RequestType.SET_LR), 130, b"\x00\x00"),
          {Status.BAD_LENGTH}, 130)
    check("RESET with a payload", raw_line(v, int(RequestType.RESET), 131, b"\x01"),
          {Status.BAD_LENGTH}, 131)
    rp = int(RequestType.READ_PARAMS)
    check("READ_PARAMS past the end", raw_line(v, rp, 132, read_params_payload(0,
                                                                               t.state_bytes + 1)),
          {Status.BAD_LENGTH}, 132)
    check("READ_PARAMS wrapping offset", raw_line(v, rp, 133, read_params_payload(0xFFFFFFFF, 2)),
          {Status.BAD_LENGTH}, 133)
    # A valid EVAL reads the state but must not change it either.
    dev.request(ev, sample)
    assert dev.read_params() == before, "malformed training requests changed the trainable state"
    assert dev.info().train.current_lr == t.current_lr, "refused SET_LR changed the rate"
