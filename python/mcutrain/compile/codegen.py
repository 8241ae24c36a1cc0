"""Code generation: a compiled model becomes one straight-line C++ file.

The output (written into the PlatformIO build directory, never the source tree) holds the weights
and per-operator constants as `static const` arrays in flash, one static arena in SRAM, the
ModelDesc the runtime reports over INFO, and model_invoke(): one kernel call per operator with
arena offsets fixed at compile time. No interpreter, no allocator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..frontend.graph import Tensor
from ..ops.base import KernelVariant, StepContext
from ..ops.cxx import ConstPool, c_float, indent
from .compiler import CompiledModel, scratch_buffer
from .memory_plan import ArenaPlanner
from .streaming import Stream, pulls_input, row_bytes


def tensor_desc(t: Tensor) -> str:
    dims = list(t.shape) + [0] * (6 - len(t.shape))
    scale = c_float(t.quant.scale[0]) if t.quant is not None else "0.0f"
    zero_point = int(t.quant.zero_point[0]) if t.quant is not None else 0
    return (f"{{DType::kInt8, {len(t.shape)}, {{{', '.join(map(str, dims))}}}, {scale}, "
            f"{zero_point}, {t.nbytes}u}}")


def profiled(step: int, code: str) -> str:
    """`code` with its board counter delta added to g_profile[step] (custom_profile builds)."""
    return "\n".join(["{", "const uint64_t profile_start = mt::board::counter_now();", code,
                      f"g_profile[{step}] += static_cast<uint32_t>(mt::board::counter_now() - "
                      "profile_start);", "}"])


def unprofiled(step: int, code: str) -> str:
    return code


def generate_model_source(model: CompiledModel, profile: bool = False) -> tuple[str, int]:
    """The model's C++ source text and the bytes of flash constants it defines. With `profile`
    every step's board counter delta is kept for the PROFILE request (runtime/model.h
    model_profile); a row-streamed step sums its bands."""
    pool = ConstPool()
    calls = [PROFILE_CLEAR] if profile else []
    timed = profiled if profile else unprofiled
    headers = sorted({h for p in model.ops for h in (p.opdef.header, p.variant.header) if h}
                     | ({"runtime/row_window.h"} if model.streams else set())
                     | ({"bsp/board.h"} if profile else set()))
    streamed = {step: s for s in model.streams for step in s.steps}
    for step, p in enumerate(model.ops):
        if step in streamed:
            if step == streamed[step].first:
                calls.append(stream_block(
                    model, streamed[step], pool, model.planner, lambda t: _arena_ptr(model, t),
                    [p.variant for p in model.ops], lambda s: model.ops[s].params, timed))
            continue
        ins = [_arena_ptr(model, t) for t in p.inputs]
        out = _arena_ptr(model, p.output)
        ctx = step_context(pool, p.variant, model.planner, scratch_buffer(step))
        body = p.opdef.emit(p.params, ctx, ins, out).strip()
        comment = f"  // [{step}] {p.op.opcode} (operator {p.op.index}) -> tensor {p.output}"
        calls.append(comment + ("\n" + indent(timed(step, body), 2) if body
                                else " (aliases its input)"))
    arena_bytes = max(model.arena_bytes, 16)
    text = _TEMPLATE.format(
        includes="\n".join(f'#include "{h}"' for h in headers),
        constants=pool.definitions(),
        arena_bytes=arena_bytes,
        name=source_name(model),
        model_desc=model_desc(model, arena_bytes, pool.nbytes),
        input_ptr=("nullptr" if pulls_input(model.streams)
                   else f"g_arena + {model.offset_of(model.input)}"),
        output_offset=model.offset_of(model.output),
        calls="\n".join(calls),
        profile=(PROFILE_COUNTERS.format(steps=len(model.ops)) if profile
                 else NO_PROFILE_COUNTERS),
    )
    return text, pool.nbytes


def stream_block(model: CompiledModel, stream: Stream, pool: ConstPool, planner: ArenaPlanner,
                 act: Callable[[int], str], variants: Sequence[KernelVariant],
                 params: Callable[[int], Any],
                 timed: Callable[[int, str], str] = unprofiled) -> str:
    """C++ running the stream's steps band by band (compile/streaming.py): a table of the rows
    each step has computed after every iteration, one RowWindow per tensor, one band per step
    and iteration where its row count moves. `act(tensor)` is a tensor's arena address,
    `variants[step]` and `params(step)` what a step's kernel is called with, `timed(step, code)`
    wraps each band's kernel call (profiled)."""
    g, ops = model.graph, model.ops
    n = len(stream.steps)
    if max(max(r) for r in stream.rows) > 0xFFFF:
        raise ValueError("a streamed tensor has more than 65535 rows")
    table = ",\n".join("    {" + ", ".join(map(str, r)) + "}" for r in stream.rows)
    lines = [f"// [{stream.first}..{stream.last}] row-streamed: {n} operators in "
             f"{len(stream.rows)} iterations (docs/memory.md)",
             "{",
             f"  static const uint16_t kRows[{len(stream.rows)}][{n}] = {{\n{table}\n  }};"]
    made = {ops[s].output for s in stream.steps}
    tensors = dict.fromkeys(t for s in stream.steps for t in (*ops[s].inputs, ops[s].output))
    for tid in tensors:
        rows = g.tensors[tid].shape[1]
        capacity = stream.windows.get(tid, rows)
        held = 0 if tid in made or tid == stream.pulled else rows
        lines.append(f"  mt::RowWindow w{tid} = {{{act(tid)}, {row_bytes(g, tid)}, {capacity}, "
                     f"0, {held}}};")
    lines += [f"  int32_t done[{n}] = {{}};"]
    if stream.pulled is not None:
        pulls = ", ".join(map(str, stream.input_rows))
        lines += [f"  static const uint16_t kInputRows[{len(stream.rows)}] = {{{pulls}}};",
                  "  int32_t pulled = 0;"]
    lines += [f"  for (int32_t t = 0; t < {len(stream.rows)}; ++t) {{"]
    if stream.pulled is not None:
        w = f"w{stream.pulled}"
        lines += ["    // The input comes from the host a few rows at a time (runtime/model.h).",
                  "    if (kInputRows[t] > pulled) {",
                  "      const int32_t n = kInputRows[t] - pulled;",
                  f"      const Status status = model_pull_input_rows(mt::RowWindowAppend({w}, n), "
                  "pulled, n);",
                  "      if (status != Status::kOk) return status;",
                  "      pulled = kInputRows[t];",
                  "    }"]
    for k, step in enumerate(stream.steps):
        p = ops[step]
        ctx = step_context(pool, variants[step], planner, scratch_buffer(step))
        band = p.opdef.rows.emit(params(step), ctx, [f"w{t}" for t in p.inputs], "out", "y0",
                                 "y1")
        lines += [f"    // [{step}] {p.op.opcode} (operator {p.op.index}) -> tensor {p.output}",
                  f"    if (kRows[t][{k}] > done[{k}]) {{",
                  f"      const int32_t y0 = done[{k}], y1 = kRows[t][{k}];",
                  f"      int8_t* out = mt::RowWindowAppend(w{p.output}, y1 - y0);",
                  indent(timed(step, band.strip()), 6),
                  f"      done[{k}] = y1;",
                  "    }"]
    lines += ["  }", "}"]
    return indent("\n".join(lines), 2)


