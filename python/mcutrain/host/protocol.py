"""Host side of the serial protocol (mirror of firmware/runtime/protocol.h).

Line format: every frame is COBS-encoded and wrapped in 0x00 delimiters, ``00 COBS(frame) 00``.
The leading delimiter ends any partial frame before it, so a frame always parses after garbage;
two delimiters in a row are an idle line.

Decoded frame, little-endian::

    u8 version (=1) | u8 type | u16 seq | u32 payload_len | payload | u32 crc32

``crc32`` is zlib's CRC-32 of every byte before it. A reply echoes the request's ``seq`` and has
type ``request | 0x80``; an error reply has type ``0x7F`` and payload ``u16 status | ascii``.

Requests: 0x01 INFO (empty payload), 0x02 INFER (int8 input tensor bytes; reply = output tensor
bytes + u64 counter delta). Training (served only by firmware built with a scheme; otherwise an
UNKNOWN_REQUEST error that says so):

    0x03 TRAIN        input tensor bytes + label (u16 class or f32 targets)
                      -> f32 loss | u16 prediction | u64 counter delta
    0x04 EVAL         as TRAIN, nothing updated
    0x05 RESET        empty -> empty (parameters, PRNG, learning rate back to defaults)
    0x06 SET_LR       f32 -> f32 rate in effect (NOT_FINITE for NaN, inf, negative)
    0x07 READ_PARAMS  u32 offset | u32 length -> that slice of the trainable state
    0x08 ROWS         only while firmware that pulls its input (INFO input_pulled) runs a
                      request: INFER then carries no payload and TRAIN/EVAL only the label; the
                      firmware sends 0x88 NEED_ROWS (u32 first_row | u32 rows, the request's
                      seq) and the host answers ROWS with exactly those rows of the input

    0x09 PROFILE      empty -> u32 steps | steps x u32 counter deltas of the last INFER or
                      TRAIN, one per schedule step, and in a training build then one for the
                      loss and one per backward step (0 steps unless built with
                      custom_profile = on; mcutrain.host.profile labels them)

INFO reply payload (version 1)::

    u8 protocol_version | u8 counter_unit (0 cycles, 1 instructions) | u16 max_small_payload |
    u32 request_mask | u8 n, board name | u8 n, model name | 32 bytes model SHA-256 |
    u32 arena_bytes | u32 weight_bytes | u64 macs | tensor input | tensor output |
    u32 stack_used_bytes (deepest stack use so far) | u32 stack_size_bytes (0 = not measured) |
    u8 train_enabled | u8 loss | u16 num_classes | u32 label_bytes | f32 default_lr |
    f32 current_lr | u32 seed | u32 state_bytes | u64 backward_macs | u8 input_pulled

    tensor = u8 dtype | u8 rank | rank x i32 dims | f32 scale | i32 zero_point | u32 bytes
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cobs import cobs

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHI")
CRC = struct.Struct("<I")
REPLY_FLAG = 0x80
ERROR_REPLY = 0x7F
DELIMITER = b"\x00"
# Host-side guard against a line that never delimits (a wrong baud rate, a stuck device).
MAX_FRAME_BYTES = 16 * 1024 * 1024


class RequestType(enum.IntEnum):
    INFO = 0x01
    INFER = 0x02
    TRAIN = 0x03
    EVAL = 0x04
    RESET = 0x05
    SET_LR = 0x06
    READ_PARAMS = 0x07
    ROWS = 0x08
    PROFILE = 0x09


class Status(enum.IntEnum):
    """mt::Status (firmware/runtime/status.h); values travel in ERROR replies."""

    OK = 0
    BAD_FRAME = 1
    BAD_CRC = 2
    BAD_VERSION = 3
    BAD_LENGTH = 4
    TOO_LONG = 5
    UNKNOWN_REQUEST = 6
    BAD_SHAPE = 7
    BAD_LABEL = 8
    TIMEOUT = 9
    NOT_FINITE = 10
    INTERNAL = 11


class CounterUnit(enum.IntEnum):
    CYCLES = 0
    INSTRUCTIONS = 1


class LossKind(enum.IntEnum):
    """mt::LossKind (firmware/runtime/model.h)."""

    NONE = 0
    CROSS_ENTROPY = 1
    MEAN_SQUARED_ERROR = 2


class DType(enum.IntEnum):
    INT8 = 1
    INT32 = 2
    FLOAT32 = 3


DTYPE_NUMPY = {DType.INT8: "int8", DType.INT32: "int32", DType.FLOAT32: "float32"}


class ProtocolError(Exception):
    """The bytes on the line do not form a valid frame or the reply is not what was asked."""


class DeviceError(Exception):
    """The firmware answered with an ERROR reply."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        try:
            name = Status(status).name
        except ValueError:
            name = f"status {status}"
        super().__init__(f"device error {name}: {message}")


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class TensorDesc:
    dtype: DType
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    nbytes: int


