"""Flash and SRAM use of a linked firmware image, read from its ELF sections and symbols, and the
link-time facts the pre-build fit check must share with the linker script.

The numbers are what the linker placed, not estimates: flash = everything loaded into flash
(vector table, code, constants, weights and the initial image of .data); static SRAM = .data +
.bss (which holds the tensor arena) + the reserved stack. `linked_ram_bytes` is what the linker
script's RAM assertion compares with the RAM length: from the start of .data to the end of .bss
(including the alignment gap between them, which `size` does not list) plus the stack.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..frontend.graph import ModelError

FLASH_SECTIONS = (".isr_vector", ".text", ".rodata", ".ARM.extab", ".ARM.exidx",
                  ".preinit_array", ".init_array", ".fini_array", ".data")
RAM_SECTIONS = (".data", ".bss", ".stack")
# The default of __stack_size__ in firmware/bsp/cortex_m7_sections.ld (a test keeps them equal):
# the build's fallback when the compiled stack use has no static bound (build.py).
DEFAULT_STACK_BYTES = 16 * 1024
_STACK_FLAG = re.compile(r"--defsym[=,]__stack_size__=(\w+)")


@dataclass(frozen=True)
class FirmwareSize:
    flash_bytes: int
    ram_bytes: int
    sections: dict[str, int]
    linked_ram_bytes: int


def firmware_size(elf: Path, size_tool: str = "arm-none-eabi-size") -> FirmwareSize:
    out = subprocess.run([_tool(size_tool), "-A", str(elf)], check=True, capture_output=True,
                         text=True).stdout
    sections: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    sym = _symbols(elf, size_tool.replace("size", "nm"))
    linked = (sym["__bss_end__"] - sym["__data_start__"]
              + sym["__stack_top__"] - sym["__stack_limit__"])
    return FirmwareSize(
        flash_bytes=sum(sections.get(s, 0) for s in FLASH_SECTIONS),
        ram_bytes=sum(sections.get(s, 0) for s in RAM_SECTIONS),
        sections=sections,
        linked_ram_bytes=linked,
    )


def _tool(name: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        raise FileNotFoundError(f"{name} not found: apt-get install binutils-arm-none-eabi")
    return tool


def _symbols(elf: Path, nm_tool: str) -> dict[str, int]:
    out = subprocess.run([_tool(nm_tool), str(elf)], check=True, capture_output=True,
                         text=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            symbols[parts[2]] = int(parts[0], 16)
    return symbols


def symbol_sizes(elf: Path, nm_tool: str = "arm-none-eabi-nm") -> dict[str, int]:
    """Sizes of the image's data objects by unqualified name (g_arena, g_state, ...)."""
    out = subprocess.run([_tool(nm_tool), "-S", "-C", str(elf)], check=True,
                         capture_output=True, text=True).stdout
    sizes = {}
    for line in out.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and parts[2] in "bBdD":
            sizes[parts[3].rsplit("::", 1)[-1]] = int(parts[1], 16)
    return sizes


def stack_bytes_from_flags(flags: list[str]) -> int:
    """The stack the linker reserves: the last -Wl,--defsym=__stack_size__=N among the build's
    link flags, else the linker script's default. N as ld reads it: decimal, 0x hex, K or M."""
    explicit = explicit_stack_bytes(flags)
    return DEFAULT_STACK_BYTES if explicit is None else explicit


def explicit_stack_bytes(flags: list[str]) -> int | None:
    """The last -Wl,--defsym=__stack_size__=N among `flags`, or None when none sets it."""
    chosen = [m.group(1) for flag in flags for m in _STACK_FLAG.finditer(flag)]
    if not chosen:
        return None
    text = chosen[-1]
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    try:
        return int(digits, 0) * scale
    except ValueError:
        raise ModelError(f"cannot read the stack size '{text}' of --defsym=__stack_size__: "
                         "give a number of bytes, e.g. 16384 or 16K") from None
