"""The package layout follows the pipeline: each stage imports only itself and the stages below it.

    frontend (reader + IR)  <  ops (operator records, kernel math mirrors, C++ emission helpers)
    <  compile (prepare, plan, codegen, fit check)  <  train (training IR, codegen, references)
    <  build (the pre-build hook's entry)  <  host (protocol, boards, command line)

Every import in python/mcutrain, including those inside functions and under TYPE_CHECKING, and
every module named to importlib.import_module as a string, is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "mcutrain"
STAGES = ("frontend", "ops", "compile", "train", "build", "host")


def stage_of(module: str) -> str | None:
    """mcutrain.<stage>[...] -> stage; None for the package itself and anything outside it."""
    parts = module.split(".")
    if parts[0] != "mcutrain" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in STAGES else None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in `source`, a module of `package`."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from mcutrain import ops` imports the stage `ops`, not the package root.
            found += [(node.lineno, f"{target}.{alias.name}" if target == "mcutrain" else target)
                      for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant | ast.JoinedStr)):
            first = node.args[0]
            text = first.value if isinstance(first, ast.Constant) else "".join(
                v.value for v in first.values if isinstance(v, ast.Constant))
            found.append((node.lineno, text.rstrip(".")))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_module_belongs_to_a_stage() -> None:
    loose = [p.relative_to(PACKAGE).as_posix() for p in MODULES
             if stage_of(module_name(p)) is None and p != PACKAGE / "__init__.py"]
    assert not loose, f"modules outside the pipeline stages {STAGES}: {loose}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_point_down_the_pipeline(path: Path) -> None:
    own = stage_of(module_name(path))
    if own is None:
        return  # the package root sits above every stage: it loads the operator modules
    upward = [f"line {line}: {target}" for line, target in imported_modules(path)
              if (stage := stage_of(target)) is not None
              and STAGES.index(stage) > STAGES.index(own)]
    assert not upward, f"{path.name} ({own}) imports a later stage: {upward}"


def test_the_check_sees_upward_imports() -> None:
    # The check itself: relative, lazy and importlib imports of a later stage are all found.
    source = ("from ..train.training_graph import build_training\n"
              "def f():\n    from ..host import cli\n"
              "importlib.import_module(f'mcutrain.compile.{name}')\n")
    targets = [t for _, t in imports_in(source, "mcutrain.ops")]
    assert targets == ["mcutrain.train.training_graph", "mcutrain.host", "mcutrain.compile"]
    assert all(STAGES.index(stage_of(t)) > STAGES.index("ops") for t in targets)
