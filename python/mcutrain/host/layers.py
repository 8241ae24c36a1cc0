"""`mcutrain layers MODEL.tflite`: the parametric layers a training scheme can address, with what
training each would cost, so a scheme for someone else's model needs no counting by hand.

The costs are not estimates: for every layer the training program of a one-layer scheme is built
by the same compiler a build uses, and its SRAM (arena, trainable state, gradient scales, runtime
and stack, as the pre-build fit check sums them) is compared with the forward pass alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..compile.compiler import CompiledModel, compile_model
from ..compile.report import BoardLimits, inference_ram
from ..frontend.graph import ModelError
from ..ops.base import is_parametric
from ..train.report import training_ram
from ..train.scheme import RATIOS, parse_scheme
from ..train.training_graph import build_training

COST_RATIOS = (1.0, 0.125)  # the table's weight columns; --json has every ratio


@dataclass(frozen=True)
class Layer:
    index: int  # scheme "layer" index from the front
    negative: int  # the same layer from the back
    step: int  # position in the compiled schedule
    opcode: str
    name: str  # output tensor name (a scheme may use it, or its part before the first ';')
    output_shape: list[int]
    weight_shape: list[int]
    weight_bytes: int
    bias_bytes: int
    input_bytes: int  # the layer's input activation (kept for backward when weights train)
    # Extra SRAM of the training step over the forward pass alone; None when refused.
    bias_cost: int | None = None  # "bias_layers": count - index
    weight_cost: dict[str, int | None] = field(default_factory=dict)  # ratio -> bytes
    refused: dict[str, str] = field(default_factory=dict)  # what -> the compiler's reason


@dataclass(frozen=True)
class LayerTable:
    model: str
    loss: str
    forward_bytes: int  # SRAM of the forward pass alone (inference arena + runtime + stack)
    budget_bytes: int
    layers: list[Layer]


def list_layers(model: CompiledModel, limits: BoardLimits | None = None) -> LayerTable:
    limits = limits or BoardLimits("STM32F746", 320 * 1024, 1024 * 1024)
    loss = "cross_entropy" if model.ops[-1].op.opcode == "SOFTMAX" else "mse"
    forward = inference_ram(model, limits).total
    steps = [i for i, p in enumerate(model.ops) if is_parametric(p.op.opcode)]
    count = len(steps)

    def cost(raw: dict[str, Any]) -> tuple[int | None, str | None]:
        try:
            program = build_training(model, parse_scheme({"loss": loss, **raw}, name="layers"))
        except ModelError as exc:
            return None, str(exc)
        return training_ram(program, limits).total - forward, None

    layers = []
    for index, step in enumerate(steps):
        p = model.ops[step]
        t = model.graph.tensors
        consts = p.op.inputs
        refused: dict[str, str] = {}
        bias_cost, why = cost({"bias_layers": count - index})
        if why:
            refused["bias"] = why
        weight_cost: dict[str, int | None] = {}
        for ratio in RATIOS:
            weight_cost[f"{ratio:g}"], why = cost({"weights": [{"layer": index, "ratio": ratio}]})
            if why:
                refused[f"weights {ratio:g}"] = why
        layers.append(Layer(
            index=index, negative=index - count, step=step, opcode=p.op.opcode,
            name=t[p.output].name, output_shape=list(t[p.output].shape),
            weight_shape=list(t[consts[1]].shape), weight_bytes=t[consts[1]].nbytes,
            bias_bytes=t[consts[2]].nbytes if len(consts) > 2 and consts[2] >= 0 else 0,
            input_bytes=t[p.inputs[0]].nbytes, bias_cost=bias_cost, weight_cost=weight_cost,
            refused=refused))
    return LayerTable(model=model.graph.name, loss=loss, forward_bytes=forward,
                      budget_bytes=min(limits.train_ram_bytes, limits.ram_bytes), layers=layers)


def format_table(table: LayerTable) -> str:
    n = len(table.layers)
    room = table.budget_bytes - table.forward_bytes
    verdict = (f"a scheme may add {room} B" if room >= 0 else
               f"no scheme fits ({-room} B over before training anything)")
    lines = [
        f"{table.model}: {n} parametric layers; a scheme's \"layer\" is idx, neg or the name",
        f"Forward pass alone: {table.forward_bytes} B of SRAM (arena + runtime + stack).",
        f"Training budget {table.budget_bytes} B: {verdict}.",
        "+bias, +w: SRAM a scheme adds to the forward pass, measured by compiling it "
        f"(loss {table.loss}):",
        f"  +bias   \"bias_layers\": {n} - idx (this layer's bias and all after it)",
        "  +w r    \"weights\": [{\"layer\": idx, \"ratio\": r}] alone",
        "Costs of combined schemes do not add up (the arena is shared); the build's fit check "
        "decides.",
        "",
        f"{'idx':>4} {'neg':>4}  {'opcode':<17} {'weight shape':<16} {'weight B':>9} "
        f"{'input B':>8} {'+bias':>8} {'+w 1':>8} {'+w 1/8':>8}  name",
    ]
    for layer in table.layers:
        shape = "x".join(str(d) for d in layer.weight_shape)
        costs = [layer.bias_cost] + [layer.weight_cost[f"{r:g}"] for r in COST_RATIOS]
        cells = " ".join(f"{'refused' if c is None else c:>8}" for c in costs)
        lines.append(f"{layer.index:>4} {layer.negative:>4}  {layer.opcode:<17} {shape:<16} "
                     f"{layer.weight_bytes:>9} {layer.input_bytes:>8} {cells}  "
                     f"{layer.name.split(';')[0]}")
    reasons = sorted({why for layer in table.layers for why in layer.refused.values()})
    lines += [f"refused: {why}" for why in reasons[:3]]
    return "\n".join(lines)


def cmd_layers(args: argparse.Namespace) -> int:
    try:
        model = compile_model(Path(args.model))
        model.graph.name = Path(args.model).stem
        limits = BoardLimits("STM32F746", 320 * 1024, 1024 * 1024,
                             train_ram_bytes=args.train_ram)
        table = list_layers(model, limits)
    except (ModelError, OSError) as exc:
        print(f"mcutrain layers: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(table), indent=2))
    else:
        print(format_table(table))
    return 0


def add_parser(sub: Any) -> None:
    """Register `mcutrain layers` on the CLI's subparsers."""
    p = sub.add_parser("layers", help="list the layers a training scheme can train, with costs")
    p.add_argument("model", help="int8 .tflite model")
    p.add_argument("--json", action="store_true", help="print JSON (costs for every ratio)")
    p.add_argument("--train-ram", type=int, default=256 * 1024,
                   help="training SRAM budget in bytes (custom_train_ram; default 262144)")
    p.set_defaults(func=cmd_layers)
