"""Worst-case stack depth of the firmware, from what the compiler says each function uses.

Every object is compiled with `-fstack-usage -fcallgraph-info=su`: GCC writes, next to each .o, a
.ci call graph whose nodes carry the function's own frame ("N bytes (static)"). The worst case is
the deepest chain from the reset handler (main loop -> protocol -> model step -> kernels) plus,
for each exception level that can preempt it, the hardware exception frame and the deepest
handler. Functions the compiler did not see (newlib, libgcc) are read from the linked image's
disassembly: their frame from the prologue (push / vpush / sub sp) and their direct calls.

Indirect calls (the protocol's handler table, the serial sink, static constructors) may reach
any function whose address the firmware takes (found in the objects' relocations), except one
that reaches the caller by direct calls: that would be recursion, which the firmware has none
of. A direct-call cycle, a dynamic frame GCC cannot bound, an indirect call inside a library
function or an object without its .ci makes the bound unobtainable: `StackBound.reason` says
why, and the build falls back to the fixed reservation instead of guessing.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# Cortex-M7 with FPU: an exception pushes the extended frame (26 words: r0-r3, r12, lr, pc, xpsr,
# s0-s15, fpscr, reserved) and may add one word to realign SP to 8 bytes.
EXCEPTION_FRAME_BYTES = 26 * 4 + 4
# Safety margin over the static bound: an eighth of it, at least 256 B (an AAPCS-aligned, round
# allowance for what a static analysis of compiled frames cannot see, e.g. a debugger's use).
MARGIN_FRACTION = 8
MARGIN_MIN_BYTES = 256
INDIRECT = "__indirect_call"

_NODE = re.compile(r'node: \{ title: "([^"]+)" label: "([^"]*)"')
_EDGE = re.compile(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"')
_FRAME = re.compile(r"\\n(\d+) bytes \(([a-z,]+)\)")
_DIRECT_RELOCS = ("R_ARM_THM_CALL", "R_ARM_THM_JUMP24", "R_ARM_THM_JUMP19", "R_ARM_CALL",
                  "R_ARM_JUMP24", "R_ARM_PREL31", "R_ARM_NONE", "R_ARM_V4BX")
_SKIP_SECTIONS = (".debug", ".ARM.exidx", ".ARM.extab", ".comment", ".isr_vector")


@dataclass
class CallGraph:
    frames: dict[str, int] = field(default_factory=dict)
    calls: dict[str, set[str]] = field(default_factory=dict)
    address_taken: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def add_call(self, caller: str, callee: str) -> None:
        self.calls.setdefault(caller, set()).add(callee)


@dataclass(frozen=True)
class StackBound:
    """The static worst case (None when it cannot be bounded, with the reason)."""

    worst_case: int | None
    chain: tuple[str, ...] = ()
    reason: str = ""

    def reserve(self) -> int | None:
        """Bytes to reserve: the worst case plus the margin, rounded up to 8 (AAPCS)."""
        if self.worst_case is None:
            return None
        total = self.worst_case + margin_bytes(self.worst_case)
        return -(-total // 8) * 8


def margin_bytes(worst_case: int) -> int:
    return max(MARGIN_MIN_BYTES, -(-worst_case // MARGIN_FRACTION))


def read_callgraph_info(ci_files: list[Path], graph: CallGraph) -> None:
    """Frames and direct/indirect calls of the compiled functions (GCC's .ci, VCG text)."""
    for path in ci_files:
        text = path.read_text(errors="replace")
        for title, label in _NODE.findall(text):
            frame = _FRAME.search(label)
            if frame is None:
                continue  # a declaration: defined elsewhere (another object or a library)
            size, kind = int(frame.group(1)), frame.group(2)
            if kind not in ("static", "dynamic,bounded"):
                graph.problems.append(f"{_pretty(title)} has a dynamic stack frame GCC cannot "
                                      f"bound ({path.name})")
            graph.frames[title] = size
        for source, target in _EDGE.findall(text):
            graph.add_call(source, target)


def read_address_taken(objects: list[Path], ci_titles: set[str], objdump: str) -> set[str]:
    """Functions whose address the objects take: targets of relocations other than direct
    calls, outside debug info, unwind tables and the vector table (handlers are roots)."""
    taken: set[str] = set()
    for obj in objects:
        out = subprocess.run([objdump, "-r", str(obj)], check=True, capture_output=True,
                             text=True).stdout
        prefix = _local_prefix(obj, ci_titles)
        section = ""
        for line in out.splitlines():
            if line.startswith("RELOCATION RECORDS FOR ["):
                section = line[len("RELOCATION RECORDS FOR ["):].rstrip("]:")
                continue
            parts = line.split()
            if (len(parts) != 3 or section.startswith(_SKIP_SECTIONS)
                    or parts[1] in _DIRECT_RELOCS):
                continue
            name = parts[2].split("+")[0]
            name = name.removeprefix(".text.")
            for title in (f"{prefix}:{name}", name):
                if title in ci_titles:
                    taken.add(title)
                    break
    return taken


def _local_prefix(obj: Path, ci_titles: set[str]) -> str:
    """The source path GCC prefixes to the object's local functions in its .ci."""
    ci = obj.with_suffix(".ci")
    if ci.is_file():
        head = ci.read_text(errors="replace")[:1000]
        match = re.search(r'graph: \{ title: "([^"]+)"', head)
        if match:
            return match.group(1)
    return ""


def read_library_frames(elf: Path, graph: CallGraph, objdump: str) -> None:
    """Frames and calls of the linked functions GCC did not describe (newlib, libgcc)."""
    out = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(elf)], check=True,
                         capture_output=True, text=True).stdout
    known = {t.split(":")[-1] for t in graph.frames}
    current = None
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <([^>]+)>:$", line)
        if head:
            current = head.group(1) if head.group(1) not in known else None
            if current is not None:
                graph.frames[current] = 0
            continue
        if current is None or "\t" not in line:
            continue
        insn = line.split("\t", 1)[1].strip()
        graph.frames[current] += _prologue_bytes(insn, current, graph)
        call = re.match(r"^(?:bl|blx|b\.w|b)\s+[0-9a-f]+ <([^>+]+)>", insn)
        if call and call.group(1) != current:
            graph.add_call(current, call.group(1))
        elif re.match(r"^blx\s+r\d+", insn):
            graph.problems.append(f"library function {current} makes an indirect call")


