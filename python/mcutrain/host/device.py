"""Talking to a board running the firmware: open a port, send requests, check replies.

Ports (``open_device``):
  ``/dev/ttyACM0``                     a serial device at 115200 baud (the DISCO's ST-LINK VCP)
  ``socket://``, ``rfc2217://``, ...   any pyserial URL
  ``qemu`` / ``qemu:PATH.elf``         the emulated board (mcutrain.host.qemu): the PlatformIO
                                       project's .pio/build/qemu/firmware.elf, or PATH
  ``host:PATH``                        the host-process firmware at PATH, over its stdin/stdout
"""

from __future__ import annotations

import os
import select
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .protocol import (
    DTYPE_NUMPY,
    REPLY_FLAG,
    DeviceError,
    DeviceInfo,
    DType,
    Frame,
    FrameDecoder,
    ProtocolError,
    RequestType,
    TensorDesc,
    TrainReply,
    check_reply,
    encode_frame,
    encode_label,
    parse_infer,
    parse_info,
    parse_profile,
    parse_set_lr,
    parse_train,
    read_params_payload,
    set_lr_payload,
    train_payload,
)

BAUD_RATE = 115200
# READ_PARAMS slice size: small enough that one reply never stalls a slow link for long.
PARAMS_CHUNK_BYTES = 4096
# The source tree this module runs from: firmware sources for build_host_firmware (tests). Never
# where a user's ELF is: that is their project (open_device's project_dir, or the cwd).
PROJECT_DIR = Path(__file__).resolve().parents[3]

__all__ = [
    "Device", "DeviceError", "DeviceGone", "DeviceTimeout", "ProtocolError", "TrainReply",
    "build_host_firmware", "dequantize_output", "open_device", "quantize_input",
]


class DeviceTimeout(TimeoutError):
    """No (complete) reply arrived in time."""

    def __init__(self, port: str, awaited: str, timeout: float) -> None:
        super().__init__(f"timeout after {timeout:g} s on {port} waiting for {awaited}")


class DeviceGone(ConnectionError):
    """The port closed or the firmware process exited."""


class Transport(Protocol):
    name: str

    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes:
        """Bytes that arrived within `timeout` seconds (b"" if none); DeviceGone on close."""
        ...

    def close(self) -> None: ...


