"""Host build of the firmware's kernels for unit tests against the numpy references.

Every firmware/kernels/*.cc and every test/kernels/shim_*.cc (extern "C" wrappers with flat
arguments) is compiled with the host g++ into one shared library, loaded with ctypes. The library
is rebuilt only when a source changes.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path

import pytest
from host_build import KERNELS, ROOT, host_compile

SHIMS = Path(__file__).parent


def _sources() -> list[Path]:
    return sorted(KERNELS.glob("*.cc")) + sorted(SHIMS.glob("shim_*.cc"))


@pytest.fixture(scope="session")
def kernels_lib() -> ctypes.CDLL:
    sources = _sources()
    digest = hashlib.sha256()
    for src in sources + sorted(KERNELS.glob("*.h")):
        digest.update(src.name.encode() + src.read_bytes())
    out_dir = ROOT / ".pio" / "host-kernels"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"libkernels-{digest.hexdigest()[:16]}.so"
    if not lib.exists():
        host_compile(sources, lib)
    return ctypes.CDLL(str(lib))