def _prologue_bytes(insn: str, function: str, graph: CallGraph) -> int:
    """Stack bytes one instruction allocates (push / stmdb sp! / vpush / sub sp, #imm)."""
    regs = re.match(r"^(?:push(?:\.w)?|stmdb(?:\.w)?\s+sp!,)\s*\{([^}]*)\}", insn)
    if regs:
        return 4 * _count_regs(regs.group(1))
    vregs = re.match(r"^vpush\s*\{([^}]*)\}", insn)
    if vregs:
        width = 8 if "d" in vregs.group(1) else 4
        return width * _count_regs(vregs.group(1))
    sub = re.match(r"^sub(?:s|w|\.w)?\s+sp,\s*(?:sp,\s*)?#(\d+)", insn)
    if sub:
        return int(sub.group(1))
    if re.match(r"^(?:sub|mov)\S*\s+sp,\s*(?:sp,\s*)?r\d+", insn):
        graph.problems.append(f"library function {function} moves SP by a register")
    return 0


def _count_regs(text: str) -> int:
    count = 0
    for part in text.split(","):
        bounds = re.findall(r"\d+", part)
        count += int(bounds[1]) - int(bounds[0]) + 1 if "-" in part else 1
    return count


def _resolve(graph: CallGraph, name: str) -> str:
    """A .ci call target as a node: local names carry their file; library names their own."""
    if name in graph.frames:
        return name
    bare = name.split(":")[-1]
    return bare if bare in graph.frames else name


