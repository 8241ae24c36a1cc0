"""Shared pytest options: the same hardware-in-the-loop tests run on the emulated board (default)
or on a real board given with --port, flashed beforehand with `pio run -e disco_f746ng -t upload`
(by default the configured model and scheme, which --port-model and --port-scheme name)."""

from __future__ import annotations

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
