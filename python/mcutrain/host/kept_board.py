"""The emulated board kept alive between `mcutrain` commands, like a real board keeps its RAM.

A real board keeps the trained weights until it is reset or reflashed; a QEMU started per command
would forget them. So the first `--port qemu` command starts one QEMU per ELF, detached in its own
session, and records it next to the ELF (`<elf>.board.json`: pid, ports, ELF sha256); later
commands find it there and reconnect. QEMU's TCP serial server accepts a new client after the
previous one left, so the guest never notices. Between commands the guest is paused through QMP
(`stop` / `cont`): the firmware busy-polls its UART, and a running idle guest would burn a host
core. A rebuilt ELF (other sha256) restarts the board, as flashing a real one resets it; a
record whose process is gone is dropped. One command at a time talks to a board (a lock file).

    with BoardSession(elf) as session:   # starts or finds the board, resumes it, pauses at exit
        serial.serial_for_url(session.url, ...)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from .qemu import (
    LISTENING_MARKER,
    QemuError,
    check_elf,
    check_qemu_installed,
    free_ports,
    qemu_command,
)

BOOT_TIMEOUT_S = 10.0
LOCK_WAIT_S = 5.0
QMP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class BoardRecord:
    """What `<elf>.board.json` says about a running board."""

    pid: int
    serial_port: int
    qmp_port: int
    elf: str
    sha256: str
    started: str  # UTC, ISO 8601

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.serial_port}"


def state_path(elf: Path) -> Path:
    return elf.with_name(elf.name + ".board.json")


def log_path(elf: Path) -> Path:
    return elf.with_name(elf.name + ".board.log")


def lock_path(elf: Path) -> Path:
    return elf.with_name(elf.name + ".board.lock")


def elf_sha256(elf: Path) -> str:
    return hashlib.sha256(elf.read_bytes()).hexdigest()


def read_record(elf: Path) -> BoardRecord | None:
    """The recorded board of `elf` if its process still runs; a stale record is removed."""
    path = state_path(elf)
    try:
        record = BoardRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        path.unlink(missing_ok=True)  # unreadable: nothing can reconnect to it anyway
        return None
    if not process_alive(record.pid, record.elf):
        path.unlink(missing_ok=True)
        return None
    return record


def process_alive(pid: int, elf: str) -> bool:
    """True if `pid` is a live QEMU running `elf` (not a zombie, not a reused pid)."""
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and elf.encode() in cmdline


def _reap(pid: int) -> None:
    """Collects `pid`'s exit status if this process started it (e.g. tests), so it goes away."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# ---- QMP: pause and resume the guest ----


def qmp(port: int, command: str, timeout: float = QMP_TIMEOUT_S) -> None:
    """Runs one QMP command (`stop`, `cont`) on the board's QMP server."""
    try:
        with _connect(port, timeout) as sock:
            stream = sock.makefile("rwb")
            _qmp_reply(stream)  # the greeting
            for name in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": name}).encode() + b"\n")
                stream.flush()
                reply = _qmp_reply(stream)
                if "error" in reply:
                    raise QemuError(f"QEMU refused {name}: {reply['error']}")
    except OSError as exc:
        raise QemuError(f"cannot reach the QEMU monitor on port {port}: {exc}") from exc


def _connect(port: int, timeout: float) -> socket.socket:
    # A fresh QEMU opens its QMP server only once the serial client has connected.
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _qmp_reply(stream) -> dict:  # type: ignore[no-untyped-def]
    while True:
        line = stream.readline()
        if not line:
            raise QemuError("QEMU closed its monitor connection")
        message = json.loads(line)
        if "event" not in message:  # events (STOP, RESUME) arrive between replies
            return message


# ---- starting and stopping ----