class _Depth:
    """Deepest chain below each function (memoized; a cycle is recursion and bounds nothing)."""

    def __init__(self, graph: CallGraph) -> None:
        self.graph = graph
        self.memo: dict[str, tuple[int, tuple[str, ...]]] = {}
        self.active: list[str] = []
        self.direct_reach: dict[str, set[str]] = {}

    def reaches(self, start: str) -> set[str]:
        """Functions reachable from `start` by direct calls."""
        if start not in self.direct_reach:
            seen, todo = set(), [start]
            while todo:
                f = todo.pop()
                for callee in self.graph.calls.get(f, ()):
                    callee = _resolve(self.graph, callee)
                    if callee != INDIRECT and callee not in seen:
                        seen.add(callee)
                        todo.append(callee)
            self.direct_reach[start] = seen
        return self.direct_reach[start]

    def callees(self, f: str) -> list[str]:
        out = []
        for callee in self.graph.calls.get(f, ()):
            if callee == INDIRECT:
                out += sorted(g for g in self.graph.address_taken
                              if g != f and f not in self.reaches(g))
            else:
                out.append(_resolve(self.graph, callee))
        return out

    def __call__(self, f: str) -> tuple[int, tuple[str, ...]]:
        if f in self.memo:
            return self.memo[f]
        if f in self.active:
            cycle = self.active[self.active.index(f):] + [f]
            raise _Unbounded("recursion: " + " -> ".join(_pretty(c) for c in cycle))
        if f not in self.graph.frames:
            raise _Unbounded(f"no stack figure for {_pretty(f)} (not in any .ci nor the image)")
        self.active.append(f)
        best: tuple[int, tuple[str, ...]] = (0, ())
        for callee in self.callees(f):
            depth = self(callee)
            if depth[0] > best[0]:
                best = depth
        self.active.pop()
        self.memo[f] = (self.graph.frames[f] + best[0], (f,) + best[1])
        return self.memo[f]


class _Unbounded(Exception):
    pass


FAULT_HANDLERS = ("HardFault_Handler", "MemManage_Handler", "BusFault_Handler",
                  "UsageFault_Handler")


def handler_levels(graph: CallGraph) -> list[list[str]]:
    """The boards' exception handlers (every `*_Handler` but the reset handler) by the levels
    that can nest over the main loop: interrupts, then a fault taken inside one, then NMI."""
    names = sorted(t for t in graph.frames if t.endswith("_Handler") and t != "Reset_Handler")
    faults = [n for n in names if n in FAULT_HANDLERS]
    nmi = [n for n in names if n == "NMI_Handler"]
    return [[n for n in names if n not in faults and n not in nmi], faults, nmi]


def worst_case(graph: CallGraph, thread_root: str,
               handler_levels: list[list[str]]) -> StackBound:
    """Thread-mode chain from `thread_root` plus, per preemption level, an exception frame and
    the deepest handler of that level (levels nest: an interrupt, a fault inside it, NMI)."""
    if graph.problems:
        return StackBound(None, reason="; ".join(sorted(set(graph.problems))))
    depth = _Depth(graph)
    try:
        total, chain = depth(_resolve(graph, thread_root))
        for level in handler_levels:
            present = [_resolve(graph, h) for h in level if _resolve(graph, h) in graph.frames]
            if present:
                size, deepest = max(depth(h) for h in present)
                total += EXCEPTION_FRAME_BYTES + size
                chain += ("<exception frame>",) + deepest
    except _Unbounded as exc:
        return StackBound(None, reason=str(exc))
    return StackBound(total, tuple(demangle([_pretty(c) for c in chain])))


def _pretty(title: str) -> str:
    return title.split(":")[-1]


def demangle(names: list[str], tool: str = "arm-none-eabi-c++filt") -> list[str]:
    """Function names as the source spells them, without parameter lists (mt::ref::conv2d_s8);
    the mangled names when the demangler is missing."""
    try:
        out = subprocess.run([tool], input="\n".join(names), check=True, capture_output=True,
                             text=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names
    if len(out) != len(names):
        return names
    return [n.replace("(anonymous namespace)::", "").split("(")[0] or n for n in out]
