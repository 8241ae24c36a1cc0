"""Host build of the firmware's kernels for unit tests against the numpy references.

Every firmware/kernels/*.cc and every test/kernels/shim_*.cc (extern "C" wrappers with flat
arguments) is compiled with the host g++ into one shared library, loaded with ctypes. The library
is rebuilt only when a source changes.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "firmware" / "kernels"
SHIMS = Path(__file__).parent


def _sources() -> list[Path]:
    return sorted(KERNELS.glob("*.cc")) + sorted(SHIMS.glob("shim_*.cc"))


@pytest.fixture(scope="session")
def kernels_lib() -> ctypes.CDLL:
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.fail("host g++ is needed for kernel unit tests: apt-get install g++")
    sources = _sources()
    digest = hashlib.sha256()
    for src in sources + sorted(KERNELS.glob("*.h")):
        digest.update(src.name.encode() + src.read_bytes())
    out_dir = ROOT / ".pio" / "host-kernels"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"libkernels-{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        cmd = [compiler, "-std=c++17", "-O1", "-g", "-ffp-contract=off", "-shared", "-fPIC",
               "-Wall", "-Wextra", "-fno-exceptions", "-fno-rtti", f"-I{ROOT / 'firmware'}",
               "-o", str(lib)]
        subprocess.run(cmd + [str(s) for s in sources], check=True)
    return ctypes.CDLL(str(lib))
