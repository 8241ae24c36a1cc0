"""The emulated board and its launcher, independent of the model and the protocol.

- mcutrain.host.qemu's error paths (missing or bad ELF, missing QEMU, QEMU dying at start);
- the boards' linker scripts and JSONs agree on the STM32F746's 1 MB flash / 320 KB RAM;
- the QEMU board support itself: a tiny test program, compiled here with arm-none-eabi-g++
  against firmware/bsp/qemu_mps2_an500 (no PlatformIO, no model), prints over UART0 through
  QemuBoard + pyserial, measures a loop of known length with counter_now() and exits with a
  status through semihosting.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import serial

from mcutrain.host import qemu
from mcutrain.host.qemu import QemuBoard, QemuError, find_default_elf

ROOT = Path(__file__).resolve().parents[1]
BSP_DIR = ROOT / "firmware" / "bsp"
BOARDS = {  # board JSON -> BSP folder, flash origin
    "mps2_an500_f746": ("qemu_mps2_an500", 0x00000000),
    "disco_f746ng": ("disco_f746ng", 0x08000000),
}
FLASH_BYTES = 1024 * 1024
RAM_BYTES = 320 * 1024

# ---- launcher error paths ----


def _fake_elf(path: Path) -> Path:
    path.write_bytes(b"\x7fELF" + bytes(60))
    return path


def test_missing_elf_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QemuError, match=r"firmware ELF not found: .*nope\.elf.*pio run -e qemu"):
        QemuBoard(tmp_path / "nope.elf")


def test_non_elf_file_is_rejected(tmp_path: Path) -> None:
    bogus = tmp_path / "firmware.elf"
    bogus.write_bytes(b"not an elf at all")
    with pytest.raises(QemuError, match="is not an ELF file"):
        QemuBoard(bogus)


def test_missing_qemu_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu.shutil, "which", lambda _name: None)
    with pytest.raises(QemuError, match="install the Debian package qemu-system-arm"):
        QemuBoard(_fake_elf(tmp_path / "firmware.elf"))


def test_find_default_elf(tmp_path: Path) -> None:
    with pytest.raises(QemuError, match=r"run `pio run -e qemu` in .*--project-dir"):
        find_default_elf(tmp_path)
    elf = tmp_path / ".pio" / "build" / "qemu" / "firmware.elf"
    elf.parent.mkdir(parents=True)
    _fake_elf(elf)
    assert find_default_elf(tmp_path) == elf


def test_qemu_dying_at_start_reports_its_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        qemu, "qemu_command", lambda elf, port: [qemu.QEMU_BINARY, "-M", "no-such-machine"]
    )
    with pytest.raises(QemuError, match=r"(?s)QEMU exited with status \d+; stderr:.*machine"):
        QemuBoard(_fake_elf(tmp_path / "firmware.elf"))


# ---- memory limits ----


def _memory_regions(linker_script: Path) -> dict[str, tuple[int, int]]:
    text = linker_script.read_text()
    regions = {}
    for name, origin, length, unit in re.findall(
        r"(\w+)\s*\([rwx]+\)\s*:\s*ORIGIN\s*=\s*(0x[0-9A-Fa-f]+)\s*,\s*LENGTH\s*=\s*(\d+)([KM]?)",
        text,
    ):
        scale = {"": 1, "K": 1024, "M": 1024 * 1024}[unit]
        regions[name] = (int(origin, 16), int(length) * scale)
    return regions


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_linker_script_has_the_f746_limits(board: str) -> None:
    bsp, flash_origin = BOARDS[board]
    regions = _memory_regions(BSP_DIR / bsp / "linker.ld")
    assert regions == {"FLASH": (flash_origin, FLASH_BYTES), "RAM": (0x20000000, RAM_BYTES)}


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_json_matches_linker_script(board: str) -> None:
    config = json.loads((ROOT / "boards" / f"{board}.json").read_text())
    assert config["build"]["bsp"] == BOARDS[board][0]
    assert config["upload"]["maximum_size"] == FLASH_BYTES
    assert config["upload"]["maximum_ram_size"] == RAM_BYTES


def test_platformio_envs_build_their_own_board_folder() -> None:
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "platformio.ini")
    envs = {s.split(":", 1)[1]: ini[s] for s in ini.sections() if s.startswith("env:")}
    assert set(envs) == {"qemu", "disco_f746ng"}
    for section in envs.values():
        board = json.loads((ROOT / "boards" / f"{section['board']}.json").read_text())
        assert section["custom_bsp"] == board["build"]["bsp"]
        assert (BSP_DIR / section["custom_bsp"]).is_dir()


# ---- the QEMU board support, end to end ----

# Exercises board.h and board_stats.h only. The measured loop is `subs; bne` = exactly
# 2 instructions per iteration, so counter_now() must report 2 * kLoops (+ the reads' own cost).
TEST_PROGRAM = r"""
#include <cstdint>
#include <cstring>
#include "bsp/board.h"
#include "bsp/board_stats.h"