class SerialTransport:
    """A serial device path or pyserial URL."""

    def __init__(self, port: str) -> None:
        import serial

        self.name = port
        self._serial_exc = serial.SerialException
        try:
            self._ser = serial.serial_for_url(port, baudrate=BAUD_RATE, timeout=0.1)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DeviceGone(f"cannot open {port}: {exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
            self._ser.flush()
        except (self._serial_exc, OSError) as exc:
            raise DeviceGone(f"{self.name}: write failed: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        try:
            self._ser.timeout = max(timeout, 0.0)
            data = self._ser.read(1)
            waiting = self._ser.in_waiting if data else 0
            return data + (self._ser.read(waiting) if waiting else b"")
        except (self._serial_exc, OSError) as exc:
            raise DeviceGone(f"{self.name}: port vanished: {exc}") from exc

    def close(self) -> None:
        self._ser.close()


class ProcessTransport:
    """The host-process firmware, spoken to over its stdin/stdout pipes."""

    def __init__(self, path: str) -> None:
        self.name = f"host:{path}"
        if not os.access(path, os.X_OK):
            raise DeviceGone(f"host firmware {path} is not an executable file")
        self._proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _gone(self, what: str) -> DeviceGone:
        code = self._proc.poll()
        state = f"exited with code {code}" if code is not None else "closed its pipe"
        return DeviceGone(f"{self.name}: firmware process {state} ({what})")

    def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise self._gone("write") from exc

    def read(self, timeout: float) -> bytes:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        if not ready:
            return b""
        data = os.read(fd, 65536)
        if not data:
            self._proc.wait(timeout=5)
            raise self._gone("read")
        return data

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            try:
                self._proc.stdin.close()  # end of file: the firmware exits by itself
            except BrokenPipeError:
                pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class Device:
    """Request/response session with one board. Use as a context manager."""

    def __init__(self, transport: Transport, timeout: float, on_close: object = None) -> None:
        self.transport = transport
        self.port = transport.name
        self.timeout = timeout
        self._decoder = FrameDecoder()
        self._pending: list[Frame | ProtocolError] = []
        self._seq = 0
        self._on_close = on_close
        self._info: DeviceInfo | None = None
        self.description = transport.name  # which board, for the user
        self.elf: Path | None = None  # the firmware image, when the host knows it (QEMU)
        self.stale_frames = 0  # replies discarded because their seq was not the awaited one

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.transport.close()
        finally:
            closer = getattr(self._on_close, "close", None)
            if callable(closer):
                closer()

    # ---- frame level ----

    def next_seq(self) -> int:
        self._seq = self._seq % 0xFFFF + 1  # 1..65535: error replies to headerless frames use 0
        return self._seq

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    def read_frame(self, awaited: str, timeout: float | None = None) -> Frame:
        """Next frame from the line; ProtocolError if it does not decode."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeviceTimeout(self.port, awaited, limit)
            self._pending.extend(self._decoder.feed(self.transport.read(min(left, 0.5))))
        item = self._pending.pop(0)
        if isinstance(item, ProtocolError):
            raise ProtocolError(f"{self.port}: {item}")
        return item

    def request(self, rtype: int, payload: bytes = b"", timeout: float | None = None,
                pulled: np.ndarray | None = None) -> Frame:
        """Sends one request and returns its checked reply (DeviceError for an ERROR reply).
        `pulled` is the input of firmware that pulls it (DeviceInfo.input_pulled): each of its
        NEED_ROWS frames is answered with those rows, and the deadline starts again."""
        seq = self.next_seq()
        self.send_raw(encode_frame(Frame(rtype, seq, payload)))
        name = _request_name(rtype)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        awaited = f"the reply to {name} (seq {seq})"
        damaged: ProtocolError | None = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if damaged is not None:
                    raise ProtocolError(f"{self.port}: no valid reply to {name}; {damaged}")
                raise DeviceTimeout(self.port, awaited, limit)
            try:
                frame = self.read_frame(awaited, left)
            except DeviceTimeout:
                continue  # the deadline check above reports it, naming any damaged frame
            except ProtocolError as exc:
                # A damaged frame may have been our reply: keep waiting for the deadline, then
                # report the damage rather than a bare timeout.
                damaged = exc
                self.stale_frames += 1
                continue
            if frame.seq != seq:
                self.stale_frames += 1
                continue
            if pulled is not None and frame.type == RequestType.ROWS | REPLY_FLAG:
                self.send_raw(encode_frame(Frame(RequestType.ROWS, seq,
                                                 pulled_rows(frame.payload, pulled))))
                deadline = time.monotonic() + limit
                continue
            return check_reply(frame, rtype)

    # ---- requests ----

    def info(self) -> DeviceInfo:
        self._info = parse_info(self.request(RequestType.INFO).payload)
        return self._info

    @property
    def cached_info(self) -> DeviceInfo:
        return self._info if self._info is not None else self.info()

    def infer(self, x_int8: np.ndarray) -> tuple[np.ndarray, int]:
        """One inference: int8 input of the model's input shape -> (output array, counter delta)."""
        info = self.cached_info
        check_input_shape(x_int8, info.input)
        if x_int8.dtype != np.int8:
            raise ValueError(f"infer needs int8 input, got {x_int8.dtype} (use quantize_input)")
        x = np.ascontiguousarray(x_int8).reshape(info.input.shape)
        if info.input_pulled:
            frame = self.request(RequestType.INFER, b"", pulled=x)
        else:
            frame = self.request(RequestType.INFER, x.tobytes())
        data, counter = parse_infer(frame.payload, info.output.nbytes)
        out = np.frombuffer(data, dtype=DTYPE_NUMPY[info.output.dtype]).reshape(info.output.shape)
        return out.copy(), counter

    def profile(self) -> list[int]:
        """Counter deltas of each schedule step of the last inference (report.json
        "operators"); empty unless the firmware was built with custom_profile = on."""
        return parse_profile(self.request(RequestType.PROFILE, b"").payload)

    # ---- training (firmware built with a scheme) ----

    def _sample_request(self, rtype: RequestType, x_int8: np.ndarray, label: object) -> Frame:
        info = self.cached_info
        check_input_shape(x_int8, info.input)
        if x_int8.dtype != np.int8:
            raise ValueError(f"training needs int8 input, got {x_int8.dtype} (use quantize_input)")
        label_bytes = encode_label(label, info.train)  # type: ignore[arg-type]
        x = np.ascontiguousarray(x_int8).reshape(info.input.shape)
        if info.input_pulled:
            return self.request(rtype, label_bytes, pulled=x)
        return self.request(rtype, train_payload(x.tobytes(), label_bytes))

    def train(self, x_int8: np.ndarray, label: int | float | np.ndarray) -> TrainReply:
        """One training step: int class (cross-entropy) or float targets (mse)."""
        return parse_train(self._sample_request(RequestType.TRAIN, x_int8, label).payload)

    def eval(self, x_int8: np.ndarray, label: int | float | np.ndarray) -> TrainReply:
        """Forward pass and loss without any update."""
        return parse_train(self._sample_request(RequestType.EVAL, x_int8, label).payload)

    def reset(self) -> None:
        """Trainable parameters, PRNG and learning rate back to the flashed defaults."""
        self.request(RequestType.RESET)

    def set_lr(self, lr: float) -> float:
        """Sets the learning rate; returns the rate now in effect (float32)."""
        return parse_set_lr(self.request(RequestType.SET_LR, set_lr_payload(lr)).payload)

    def read_params_slice(self, offset: int, length: int) -> bytes:
        frame = self.request(RequestType.READ_PARAMS, read_params_payload(offset, length))
        if len(frame.payload) != length:
            raise ProtocolError(
                f"READ_PARAMS reply has {len(frame.payload)} bytes, asked for {length}"
            )
        return frame.payload

    def read_params(self, chunk: int = PARAMS_CHUNK_BYTES) -> bytes:
        """The whole trainable state block (layout in the build's report.json)."""
        total = self.cached_info.train.state_bytes
        if total == 0:  # lets firmware without training say so rather than return nothing
            return self.read_params_slice(0, 0)
        parts = [self.read_params_slice(off, min(chunk, total - off))
                 for off in range(0, total, chunk)]
        return b"".join(parts)


def pulled_rows(need: bytes, x: np.ndarray) -> bytes:
    """The ROWS answer to a NEED_ROWS payload (u32 first_row | u32 rows) from the NHWC input."""
    if len(need) != 8:
        raise ProtocolError(f"NEED_ROWS has {len(need)} payload bytes, expected 8")
    first, rows = struct.unpack("<II", need)
    if rows == 0 or first + rows > x.shape[1]:
        raise ProtocolError(f"NEED_ROWS asks for rows {first}..{first + rows - 1} of an input "
                            f"with {x.shape[1]}")
    return x[:, first:first + rows].tobytes()


def _request_name(rtype: int) -> str:
    try:
        return RequestType(rtype).name
    except ValueError:
        return f"request 0x{rtype:02x}"


def check_input_shape(x: np.ndarray, desc: TensorDesc) -> None:
    """Accepts the model's shape, or the same without a leading batch dimension of 1."""
    shape = tuple(x.shape)
    if shape == desc.shape or (desc.shape[:1] == (1,) and shape == desc.shape[1:]):
        return
    raise ValueError(f"input shape {shape} does not match the model input {desc.shape}")


# ---- quantization (exactly TFLite's QUANTIZE / DEQUANTIZE reference kernels) ----


def quantize_input(x: np.ndarray, desc: TensorDesc) -> np.ndarray:
    """float -> int8 like TFLite QUANTIZE: round(x / scale) in float32, half away from zero,
    plus zero point, clamped to [-128, 127]."""
    return np.clip(_quantize_unclamped(x, desc), -128, 127).astype(np.int8)


def saturated_fraction(x: np.ndarray, desc: TensorDesc) -> float:
    """Fraction of the values of `x` that quantize_input clamps to -128 or 127 because they lie
    outside the float range the int8 input represents (input_range)."""
    q = _quantize_unclamped(x, desc)
    return float(np.mean((q < -128) | (q > 127))) if q.size else 0.0


def input_range(desc: TensorDesc) -> tuple[float, float]:
    """The float values of int8 -128 and 127 for the input tensor `desc`."""
    return (-128 - desc.zero_point) * desc.scale, (127 - desc.zero_point) * desc.scale


def _quantize_unclamped(x: np.ndarray, desc: TensorDesc) -> np.ndarray:
    if desc.dtype != DType.INT8 or desc.scale == 0:
        raise ValueError("model input is not a quantized int8 tensor")
    xf = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(xf)):
        raise ValueError("input contains NaN or infinity")
    q = (xf / np.float32(desc.scale)).astype(np.float64)  # the division is float32, like C++
    rounded = np.sign(q) * np.floor(np.abs(q) + 0.5)  # exact in float64 for float32 values
    return rounded + desc.zero_point


def dequantize_output(q: np.ndarray, desc: TensorDesc) -> np.ndarray:
    """int8 -> float like TFLite DEQUANTIZE: float(double(scale) * (q - zero_point))."""
    diff = q.astype(np.int32) - desc.zero_point
    return (np.float64(np.float32(desc.scale)) * diff).astype(np.float32)


# ---- opening ----


def is_qemu_port(port: str) -> bool:
    return port == "qemu" or port.startswith("qemu:")


def open_device(port: str, timeout: float = 30.0, *, keep_board: bool = False,
                project_dir: Path | str | None = None) -> Device:
    """Opens `port` (see module docstring); `timeout` bounds the wait for each reply.

    For `qemu`, the ELF is `<project_dir>/.pio/build/qemu/firmware.elf` (default: the current
    directory). By default the emulated board is private and stops on close; with `keep_board`
    it is the board kept between commands (mcutrain.host.kept_board), paused on close."""
    if is_qemu_port(port):
        from .qemu import resolve_elf

        elf = resolve_elf(port, project_dir)
        return _open_kept_qemu(elf, timeout) if keep_board else _open_private_qemu(elf, timeout)
    if port.startswith("host:"):
        return Device(ProcessTransport(port[len("host:"):]), timeout)
    return Device(SerialTransport(port), timeout)


def _open_private_qemu(elf: Path, timeout: float) -> Device:
    from .qemu import QemuBoard

    board = QemuBoard(elf)
    try:
        device = Device(SerialTransport(board.url), timeout, on_close=board)
    except BaseException:
        board.close()
        raise
    device.description = f"private emulated board, firmware {elf}"
    device.elf = elf
    return device


def _open_kept_qemu(elf: Path, timeout: float) -> Device:
    from .kept_board import BoardSession

    session = BoardSession(elf)
    try:
        transport = SerialTransport(session.url)
        try:
            session.resume()
        except BaseException:
            transport.close()
            raise
    except BaseException:
        session.close()
        raise
    device = Device(transport, timeout, on_close=session)
    device.description = session.description
    device.elf = session.elf
    return device


# ---- host-process firmware ----


@dataclass(frozen=True)
class HostBuild:
    path: Path
    command: list[str]


def build_host_firmware(
    generated_dir: Path | str,
    out: Path | str,
    *,
    sanitize: bool = True,
    include_kernels: bool = True,
    werror: bool = False,
    project_dir: Path = PROJECT_DIR,
    extra_sources: tuple[Path, ...] = (),
) -> HostBuild:
    """Compiles the firmware for the host board (firmware/bsp/host) with the host g++.

    Sources: firmware/runtime/*.cc, firmware/kernels/*.cc (unless include_kernels is False),
    firmware/bsp/host/*.cc, <generated_dir>/*.cc and extra_sources. Raises RuntimeError with the
    compiler output on failure. werror turns warnings into errors (tests build with it, so a
    warning in the firmware or the generated code fails them)."""
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no host C++ compiler (g++) on PATH")
    fw = project_dir / "firmware"
    dirs = [fw / "runtime", fw / "bsp" / "host", Path(generated_dir)]
    if include_kernels:
        dirs.insert(1, fw / "kernels")
    sources = [str(p) for d in dirs for p in sorted(d.glob("*.cc"))]
    sources += [str(p) for p in extra_sources]
    includes = ["-I" + str(d) for d in (fw / "runtime", fw / "kernels", fw / "bsp", fw)]
    flags = ["-std=c++17", "-O1", "-g", "-Wall", "-Wextra", "-fno-exceptions", "-fno-rtti"]
    if werror:
        flags.append("-Werror")
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [compiler, *flags, *includes, *sources, "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"host firmware build failed:\n{' '.join(cmd)}\n{proc.stderr}")
    return HostBuild(out, cmd)