@dataclass(frozen=True)
class TrainInfo:
    """mt::TrainDesc plus the learning rate in effect, as reported by INFO."""

    enabled: bool = False
    loss: LossKind = LossKind.NONE
    num_classes: int = 0
    label_bytes: int = 0
    default_lr: float = 0.0
    current_lr: float = 0.0
    seed: int = 0
    state_bytes: int = 0
    backward_macs: int = 0


TRAIN_INFO = struct.Struct("<BBHIffIIQ")


@dataclass(frozen=True)
class TrainReply:
    """Reply to TRAIN or EVAL."""

    loss: float
    prediction: int
    counter: int


TRAIN_REPLY = struct.Struct("<fHQ")


@dataclass(frozen=True)
class DeviceInfo:
    protocol_version: int
    counter_unit: CounterUnit
    max_small_payload: int
    request_mask: int
    board: str
    model: str
    model_sha256: bytes
    arena_bytes: int
    weight_bytes: int
    macs: int
    input: TensorDesc
    output: TensorDesc
    stack_used_bytes: int = 0
    stack_size_bytes: int = 0
    train: TrainInfo = TrainInfo()
    input_pulled: bool = False  # the input is sent in ROWS answers, not with the request

    def serves(self, request: RequestType) -> bool:
        return bool(self.request_mask >> int(request) & 1)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


# ---- frames ----


def frame_bytes(frame: Frame) -> bytes:
    """Decoded frame bytes (header, payload, CRC), before COBS."""
    body = HEADER.pack(frame.version, frame.type, frame.seq, len(frame.payload)) + frame.payload
    return body + CRC.pack(zlib.crc32(body))


def encode_frame(frame: Frame) -> bytes:
    """Line bytes of a frame: 00 COBS(frame) 00."""
    return DELIMITER + cobs.encode(frame_bytes(frame)) + DELIMITER


def parse_frame(data: bytes) -> Frame:
    """Checks and splits decoded frame bytes; raises ProtocolError."""
    if len(data) < HEADER.size + CRC.size:
        raise ProtocolError(f"frame of {len(data)} bytes is shorter than header + CRC")
    version, ftype, seq, payload_len = HEADER.unpack_from(data)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"frame has protocol version {version}, expected {PROTOCOL_VERSION}")
    if len(data) != HEADER.size + payload_len + CRC.size:
        raise ProtocolError(
            f"frame declares {payload_len} payload bytes but carries "
            f"{len(data) - HEADER.size - CRC.size}"
        )
    (crc,) = CRC.unpack_from(data, len(data) - CRC.size)
    if zlib.crc32(data[: -CRC.size]) != crc:
        raise ProtocolError("frame CRC mismatch")
    return Frame(ftype, seq, bytes(data[HEADER.size : -CRC.size]), version)


