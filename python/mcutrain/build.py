"""What the PlatformIO pre-build hook calls: model (and optional training scheme) in, generated
sources and report out.

Generation is skipped when neither the model, the scheme nor the compiler changed since the last
build (a stamp file records their hashes), and files are only rewritten when their text
changes, so an unchanged model recompiles nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .compile.codegen import generate_model_source
from .compile.compiler import compile_model
from .compile.report import BoardLimits, build_report, check_fits
from .ops.cxx import write_if_changed
from .train.report import check_training_fits, training_report
from .train.scheme import load_scheme

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


def generate_for_build(model_path: Path, build_dir: Path, limits: BoardLimits,
                       scheme_path: Path | None = None) -> BuildResult:
    generated = build_dir / "generated"
    report_path = build_dir / "report.json"
    stamp_path = build_dir / "mcutrain.stamp"
    data = model_path.read_bytes()
    scheme_data = scheme_path.read_bytes() if scheme_path else b""
    stamp = json.dumps({"model": hashlib.sha256(data).hexdigest(),
                        "scheme": hashlib.sha256(scheme_data).hexdigest(),
                        "compiler": compiler_fingerprint(), "limits": repr(limits)})
    if (stamp_path.exists() and stamp_path.read_text() == stamp
            and (generated / "model.cc").exists() and report_path.exists()):
        return BuildResult(generated, report_path, regenerated=False)
    model = compile_model(data)
    model.graph.name = model_path.stem
    if scheme_path is None:
        source, weight_bytes = generate_model_source(model)
        check_fits(model, weight_bytes, limits)
        report = build_report(model, weight_bytes, limits)
    else:
        from .train.codegen import generate_training_source
        from .train.training_graph import build_training

        program = build_training(model, load_scheme(scheme_path))
        source, weight_bytes = generate_training_source(program)
        check_training_fits(program, weight_bytes, limits)
        report = build_report(model, weight_bytes, limits)
        report["training"] = training_report(program)
    write_if_changed(generated / "model.cc", source)
    write_if_changed(report_path, json.dumps(report, indent=2) + "\n")
    stamp_path.write_text(stamp)
    return BuildResult(generated, report_path, regenerated=True)
