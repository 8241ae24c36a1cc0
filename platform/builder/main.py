"""SCons build script of the in-repo mcutrain dev platform (PlatformIO runs it per env).

Generic over Cortex-M7 boards: everything board-specific comes from the board JSON in boards/
(cpu, fpu, f_cpu, size limits, upload protocol, `build.bsp` = folder under firmware/bsp/). The
toolchain is Debian's arm-none-eabi-* found on PATH; nothing is downloaded.

Targets: default build (.elf, .bin, .hex + size check), `size`, `upload` (openocd or st-flash for
a real board; a hint for the emulated one), `exec` (boot the emulated board in QEMU on this
terminal).
"""

import os
import re
import shutil
import subprocess
import sys

from SCons.Script import (  # pylint: disable=import-error
    COMMAND_LINE_TARGETS,
    AlwaysBuild,
    Builder,
    Default,
    DefaultEnvironment,
)

env = DefaultEnvironment()
board = env.BoardConfig()

TOOL_PREFIX = "arm-none-eabi-"
BSP = board.get("build.bsp", env.subst("$BOARD"))


def fail(message):
    sys.stderr.write(f"Error: {message}\n")
    env.Exit(1)


if not shutil.which(TOOL_PREFIX + "gcc", path=env["ENV"]["PATH"]):
    fail(
        "arm-none-eabi-gcc is not on PATH. Install Debian's gcc-arm-none-eabi, "
        "libnewlib-arm-none-eabi and libstdc++-arm-none-eabi-newlib (bash scripts/setup.sh)."
    )

# -- toolchain -------------------------------------------------------------------------------

env.Replace(
    AR=TOOL_PREFIX + "gcc-ar",
    AS=TOOL_PREFIX + "gcc",
    CC=TOOL_PREFIX + "gcc",
    CXX=TOOL_PREFIX + "g++",
    GDB=TOOL_PREFIX + "gdb",
    OBJCOPY=TOOL_PREFIX + "objcopy",
    RANLIB=TOOL_PREFIX + "gcc-ranlib",
    SIZETOOL=TOOL_PREFIX + "size",
    ARFLAGS=["rc"],
    PROGNAME="firmware",
    PROGSUFFIX=".elf",
    # `size -A` lists sections; flash holds code, constants and .data's initial image, RAM holds
    # .data, .bss and the stack reserved by the linker script, so RAM use includes the stack.
    SIZECHECKCMD="$SIZETOOL -A -d $SOURCES",
    SIZEPRINTCMD="$SIZETOOL -A -d $SOURCES",
    SIZEPROGREGEXP=(
        r"^(?:\.isr_vector|\.text|\.rodata|\.ARM\.extab|\.ARM\.exidx|\.preinit_array"
        r"|\.init_array|\.fini_array|\.data)\s+(\d+).*"
    ),
    SIZEDATAREGEXP=r"^(?:\.data|\.bss|\.noinit|\.stack)\s+(\d+).*",
)

# -- flags -------------------------------------------------------------------------------------

machine_flags = [
    f"-mcpu={board.get('build.cpu', 'cortex-m7')}",
    "-mthumb",
    f"-mfpu={board.get('build.fpu', 'fpv5-sp-d16')}",
    f"-mfloat-abi={board.get('build.float_abi', 'hard')}",
]