def step_context(pool: ConstPool, variant: KernelVariant, planner: ArenaPlanner,
                 scratch: str) -> StepContext:
    """An emitter's context: the step's variant and, when planned, its scratch buffer."""
    placement = planner.placements().get(scratch)
    if placement is None:
        return StepContext(pool, variant)
    return StepContext(pool, variant, f"(g_arena + {placement.offset})", placement.size)


def _arena_ptr(model: CompiledModel, tensor_id: int) -> str:
    return f"(g_arena + {model.offset_of(tensor_id)})"


def source_name(model: CompiledModel) -> str:
    """The model's name as it may appear inside a C++ string literal and a comment."""
    return model.graph.name.replace("\\", "_").replace('"', "_")


def model_desc(model: CompiledModel, arena_bytes: int, weight_bytes: int) -> str:
    """The `kModel` definition the runtime reports over INFO (shared by both templates)."""
    g = model.graph
    digest = ", ".join(str(b) for b in g.sha256.ljust(32, b"\0"))
    fields = [f'"{source_name(model)}"', f"{{{digest}}}", f"{arena_bytes}u", f"{weight_bytes}u",
              f"{model.macs}ull", tensor_desc(g.tensors[model.input]),
              tensor_desc(g.tensors[model.output]),
              "true" if pulls_input(model.streams) else "false"]
    return "const ModelDesc kModel = {\n" + "".join(f"    {f},\n" for f in fields) + "};"


_TEMPLATE = """\
// Generated by mcutrain from {name}.tflite. Do not edit: it is rewritten on every build.
#include <cstdint>

#include "runtime/model.h"
{includes}

namespace mt {{
namespace {{

// Every run-time tensor lives at a fixed offset in this arena (see report.json for the plan).
alignas(16) int8_t g_arena[{arena_bytes}];

{constants}
}}  // namespace

{model_desc}

{profile}
int8_t* model_input() {{ return {input_ptr}; }}
const int8_t* model_output() {{ return g_arena + {output_offset}; }}

Status model_invoke() {{
{calls}
  return Status::kOk;
}}

// Built without a training scheme (custom_train / MCUTRAIN_TRAIN): training requests are refused.
const TrainDesc kTrain = {{false, LossKind::kNone, 0, 0, 0.0f, 0, 0, 0}};
Status model_train_step(const uint8_t*, bool, TrainResult*) {{ return Status::kUnknownRequest; }}
void model_train_reset() {{}}
Status model_set_lr(float) {{ return Status::kUnknownRequest; }}
float model_lr() {{ return 0.0f; }}
const uint8_t* model_train_state() {{ return nullptr; }}

}}  // namespace mt
"""

# custom_profile: the counters a profiled build keeps (one per schedule step, and in a training
# build also for the loss and each backward step), cleared when a request starts running the model.
PROFILE_CLEAR = "  for (uint32_t& count : g_profile) count = 0;"

PROFILE_COUNTERS = """\
namespace {{
// custom_profile = on: board counter deltas of the last INFER or TRAIN, one per counted step.
uint32_t g_profile[{steps}];
}}  // namespace

const uint32_t* model_profile(uint32_t* steps) {{
  *steps = {steps};
  return g_profile;
}}
"""

NO_PROFILE_COUNTERS = """\
const uint32_t* model_profile(uint32_t* steps) {
  *steps = 0;
  return nullptr;
}
"""
