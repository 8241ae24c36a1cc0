"""Shared pytest options: the same hardware-in-the-loop tests run on the emulated board (default)
or on a real board given with --port, flashed beforehand with `pio run -e disco_f746ng -t upload`
(by default the configured model and scheme, which --port-model and --port-scheme name)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--port", default=None,
                     help="run hardware tests on this serial port or pyserial URL instead of QEMU")
    parser.addoption("--port-model", default=str(ROOT / "models" / "har_cnn1d_int8.tflite"),
                     help="the .tflite the board behind --port was built for")
    parser.addoption("--port-scheme", default=str(ROOT / "train" / "har_adapt.json"),
                     help="the training scheme it was built with ('' for an inference build); "
                          "the emulated board is built the same way")


def _qemu_children() -> list[int]:
    """QEMU processes this pytest process started and that still run (not zombies)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            comm, fields = rest.rsplit(") ", 1)
        except (OSError, ValueError):
            continue
        state, ppid = fields.split()[:2]
        if comm.startswith("qemu-system") and int(ppid) == os.getpid() and state != "Z":
            found.append(int(pid))
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that leaves an emulated board running (e.g. one `mcutrain` kept between commands
    and no fixture stopped) fails the run, and the board is stopped."""
    leaked = _qemu_children()
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if leaked:
        print(f"\nconftest: tests left QEMU running (pids {leaked}); stopped them", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