namespace {
void put(const char* s) {
  mt::board::serial_write(reinterpret_cast<const uint8_t*>(s), strlen(s));
}
void put_u64(uint64_t v) {
  char buf[21];
  int n = sizeof buf;
  buf[--n] = 0;
  do { buf[--n] = static_cast<char>('0' + v % 10); v /= 10; } while (v != 0);
  put(buf + n);
}
struct Constructed { uint32_t value = 0x5EED; };
Constructed g_constructed;  // checks that static constructors ran
uint32_t g_data = 1234;     // checks the .data copy
}  // namespace

int main() {
  mt::board::init();
  constexpr uint32_t kLoops = 1000000;
  const uint64_t before = mt::board::counter_now();
  uint32_t n = kLoops;
  __asm volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(n) : : "cc");
  const uint64_t after = mt::board::counter_now();
  put(mt::board::name());
  put(" unit="); put_u64(static_cast<uint64_t>(mt::board::counter_unit()));
  put(" loop="); put_u64(after - before);
  put(" micros="); put_u64(mt::board::micros());
  put(" ctor="); put_u64(g_constructed.value);
  put(" data="); put_u64(g_data);
  put(" stack="); put_u64(mt::board::stack_high_water_bytes());
  put("/"); put_u64(mt::board::stack_size_bytes());
  put("\n");
  for (;;) {  // echo until 'q', then exit through semihosting with status 7
    uint8_t c;
    if (!mt::board::serial_read_byte(&c)) continue;
    if (c == 'q') break;
    mt::board::serial_write(&c, 1);
  }
  return 7;
}
"""

CXX = "arm-none-eabi-g++"
FLAGS = [
    "-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard", "-O2",
    "-std=gnu++17", "-fno-exceptions", "-fno-rtti", "-fno-threadsafe-statics",
    "-fno-use-cxa-atexit", "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra", "-Werror",
    "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-Wl,--gc-sections",
]  # fmt: skip


@pytest.fixture(scope="module")
def test_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which(CXX) is None:
        pytest.fail(f"{CXX} not installed: run scripts/setup.sh (Debian gcc-arm-none-eabi)")
    out = tmp_path_factory.mktemp("qemu_board")
    main = out / "main.cpp"
    main.write_text(TEST_PROGRAM)
    elf = out / "test.elf"
    sources = sorted((BSP_DIR / "qemu_mps2_an500").glob("*.cpp"))
    cmd = [CXX, *FLAGS, f"-I{ROOT / 'firmware'}", f"-L{BSP_DIR}",
           "-T", str(BSP_DIR / "qemu_mps2_an500" / "linker.ld"),
           "-o", str(elf), str(main), *map(str, sources)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return elf


def _read_line(port: serial.Serial) -> str:
    line = port.readline()
    assert line.endswith(b"\n"), f"no complete line from the board: {line!r}"
    return line.decode().strip()


def test_board_prints_counts_and_exits(test_elf: Path) -> None:
    with QemuBoard(test_elf) as board:
        port = serial.serial_for_url(board.url, baudrate=115200, timeout=10)
        fields = _read_line(port).split()
        port.write(b"abc")
        assert port.read(3) == b"abc"
        port.write(b"q")
        assert board.wait(timeout=10) == 7
        port.close()
    assert fields[0] == "qemu-mps2-an500"
    values = dict(field.split("=") for field in fields[1:])
    assert values["unit"] == "1"  # CounterUnit::kInstructions
    loop = int(values["loop"])
    # 2 instructions per iteration plus the few dozen of the two counter reads themselves.
    assert 2_000_000 <= loop <= 2_000_000 + 100
    assert loop % qemu.INSTRUCTIONS_PER_TICK == 0
    # Virtual time: 8 ns per instruction, so the loop alone is 16 ms.
    assert 16_000 <= int(values["micros"]) < 100_000
    assert values["ctor"] == str(0x5EED) and values["data"] == "1234"
    used, size = map(int, values["stack"].split("/"))
    assert 0 < used < size == 16 * 1024


def test_board_counts_are_deterministic(test_elf: Path) -> None:
    lines = []
    for _ in range(2):
        with QemuBoard(test_elf) as board:
            port = serial.serial_for_url(board.url, baudrate=115200, timeout=10)
            lines.append(_read_line(port))
            port.close()
    assert lines[0] == lines[1]