def launch(elf: Path) -> BoardRecord:
    """Starts a detached QEMU for `elf` that outlives this process and records it."""
    check_elf(elf)
    check_qemu_installed()
    serial_port, qmp_port = free_ports(2)
    command = [*qemu_command(elf, serial_port),
               "-qmp", f"tcp:127.0.0.1:{qmp_port},server=on,wait=off"]
    log = log_path(elf)
    with log.open("wb") as out:
        # Its own session and no pipes of ours: a caller that waits for our output to end (a
        # shell pipe, subprocess.run) must not wait for the board too.
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while LISTENING_MARKER not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise QemuError(f"QEMU did not start for {elf} (status {proc.returncode}); "
                            f"its output: {log.read_text(errors='replace').strip()}")
        time.sleep(0.01)
    record = BoardRecord(pid=proc.pid, serial_port=serial_port, qmp_port=qmp_port,
                         elf=str(elf), sha256=elf_sha256(elf),
                         started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tmp = state_path(elf).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, state_path(elf))
    return record


def stop(elf: Path) -> BoardRecord | None:
    """Stops the board of `elf`; returns what ran, or None if nothing did."""
    record = read_record(elf)
    if record is None:
        return None
    kill(record)
    state_path(elf).unlink(missing_ok=True)
    return record


def kill(record: BoardRecord) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(record.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not process_alive(record.pid, record.elf):
                return
            time.sleep(0.02)
    raise QemuError(f"QEMU pid {record.pid} does not stop")


@dataclass(frozen=True)
class BoardStatus:
    record: BoardRecord | None
    current: bool  # the ELF on disk is the one the board runs

    def describe(self, elf: Path) -> str:
        if self.record is None:
            return f"no emulated board running for {elf}"
        text = (f"emulated board running: QEMU pid {self.record.pid}, serial "
                f"{self.record.url}, since {self.record.started}, firmware {elf}")
        if not self.current:
            text += " (ELF rebuilt since: the next command restarts the board)"
        return text


def status(elf: Path) -> BoardStatus:
    record = read_record(elf)
    current = record is not None and elf.is_file() and record.sha256 == elf_sha256(elf)
    return BoardStatus(record, current)


def ensure_running(elf: Path) -> tuple[BoardRecord, str]:
    """The board of `elf`, started or restarted if needed, and a note saying which."""
    record = read_record(elf)
    if record is not None and record.sha256 == elf_sha256(elf):
        return record, f"kept since {record.started}"
    if record is not None:
        kill(record)
        state_path(elf).unlink(missing_ok=True)
        return launch(elf), "restarted with the flashed weights because the ELF was rebuilt"
    return launch(elf), ("started now with the flashed weights, kept between commands until "
                         "`mcutrain board stop`")


class BoardLock:
    """Exclusive use of the board of one ELF by one mcutrain command."""

    def __init__(self, elf: Path, wait: float = LOCK_WAIT_S) -> None:
        self._fp = lock_path(elf).open("a")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._fp, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._fp.close()
                    raise QemuError(f"the emulated board of {elf} is in use by another mcutrain "
                                    "command: wait for it to finish") from None
                time.sleep(0.05)

    def release(self) -> None:
        if not self._fp.closed:
            fcntl.flock(self._fp, fcntl.LOCK_UN)
            self._fp.close()


class BoardSession:
    """One command's use of the kept board: lock, start or find, resume; `close` pauses it."""

    def __init__(self, elf: Path) -> None:
        self.elf = Path(elf).resolve()
        check_elf(self.elf)
        self._lock = BoardLock(self.elf)
        try:
            self.record, self.note = ensure_running(self.elf)
        except BaseException:
            self._lock.release()
            raise

    @property
    def url(self) -> str:
        return self.record.url

    @property
    def description(self) -> str:
        return f"emulated board, QEMU pid {self.record.pid}, {self.note}; firmware {self.elf}"

    def resume(self) -> None:
        """Lets the guest run; call after connecting to the serial port (a fresh QEMU waits for
        that connection before it starts, and serves QMP only then)."""
        qmp(self.record.qmp_port, "cont")

    def close(self) -> None:
        """Pauses the guest and gives the board up for the next command (idempotent)."""
        try:
            if process_alive(self.record.pid, self.record.elf):
                qmp(self.record.qmp_port, "stop")
        except QemuError:
            # A board that cannot be paused would spin unattended: stop it instead.
            kill(self.record)
            state_path(self.elf).unlink(missing_ok=True)
        finally:
            self._lock.release()

    def __enter__(self) -> BoardSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
