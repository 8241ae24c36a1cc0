"""Compiling firmware sources with the host g++ for tests, with the firmware's language flags
(C++17, no exceptions, no RTTI, no fused multiply-add) and warnings as errors."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "firmware" / "kernels"
HOST_FLAGS = ["-std=c++17", "-O1", "-g", "-ffp-contract=off", "-fno-exceptions", "-fno-rtti",
              "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'firmware'}"]


def host_compile(sources: list[Path | str], out: Path, *, shared: bool = True) -> Path:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.fail("host g++ is needed for kernel tests: apt-get install g++")
    flags = HOST_FLAGS + (["-shared", "-fPIC"] if shared else [])
    subprocess.run([compiler, *flags, "-o", str(out), *map(str, sources)], check=True)
    return out


def host_library(sources: list[Path | str], out: Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(host_compile(sources, out)))