env.Append(
    ASFLAGS=machine_flags + ["-x", "assembler-with-cpp", "-c"],
    ASPPFLAGS=machine_flags + ["-x", "assembler-with-cpp"],
    CCFLAGS=machine_flags
    + [
        "-O2",
        "-g",
        # Training arithmetic must round exactly like the numpy reference: no fused multiply-add.
        "-ffp-contract=off",
        "-ffunction-sections",
        "-fdata-sections",
        "-Wall",
        "-Wextra",
    ],
    CFLAGS=["-std=gnu11"],
    CXXFLAGS=[
        "-std=gnu++17",
        "-fno-exceptions",
        "-fno-rtti",
        "-fno-threadsafe-statics",
        # Static objects are never destroyed on bare metal; without this every static object with
        # a destructor would drag in __cxa_atexit and a registration table.
        "-fno-use-cxa-atexit",
    ],
    CPPDEFINES=[
        ("F_CPU", "$BOARD_F_CPU"),
        "MT_BOARD_" + re.sub(r"\W", "_", BSP).upper(),
    ],
    # Sources include "kernels/x.h", "runtime/model.h", "bsp/board.h".
    CPPPATH=["$PROJECT_SRC_DIR"],
    LINKFLAGS=machine_flags
    + [
        "-O2",
        "-Wl,--gc-sections",
        "--specs=nano.specs",
        "--specs=nosys.specs",
        # The board's start-up code runs .init_array itself; crt0's _start is not used.
        "-nostartfiles",
        "-Wl,-Map=" + os.path.join("$BUILD_DIR", "${PROGNAME}.map"),
    ],
    LIBS=["m"],
    # The boards' linker scripts INCLUDE the shared section layout from firmware/bsp/.
    LIBPATH=[os.path.join("$PROJECT_SRC_DIR", "bsp")],
)

# Linker script: board_build.ldscript in platformio.ini wins, else the BSP folder's linker.ld.
ldscript = board.get("build.ldscript", os.path.join("$PROJECT_SRC_DIR", "bsp", BSP, "linker.ld"))
if not os.path.isabs(env.subst(ldscript)):
    ldscript = os.path.join("$PROJECT_DIR", ldscript)
env.Replace(LDSCRIPT_PATH=env.subst(ldscript))
if not os.path.isfile(env.subst("$LDSCRIPT_PATH")):
    fail(f"linker script {env.subst('$LDSCRIPT_PATH')} not found (board {BSP})")

env.Append(
    BUILDERS=dict(
        ElfToBin=Builder(
            action=env.VerboseAction(
                "$OBJCOPY -O binary $SOURCES $TARGET", "Building $TARGET"
            ),
            suffix=".bin",
        ),
        ElfToHex=Builder(
            action=env.VerboseAction(
                "$OBJCOPY -O ihex -R .eeprom $SOURCES $TARGET", "Building $TARGET"
            ),
            suffix=".hex",
        ),
    )
)

# -- build -------------------------------------------------------------------------------------

if "nobuild" in COMMAND_LINE_TARGETS:
    target_elf = os.path.join("$BUILD_DIR", "${PROGNAME}.elf")
    target_bin = os.path.join("$BUILD_DIR", "${PROGNAME}.bin")
    target_hex = os.path.join("$BUILD_DIR", "${PROGNAME}.hex")
else:
    target_elf = env.BuildProgram()
    env.Depends(target_elf, "$LDSCRIPT_PATH")
    # Steps an extra script asks to run right after each link (mcutrain's pre-build script
    # sizes the stack there). Attached to the program node itself: a post-action added by path
    # before the node exists only ran when the image was missing.
    for step in env.get("POST_LINK_ACTIONS", []):
        env.AddPostAction(target_elf, step)
    target_bin = env.ElfToBin(os.path.join("$BUILD_DIR", "${PROGNAME}"), target_elf)
    target_hex = env.ElfToHex(os.path.join("$BUILD_DIR", "${PROGNAME}"), target_elf)
    env.Depends(target_bin, "checkprogsize")


def check_ram_size(target, source, env):  # pylint: disable=unused-argument
    """Fail the build when RAM use exceeds the board's limit.

    PlatformIO's own check only warns about RAM; the linker script already refuses to link an
    overflowing image, so this catches a board JSON and linker script that disagree.
    """
    limit = int(board.get("upload.maximum_ram_size", 0))
    elf = source[0].get_abspath()  # the alias "checkprogsize" has the program as its source
    if not limit or not os.path.isfile(elf):
        return None
    out = subprocess.run(
        [env.subst("$SIZETOOL"), "-A", "-d", elf], capture_output=True, text=True, check=False
    ).stdout
    pattern = re.compile(env["SIZEDATAREGEXP"])
    used = sum(int(m.group(1)) for m in map(pattern.search, out.splitlines()) if m)
    if used > limit:
        sys.stderr.write(
            f"Error: RAM use ({used} bytes: .data + .bss + stack) is greater than the {limit} "
            f"bytes of {BSP}\n"
        )
        return 1
    return None


