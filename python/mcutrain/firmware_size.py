"""Flash and SRAM use of a linked firmware image, read from its ELF sections.

The numbers are what the linker placed, not estimates: flash = everything loaded into flash
(vector table, code, constants, weights and the initial image of .data); static SRAM = .data +
.bss (which holds the tensor arena) + the reserved stack.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FLASH_SECTIONS = (".isr_vector", ".text", ".rodata", ".ARM.extab", ".ARM.exidx",
                  ".preinit_array", ".init_array", ".fini_array", ".data")
RAM_SECTIONS = (".data", ".bss", ".stack")


@dataclass(frozen=True)
class FirmwareSize:
    flash_bytes: int
    ram_bytes: int
    sections: dict[str, int]


def firmware_size(elf: Path, size_tool: str = "arm-none-eabi-size") -> FirmwareSize:
    tool = shutil.which(size_tool)
    if tool is None:
        raise FileNotFoundError(f"{size_tool} not found: apt-get install binutils-arm-none-eabi")
    out = subprocess.run([tool, "-A", str(elf)], check=True, capture_output=True,
                         text=True).stdout
    sections: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    return FirmwareSize(
        flash_bytes=sum(sections.get(s, 0) for s in FLASH_SECTIONS),
        ram_bytes=sum(sections.get(s, 0) for s in RAM_SECTIONS),
        sections=sections,
    )