class FrameDecoder:
    """Streaming decoder of line bytes into frames.

    ``feed`` returns, in order, one item per complete frame: a Frame, or a ProtocolError for a
    frame that failed to decode (the caller decides whether to raise it).
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes
        self._overflow = False

    def feed(self, data: bytes) -> list[Frame | ProtocolError]:
        items: list[Frame | ProtocolError] = []
        start = 0
        while True:
            end = data.find(0, start)
            if end < 0:
                self._append(data[start:])
                return items
            self._append(data[start:end])
            item = self._finish()
            if item is not None:
                items.append(item)
            start = end + 1

    def _append(self, chunk: bytes) -> None:
        if self._overflow:
            return
        if len(self._buf) + len(chunk) > self._max:
            self._overflow = True
            self._buf.clear()
            return
        self._buf += chunk

    def _finish(self) -> Frame | ProtocolError | None:
        raw, overflow = bytes(self._buf), self._overflow
        self._buf.clear()
        self._overflow = False
        if overflow:
            return ProtocolError(f"frame longer than {self._max} bytes")
        if not raw:
            return None
        try:
            decoded = cobs.decode(raw)
        except cobs.DecodeError as exc:
            return ProtocolError(f"bad COBS encoding: {exc}")
        try:
            return parse_frame(decoded)
        except ProtocolError as exc:
            return exc


# ---- payloads ----


def tensor_desc_bytes(t: TensorDesc) -> bytes:
    out = struct.pack("<BB", int(t.dtype), len(t.shape))
    out += struct.pack(f"<{len(t.shape)}i", *t.shape)
    return out + struct.pack("<fiI", t.scale, t.zero_point, t.nbytes)


class _Reader:
    """Cursor over a payload that raises ProtocolError when it runs short."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"{self.what} payload truncated at byte {self.pos} (+{n})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))

    def string(self) -> str:
        (n,) = self.unpack("B")
        return self.take(n).decode("utf-8", errors="replace")

    def tensor(self) -> TensorDesc:
        dtype, rank = self.unpack("BB")
        shape = self.unpack(f"{rank}i")
        scale, zero_point, nbytes = self.unpack("fiI")
        try:
            dt = DType(dtype)
        except ValueError as exc:
            raise ProtocolError(f"{self.what}: unknown tensor dtype {dtype}") from exc
        return TensorDesc(dt, tuple(shape), scale, zero_point, nbytes)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.what} payload has {len(self.data) - self.pos} extra bytes")


def info_payload(info: DeviceInfo) -> bytes:
    """Packs an INFO reply payload (used by tests and fakes; the firmware does this in C++)."""
    board, model = info.board.encode(), info.model.encode()
    out = struct.pack(
        "<BBHI", info.protocol_version, int(info.counter_unit), info.max_small_payload,
        info.request_mask,
    )
    out += bytes([len(board)]) + board + bytes([len(model)]) + model + info.model_sha256
    out += struct.pack("<IIQ", info.arena_bytes, info.weight_bytes, info.macs)
    out += tensor_desc_bytes(info.input) + tensor_desc_bytes(info.output)
    out += struct.pack("<II", info.stack_used_bytes, info.stack_size_bytes)
    t = info.train
    return out + TRAIN_INFO.pack(
        int(t.enabled), int(t.loss), t.num_classes, t.label_bytes, t.default_lr, t.current_lr,
        t.seed, t.state_bytes, t.backward_macs,
    ) + bytes([int(info.input_pulled)])


def parse_info(payload: bytes) -> DeviceInfo:
    r = _Reader(payload, "INFO reply")
    version, unit, max_small, mask = r.unpack("BBHI")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"device speaks protocol version {version}, host {PROTOCOL_VERSION}")
    board = r.string()
    model = r.string()
    sha = r.take(32)
    arena, weights, macs = r.unpack("IIQ")
    inp = r.tensor()
    out = r.tensor()
    stack_used, stack_size = r.unpack("II")
    enabled, loss, classes, label_bytes, default_lr, lr, seed, state, bmacs = r.unpack(
        TRAIN_INFO.format[1:]
    )
    (pulled,) = r.unpack("B")
    r.done()
    try:
        counter_unit = CounterUnit(unit)
        loss_kind = LossKind(loss)
    except ValueError as exc:
        raise ProtocolError(f"INFO reply: unknown counter unit {unit} or loss {loss}") from exc
    train = TrainInfo(bool(enabled), loss_kind, classes, label_bytes, default_lr, lr, seed, state,
                      bmacs)
    return DeviceInfo(
        version, counter_unit, max_small, mask, board, model, sha, arena, weights, macs, inp, out,
        stack_used, stack_size, train, bool(pulled),
    )