env.AddPostAction("checkprogsize", env.VerboseAction(check_ram_size, "Checking RAM size"))

AlwaysBuild(env.Alias("nobuild", [target_bin, target_hex]))
target_buildprog = env.Alias("buildprog", [target_bin, target_hex])

target_size = env.AddPlatformTarget(
    "size",
    target_elf,
    env.VerboseAction("$SIZEPRINTCMD", "Calculating size $SOURCE"),
    "Program Size",
    "Calculate program size",
)

# -- upload / exec -----------------------------------------------------------------------------

QEMU_HINT = (
    "The emulated board has nothing to flash. Talk to it with `mcutrain --port qemu` (boots "
    f"QEMU with .pio/build/{env['PIOENV']}/firmware.elf), or boot it on this terminal with "
    f"`pio run -e {env['PIOENV']} -t exec` (quit with Ctrl-A X)."
)


def qemu_command(elf):
    qemu = board.get("qemu", {})
    return [
        "qemu-system-arm",
        "-M", qemu.get("machine", "mps2-an500"),
        "-cpu", qemu.get("cpu", "cortex-m7"),
        "-nographic",
        "-icount", f"shift={qemu.get('icount_shift', 3)}",
        "-semihosting-config", "enable=on,target=native",
        "-kernel", elf,
    ]


def upload_qemu(target, source, env):  # pylint: disable=unused-argument
    print(QEMU_HINT)


def exec_qemu(target, source, env):  # pylint: disable=unused-argument
    if not shutil.which("qemu-system-arm"):
        sys.stderr.write(
            "Error: qemu-system-arm not found. Install Debian's qemu-system-arm "
            "(bash scripts/setup.sh).\n"
        )
        return 1
    return env.Execute(" ".join(qemu_command(source[0].get_abspath())))


def upload_stlink(target, source, env):  # pylint: disable=unused-argument
    """Flash with openocd (ST-LINK interface) or st-flash, whichever is installed."""
    elf = source[0].get_abspath()
    binary = os.path.splitext(elf)[0] + ".bin"
    protocol = env.subst("$UPLOAD_PROTOCOL") or "openocd"
    openocd = [
        "openocd",
        "-f", f"interface/{board.get('upload.openocd_interface', 'stlink')}.cfg",
        "-f", f"target/{board.get('upload.openocd_target', 'stm32f7x')}.cfg",
        "-c", f'"program {{{elf}}} verify reset exit"',
    ]
    st_flash = ["st-flash", "--reset", "write", binary,
                board.get("upload.flash_address", "0x08000000")]
    choices = [openocd, st_flash] if protocol == "openocd" else [st_flash, openocd]
    for cmd in choices:
        if shutil.which(cmd[0]):
            return env.Execute(" ".join(cmd))
    sys.stderr.write(
        "Error: neither openocd nor st-flash is installed. Install Debian's `openocd` or "
        "`stlink-tools` (apt-get install openocd stlink-tools).\n"
    )
    return 1


if board.get("upload.protocol", "") == "qemu":
    upload_actions = [env.VerboseAction(upload_qemu, "Nothing to upload")]
    env.AddPlatformTarget(
        "exec",
        target_elf,
        env.VerboseAction(exec_qemu, "Booting $SOURCE in QEMU"),
        "Run in QEMU",
        "Boot the firmware in QEMU on this terminal",
    )
else:
    upload_actions = [env.VerboseAction(upload_stlink, "Uploading $SOURCE")]

env.AddPlatformTarget("upload", [target_elf, target_bin], upload_actions, "Upload")

Default([target_buildprog, target_size])
