"""PlatformIO pre-build hook: generate the model's C++ into the build directory.

The model comes from the environment variable MCUTRAIN_MODEL if set (pio run cannot override
project options on the command line), else from the env's `custom_model` option; the training
scheme likewise from MCUTRAIN_TRAIN or `custom_train` (empty: an inference-only build; set
MCUTRAIN_TRAIN= to override a configured scheme with none). Paths are relative to the project
directory.
"""

import json
import os
import sys
import traceback
from pathlib import Path

Import("env")  # noqa: F821  (SCons injects Import)

PROJECT_DIR = Path(env.subst("$PROJECT_DIR"))  # noqa: F821
sys.path.insert(0, str(PROJECT_DIR / "python"))

from mcutrain.build import generate_for_build  # noqa: E402
from mcutrain.compile.firmware_size import stack_bytes_from_flags  # noqa: E402
from mcutrain.compile.report import BoardLimits, arena_summary  # noqa: E402
from mcutrain.frontend.graph import ModelError  # noqa: E402


def _model_path() -> Path:
    option = env.GetProjectOption("custom_model", "")  # noqa: F821
    chosen = os.environ.get("MCUTRAIN_MODEL") or option
    if not chosen:
        sys.stderr.write("mcutrain: no model: set custom_model in platformio.ini or "
                         "MCUTRAIN_MODEL=path/to/model.tflite\n")
        env.Exit(1)  # noqa: F821
    path = Path(chosen)
    return path if path.is_absolute() else PROJECT_DIR / path


def _scheme_path() -> Path | None:
    """MCUTRAIN_TRAIN if set (empty: none); else `custom_train`, which is written for
    `custom_model`: when MCUTRAIN_MODEL swaps the model, the build is inference-only."""
    if "MCUTRAIN_TRAIN" in os.environ:
        chosen = os.environ["MCUTRAIN_TRAIN"]
    else:
        chosen = env.GetProjectOption("custom_train", "")  # noqa: F821
        if chosen and os.environ.get("MCUTRAIN_MODEL"):
            print(f"mcutrain: MCUTRAIN_MODEL replaces the configured model, so its training "
                  f"scheme {chosen} is not used: building inference only "
                  "(set MCUTRAIN_TRAIN=scheme.json to train)")
            return None
    if not chosen:
        return None
    path = Path(chosen)
    return path if path.is_absolute() else PROJECT_DIR / path


def _link_flags() -> list[str]:
    """build_flags (with PLATFORMIO_BUILD_FLAGS) and LINKFLAGS as the link will see them: the
    stack reservation the linker script uses comes from there."""
    flags = []
    for name in ("BUILD_FLAGS", "LINKFLAGS"):
        value = env.get(name, [])  # noqa: F821
        flags += [value] if isinstance(value, str) else list(value)
    return [env.subst(str(f)) for f in flags]  # noqa: F821


def _limits() -> BoardLimits:
    board = env.BoardConfig()  # noqa: F821
    return BoardLimits(
        name=board.get("name", env.subst("$BOARD")),  # noqa: F821
        ram_bytes=int(board.get("upload.maximum_ram_size")),
        flash_bytes=int(board.get("upload.maximum_size")),
        stack_bytes=stack_bytes_from_flags(_link_flags()),
        flash_reserve=int(env.GetProjectOption("custom_flash_reserve", 65536)),  # noqa: F821
        train_ram_bytes=int(env.GetProjectOption("custom_train_ram", 262144)),  # noqa: F821
    )


def main() -> None:
    model_path = _model_path()
    build_dir = Path(env.subst("$BUILD_DIR"))  # noqa: F821
    try:
        result = generate_for_build(model_path, build_dir, _limits(), _scheme_path())
    except (ModelError, OSError) as exc:
        sys.stderr.write(f"mcutrain: error: {exc}\n")
        env.Exit(1)  # noqa: F821
        return
    except Exception as exc:  # noqa: BLE001 - bad input raises ModelError; this is a bug
        # Keep the traceback for the bug report, then say in one line what happened.
        traceback.print_exc()
        sys.stderr.write(f"mcutrain: internal error while compiling {model_path.name}: "
                         f"{type(exc).__name__}: {str(exc)[:200]} (a compiler bug: please "
                         "report it with the model)\n")
        env.Exit(1)  # noqa: F821
        return
    state = "generated" if result.regenerated else "up to date"
    print(f"mcutrain: {model_path.name}: model code {state} in {result.generated_dir}")
    print(f"mcutrain: {model_path.name}: "
          f"{arena_summary(json.loads(result.report_path.read_text()))}")
    env.BuildSources(str(build_dir / "generated_obj"), str(result.generated_dir))  # noqa: F821


main()
