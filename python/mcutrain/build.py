"""What the PlatformIO pre-build hook calls: model file in, generated sources and report out.

Generation is skipped when neither the model nor the compiler changed since the last build (a
stamp file records both hashes), and files are only rewritten when their text changes, so an
unchanged model recompiles nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .codegen import generate_model_source, write_if_changed
from .compiler import compile_model
from .report import BoardLimits, build_report, check_fits

PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class BuildResult:
    generated_dir: Path
    report_path: Path
    regenerated: bool


def compiler_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def generate_for_build(model_path: Path, build_dir: Path, limits: BoardLimits) -> BuildResult:
    generated = build_dir / "generated"
    report_path = build_dir / "report.json"
    stamp_path = build_dir / "mcutrain.stamp"
    data = model_path.read_bytes()
    stamp = json.dumps({"model": hashlib.sha256(data).hexdigest(),
                        "compiler": compiler_fingerprint(), "limits": repr(limits)})
    if (stamp_path.exists() and stamp_path.read_text() == stamp
            and (generated / "model.cc").exists() and report_path.exists()):
        return BuildResult(generated, report_path, regenerated=False)
    model = compile_model(data)
    model.graph.name = model_path.stem
    source, weight_bytes = generate_model_source(model)
    check_fits(model, weight_bytes, limits)
    write_if_changed(generated / "model.cc", source)
    report = build_report(model, weight_bytes, limits)
    write_if_changed(report_path, json.dumps(report, indent=2) + "\n")
    stamp_path.write_text(stamp)
    return BuildResult(generated, report_path, regenerated=True)
