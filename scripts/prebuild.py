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

from mcutrain.build import (  # noqa: E402
    describe_sram,
    generate_for_build,
    link_stack,
    sram_breakdown,
    stack_opts_flag,
    stack_record,
)
from mcutrain.compile.firmware_size import explicit_stack_bytes  # noqa: E402
from mcutrain.compile.report import BoardLimits, arena_summary  # noqa: E402
from mcutrain.frontend.graph import ModelError  # noqa: E402
from mcutrain.ops.base import KERNEL_CHOICES  # noqa: E402


def _model_path() -> Path:
    option = env.GetProjectOption("custom_model", "")  # noqa: F821
    chosen = os.environ.get("MCUTRAIN_MODEL") or option
    if not chosen:
        sys.stderr.write("mcutrain: no model: set custom_model in platformio.ini or "
                         "MCUTRAIN_MODEL=path/to/model.tflite\n")
        env.Exit(1)  # noqa: F821
    path = Path(chosen)
    return path if path.is_absolute() else PROJECT_DIR / path


def _pull_input() -> bool:
    """MCUTRAIN_INPUT if set, else `custom_input`: "rows" pulls the input from the host row by
    row while the model runs (docs/memory.md), "whole" (the default) receives it first."""
    chosen = os.environ.get("MCUTRAIN_INPUT") or env.GetProjectOption(  # noqa: F821
        "custom_input", "whole")
    if chosen not in ("rows", "whole"):
        sys.stderr.write(f"mcutrain: error: custom_input / MCUTRAIN_INPUT is '{chosen}': use "
                         "'whole' (the input arrives with each request) or 'rows' (pulled row "
                         "by row while the model runs)\n")
        env.Exit(1)  # noqa: F821
    return chosen == "rows"


def _kernels() -> str:
    """MCUTRAIN_KERNELS if set, else `custom_kernels`: "optimized" (the default) uses the
    Cortex-M7 kernel variants wherever they serve a layer, "reference" only the reference
    kernels (docs/kernel_variants.md)."""
    chosen = os.environ.get("MCUTRAIN_KERNELS") or env.GetProjectOption(  # noqa: F821
        "custom_kernels", "optimized")
    if chosen not in KERNEL_CHOICES:
        sys.stderr.write(f"mcutrain: error: custom_kernels / MCUTRAIN_KERNELS is '{chosen}': "
                         "use 'optimized' (Cortex-M7 kernels where they serve a layer) or "
                         "'reference' (the reference kernels only: slower, smaller arena)\n")
        env.Exit(1)  # noqa: F821
    return chosen


def _profile() -> bool:
    """MCUTRAIN_PROFILE if set, else `custom_profile`: "on" makes a build keep each layer's
    instruction (cycle) count for the PROFILE request (`mcutrain profile`), in a training build
    also the loss's and each backward step's."""
    chosen = os.environ.get("MCUTRAIN_PROFILE") or env.GetProjectOption(  # noqa: F821
        "custom_profile", "off")
    if chosen not in ("on", "off"):
        sys.stderr.write(f"mcutrain: error: custom_profile / MCUTRAIN_PROFILE is '{chosen}': "
                         "use 'on' (count each layer's instructions) or 'off'\n")
        env.Exit(1)  # noqa: F821
    return chosen == "on"


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
        # None of the flags set __stack_size__: 0, the link step sizes the stack (see below).
        stack_bytes=explicit_stack_bytes(_link_flags()) or 0,
        flash_reserve=int(env.GetProjectOption("custom_flash_reserve", 65536)),  # noqa: F821
        train_ram_bytes=int(env.GetProjectOption("custom_train_ram", 262144)),  # noqa: F821
    )


def _link_step(target, source, env) -> int | None:  # noqa: ARG001 (SCons action signature)
    """After the link: size the stack from the compiled call graph, link again if the
    reservation changed, then record and print the SRAM breakdown of the linked image. On any
    refusal the image is removed, so that no build keeps a firmware with a wrong stack."""
    elf = Path(target[0].get_abspath())
    build_dir = Path(env.subst("$BUILD_DIR"))
    objects = [Path(s.get_abspath()) for s in source if str(s).endswith(".o")]
    explicit = explicit_stack_bytes(_link_flags())
    try:
        stack, relink = link_stack(build_dir, objects, elf, explicit)
        print(f"mcutrain: {stack.describe()}")
        if relink and env["BUILDERS"]["Program"].action(target, source, env):
            raise ModelError("linking again with the sized stack failed (see above)")
        report_path = build_dir / "report.json"
        report = json.loads(report_path.read_text())
        sram = sram_breakdown(elf, report)
        if sram["stack_bytes"] != stack.reserved:
            raise ModelError(f"the linked image reserves {sram['stack_bytes']} B of stack, not "
                             f"the {stack.reserved} B sized for it")
        report["stack"] = stack_record(stack)
        report["sram"] = sram
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"mcutrain: {describe_sram(sram)}")
    except (ModelError, OSError) as exc:
        elf.unlink(missing_ok=True)
        sys.stderr.write(f"mcutrain: error: {exc}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug; still never keep the unsized image
        elf.unlink(missing_ok=True)
        traceback.print_exc()
        sys.stderr.write(f"mcutrain: internal error while sizing the stack: "
                         f"{type(exc).__name__}: {str(exc)[:200]} (please report it)\n")
        return 1
    return None


def main() -> None:
    model_path = _model_path()
    build_dir = Path(env.subst("$BUILD_DIR"))  # noqa: F821
    try:
        result = generate_for_build(model_path, build_dir, _limits(), _scheme_path(),
                                    _pull_input(), _kernels(), _profile())
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
    if result.regenerated:
        # The link step records the linked SRAM in the new report: make sure it runs.
        (build_dir / "firmware.elf").unlink(missing_ok=True)
    state = "generated" if result.regenerated else "up to date"
    print(f"mcutrain: {model_path.name}: model code {state} in {result.generated_dir}")
    print(f"mcutrain: {model_path.name}: "
          f"{arena_summary(json.loads(result.report_path.read_text()))}")
    # Every object's frame sizes and call graph (.su, .ci next to the .o) for the link step.
    env.Append(CCFLAGS=["-fstack-usage", "-fcallgraph-info=su"])  # noqa: F821
    if explicit_stack_bytes(_link_flags()) is None:
        env.Append(LINKFLAGS=[stack_opts_flag(build_dir)])  # noqa: F821
    # Run by platform/builder/main.py after each link of the program.
    env.Append(POST_LINK_ACTIONS=[env.VerboseAction(_link_step,  # noqa: F821
                                                    "Sizing the stack")])
    env.BuildSources(str(build_dir / "generated_obj"), str(result.generated_dir))  # noqa: F821


main()