def parse_infer(payload: bytes, output_bytes: int) -> tuple[bytes, int]:
    """Splits an INFER reply into output tensor bytes and the counter delta."""
    if len(payload) != output_bytes + 8:
        raise ProtocolError(
            f"INFER reply has {len(payload)} bytes, expected {output_bytes} output bytes + 8"
        )
    (counter,) = struct.unpack_from("<Q", payload, output_bytes)
    return payload[:output_bytes], counter


def parse_profile(payload: bytes) -> list[int]:
    """A PROFILE reply: the counter delta of each schedule step of the last inference."""
    if len(payload) < 4:
        raise ProtocolError(f"PROFILE reply has {len(payload)} bytes, expected at least 4")
    (steps,) = struct.unpack_from("<I", payload)
    if len(payload) != 4 + 4 * steps:
        raise ProtocolError(f"PROFILE reply has {len(payload)} bytes for {steps} steps, "
                            f"expected {4 + 4 * steps}")
    return list(struct.unpack_from(f"<{steps}I", payload, 4))


def encode_label(label: int | float | Sequence[float] | np.ndarray, train: TrainInfo, *,
                 check: bool = True) -> bytes:
    """Label bytes of a TRAIN/EVAL request: u16 class (cross-entropy) or f32 targets (mse).

    `check` refuses labels the firmware would refuse (class out of range, NaN targets) before
    they go on the line; tests turn it off to exercise the firmware's own checks."""
    if train.loss == LossKind.CROSS_ENTROPY:
        if isinstance(label, (bytes, bytearray)) or np.ndim(label) != 0:
            raise ValueError(f"classification label must be one integer, got {label!r}")
        value = int(label)  # type: ignore[arg-type]
        if check and not 0 <= value < train.num_classes:
            raise ValueError(f"label {value} outside [0, {train.num_classes})")
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"label {value} does not fit a u16")
        return struct.pack("<H", value)
    if train.loss == LossKind.MEAN_SQUARED_ERROR:
        targets = np.asarray(label, dtype=np.float32).reshape(-1)
        if targets.size * 4 != train.label_bytes:
            raise ValueError(
                f"{targets.size} regression targets, the model has {train.label_bytes // 4}"
            )
        if check and not np.all(np.isfinite(targets)):
            raise ValueError("regression targets contain NaN or infinity")
        return targets.astype("<f4").tobytes()
    raise ValueError("the firmware was built without a training scheme")


def train_payload(x: bytes, label: bytes) -> bytes:
    """TRAIN/EVAL request payload: input tensor bytes followed by the label."""
    return x + label


def parse_train(payload: bytes) -> TrainReply:
    if len(payload) != TRAIN_REPLY.size:
        raise ProtocolError(
            f"TRAIN/EVAL reply has {len(payload)} bytes, expected {TRAIN_REPLY.size}"
        )
    loss, prediction, counter = TRAIN_REPLY.unpack(payload)
    return TrainReply(loss, prediction, counter)


def set_lr_payload(lr: float) -> bytes:
    return struct.pack("<f", lr)


def parse_set_lr(payload: bytes) -> float:
    if len(payload) != 4:
        raise ProtocolError(f"SET_LR reply has {len(payload)} bytes, expected 4")
    return struct.unpack("<f", payload)[0]


def read_params_payload(offset: int, length: int) -> bytes:
    return struct.pack("<II", offset, length)


def parse_error(payload: bytes) -> DeviceError:
    if len(payload) < 2:
        return DeviceError(int(Status.BAD_FRAME), "ERROR reply without a status")
    (status,) = struct.unpack_from("<H", payload)
    return DeviceError(status, payload[2:].decode("ascii", errors="replace"))


def check_reply(frame: Frame, request: int) -> Frame:
    """Raises DeviceError for an ERROR reply and ProtocolError for an unexpected type."""
    if frame.type == ERROR_REPLY:
        raise parse_error(frame.payload)
    if frame.type != request | REPLY_FLAG:
        raise ProtocolError(
            f"reply type 0x{frame.type:02x} to request 0x{request:02x}, "
            f"expected 0x{request | REPLY_FLAG:02x}"
        )
    return frame
