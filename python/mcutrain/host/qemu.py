"""Boot the firmware on QEMU's emulated Cortex-M7 and expose its serial port to pyserial.

QEMU runs `-M mps2-an500 -cpu cortex-m7` with `-icount shift=3`: every instruction takes 2**3 ns
of virtual time and SysTick counts at 25 MHz (40 ns), so one SysTick tick is exactly
INSTRUCTIONS_PER_TICK retired instructions. The board's counter_now() already multiplies by it
and reports instructions (resolution INSTRUCTIONS_PER_TICK); micros() is virtual time.

UART0 is a TCP server that QEMU opens before it starts the CPU (`wait=on`), so nothing the
firmware prints is lost: the guest starts running only once the host connects to `.url`.

    with QemuBoard(find_default_elf(project_dir)) as board:
        port = serial.serial_for_url(board.url, baudrate=115200, timeout=1)

QemuBoard is private to its user and ends with it; mcutrain.host.kept_board keeps one board per ELF
alive between `mcutrain` commands.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType

INSTRUCTIONS_PER_TICK = 5
"""Retired instructions per SysTick tick under `-icount shift=3` (8 ns each, 25 MHz SysTick)."""

ICOUNT_SHIFT = 3
QEMU_BINARY = "qemu-system-arm"
QEMU_DEBIAN_PACKAGE = "qemu-system-arm"
DEFAULT_ENV = "qemu"
LISTENING_MARKER = "waiting for connection"
_ELF_MAGIC = b"\x7fELF"


class QemuError(RuntimeError):
    """QEMU is missing, the firmware image is unusable, or QEMU stopped unexpectedly."""


def find_default_elf(project_dir: Path, env: str = DEFAULT_ENV) -> Path:
    """Return `<project_dir>/.pio/build/<env>/firmware.elf`, or say how to build it."""
    elf = Path(project_dir).resolve() / ".pio" / "build" / env / "firmware.elf"
    if not elf.is_file():
        raise QemuError(f"firmware not built: {elf} does not exist; run `pio run -e {env}` in "
                        f"{Path(project_dir).resolve()}, or pass --project-dir DIR or "
                        "--port qemu:PATH.elf")
    return elf


def resolve_elf(port: str, project_dir: Path | str | None = None) -> Path:
    """The ELF of port `qemu` (the PlatformIO project in `project_dir`, by default the current
    directory, like `pio -d`) or `qemu:PATH` (PATH, relative to the current directory)."""
    given = port[len("qemu:"):] if port.startswith("qemu:") else ""
    if given:
        elf = Path(given).expanduser().resolve()
        check_elf(elf)
        return elf
    return find_default_elf(Path(project_dir) if project_dir is not None else Path.cwd())


def qemu_command(elf: Path, port: int) -> list[str]:
    """The QEMU command line for booting `elf` with UART0 served on 127.0.0.1:`port`."""
    return [
        QEMU_BINARY,
        "-M", "mps2-an500",
        "-cpu", "cortex-m7",
        "-nographic",
        "-monitor", "none",
        "-icount", f"shift={ICOUNT_SHIFT}",
        "-semihosting-config", "enable=on,target=native",
        "-serial", f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on",
        "-kernel", str(elf),
    ]  # fmt: skip


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (bound together, so they differ)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def check_elf(elf: Path) -> None:
    if not elf.is_file():
        raise QemuError(f"firmware ELF not found: {elf} (build it with `pio run -e {DEFAULT_ENV}`)")
    with elf.open("rb") as fp:
        if fp.read(4) != _ELF_MAGIC:
            # QEMU would load a non-ELF file as a raw image and run garbage.
            raise QemuError(f"{elf} is not an ELF file")


def check_qemu_installed() -> None:
    if shutil.which(QEMU_BINARY) is None:
        raise QemuError(
            f"{QEMU_BINARY} not found on PATH: install the Debian package "
            f"{QEMU_DEBIAN_PACKAGE} (bash scripts/setup.sh)"
        )


class QemuBoard:
    """A running QEMU with the firmware; a context manager. `.url` is for serial_for_url."""

    def __init__(self, elf: Path, boot_timeout: float = 10.0) -> None:
        self.elf = Path(elf)
        check_elf(self.elf)
        check_qemu_installed()
        (self.port,) = free_ports(1)
        self._stderr_chunks: list[str] = []
        self._stderr_lock = threading.Lock()
        self._process = subprocess.Popen(
            qemu_command(self.elf, self.port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()
        try:
            self._wait_listening(boot_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        """Everything QEMU has written to stderr so far."""
        with self._stderr_lock:
            return "".join(self._stderr_chunks)

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status (the firmware's, on a semihosting exit), or None while running."""
        return self._process.poll()

    def check_alive(self) -> None:
        """Raise QemuError, with QEMU's stderr, if QEMU is no longer running."""
        code = self._process.poll()
        if code is not None:
            self._reader.join(timeout=1.0)
            raise QemuError(f"QEMU exited with status {code}; stderr:\n{self.stderr.strip()}")

    def wait(self, timeout: float) -> int:
        """Wait for QEMU to exit (e.g. the firmware returned from main) and return its status."""
        return self._process.wait(timeout=timeout)

    def close(self) -> None:
        """Stop QEMU (idempotent)."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(timeout=1.0)

    def __enter__(self) -> QemuBoard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _drain_stderr(self) -> None:
        assert self._process.stderr is not None
        # Small reads: QEMU's "waiting for connection" line has no newline until later.
        while chunk := self._process.stderr.read1(4096):  # type: ignore[attr-defined]
            with self._stderr_lock:
                self._stderr_chunks.append(chunk.decode("utf-8", errors="replace"))

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while LISTENING_MARKER not in self.stderr:
            self.check_alive()
            if time.monotonic() > deadline:
                raise QemuError(
                    f"QEMU did not open its serial port within {timeout:.0f} s; "
                    f"stderr:\n{self.stderr.strip()}"
                )
            time.sleep(0.01)
