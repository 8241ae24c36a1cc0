"""Two checkouts of the project building at once, as two users (or two CI jobs) sharing one
PlatformIO core dir do: each registers the in-repo platform in its own .pio, so neither build
re-points the other's platform (formerly UnknownPlatform / InvalidJSONFile tracebacks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What `pio run -e qemu` reads: the project file, platform, boards, sources, the pre-build hook
# with the mcutrain package it imports, and the configured model and scheme.
PROJECT_PARTS = ["platformio.ini", "platform", "boards", "firmware", "scripts/prebuild.py",
                 "python/mcutrain", "models/har_cnn1d_int8.tflite", "train"]
# Each round starts both builds from a clean .pio, so both register the platform at the same time.
ROUNDS = 3


def copy_project(dest: Path) -> Path:
    for part in PROJECT_PARTS:
        src, dst = ROOT / part, dest / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture
def shared_core_dir(tmp_path: Path) -> Path:
    """A core dir of its own holding only what scripts/setup.sh provisions (tool-scons), copied
    from the one this test run uses."""
    source = Path(os.environ.get("PLATFORMIO_CORE_DIR", Path.home() / ".platformio"))
    scons = source / "packages" / "tool-scons"
    assert (scons / "scons.py").is_file(), f"no tool-scons in {source}: run scripts/setup.sh"
    core = tmp_path / "core"
    shutil.copytree(scons, core / "packages" / "tool-scons", symlinks=True)
    if (source / "appstate.json").is_file():  # skips PlatformIO's first-run checks
        shutil.copy2(source / "appstate.json", core / "appstate.json")
    # A core dir that has built once has its download cache. PlatformIO creates it with a bare
    # os.makedirs, so two first builds at once can race on it (FileExistsError, seen in CI):
    # PlatformIO's own first-use race, not the platform registration this test is about.
    (core / ".cache" / "downloads").mkdir(parents=True)
    return core


def start_build(project: Path, core: Path) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("PLATFORMIO_") and k != "MCUTRAIN_MODEL"}
    # Inference only: the race is in platform registration, not in what is compiled.
    environ.update(PLATFORMIO_CORE_DIR=str(core), MCUTRAIN_TRAIN="")
    return subprocess.Popen(
        [sys.executable, "-m", "platformio", "run", "-e", "qemu", "-d", str(project)],
        env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_checkouts_build_at_once_with_one_core_dir(tmp_path: Path,
                                                       shared_core_dir: Path) -> None:
    projects = [copy_project(tmp_path / name) for name in ("a", "b")]
    for round_ in range(ROUNDS):
        for project in projects:
            shutil.rmtree(project / ".pio", ignore_errors=True)
        builds = [start_build(project, shared_core_dir) for project in projects]
        logs = [build.communicate(timeout=600)[0] for build in builds]
        for project, build, log in zip(projects, builds, logs, strict=True):
            assert build.returncode == 0, f"round {round_}, {project.name}:\n{log[-3000:]}"
            assert (project / ".pio" / "build" / "qemu" / "firmware.elf").is_file()
    # The cause, checked directly: no checkout's platform is registered in the shared core dir.
    registered = sorted((shared_core_dir / "platforms").glob("*")) \
        if (shared_core_dir / "platforms").is_dir() else []
    assert registered == [], registered
