"""`mcutrain` command line: talk to a board running the firmware.

  mcutrain info  [--port P]
  mcutrain infer [--port P] --data FILE.npz [--save OUT.npz] [--limit N]

Each subcommand is one `cmd_<name>(args) -> int` plus its parser block in `build_parser`, so
`train` and `eval` slot in the same way. Errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .device import (
    Device,
    DeviceGone,
    DeviceTimeout,
    check_input_shape,
    dequantize_output,
    open_device,
    quantize_input,
)
from .protocol import CounterUnit, DeviceError, DeviceInfo, ProtocolError, TensorDesc
from .qemu import QemuError

DEFAULT_PORT = "qemu"


class CliError(Exception):
    """A user-facing problem (bad file, shape mismatch) reported as one line."""


# ---- info ----


def format_tensor(t: TensorDesc) -> str:
    shape = "x".join(str(d) for d in t.shape)
    return f"{t.dtype.name.lower()} [{shape}] scale={t.scale:.9g} zero_point={t.zero_point}"


def format_info(info: DeviceInfo) -> str:
    unit = "instructions" if info.counter_unit == CounterUnit.INSTRUCTIONS else "cycles"
    lines = [
        f"board          {info.board} (protocol v{info.protocol_version}, counter: {unit})",
        f"model          {info.model}",
        f"model sha256   {info.model_sha256.hex()}",
        f"arena          {info.arena_bytes} bytes",
        f"weights        {info.weight_bytes} bytes",
        f"MACs           {info.macs}",
        f"input          {format_tensor(info.input)}",
        f"output         {format_tensor(info.output)}",
    ]
    if info.stack_size_bytes:
        used, size = info.stack_used_bytes, info.stack_size_bytes
        lines.append(f"stack          {used} of {size} bytes used")
    return "\n".join(lines)


def info_json(info: DeviceInfo) -> dict:
    def tensor(t: TensorDesc) -> dict:
        return {"dtype": t.dtype.name.lower(), "shape": list(t.shape), "scale": t.scale,
                "zero_point": t.zero_point, "bytes": t.nbytes}

    return {
        "board": info.board, "protocol_version": info.protocol_version,
        "counter_unit": info.counter_unit.name.lower(), "model": info.model,
        "model_sha256": info.model_sha256.hex(), "arena_bytes": info.arena_bytes,
        "weight_bytes": info.weight_bytes, "macs": info.macs,
        "input": tensor(info.input), "output": tensor(info.output),
        "stack_used_bytes": info.stack_used_bytes, "stack_size_bytes": info.stack_size_bytes,
    }


def cmd_info(args: argparse.Namespace) -> int:
    with open_device(args.port, args.timeout) as dev:
        info = dev.info()
    print(json.dumps(info_json(info), indent=2) if args.json else format_info(info))
    return 0


# ---- infer ----


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None


def load_npz(path: Path, limit: int | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise CliError(f"{path}: no array named 'x' (found: {', '.join(data.files)})")
            x = data["x"]
            y = data["y"] if "y" in data else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CliError(f"cannot read {path}: {exc}") from exc
    if limit is not None:
        x = x[:limit]
        y = None if y is None else y[:limit]
    if y is not None:
        if y.ndim == 2:  # one-hot
            y = y.argmax(axis=1)
        if y.ndim != 1 or len(y) != len(x):
            raise CliError(f"{path}: y has shape {y.shape}, expected ({len(x)},) labels")
    return Dataset(x, y)


def prepare_inputs(x: np.ndarray, desc: TensorDesc) -> np.ndarray:
    """Quantizes float samples and checks each sample's shape against the model input."""
    if len(x) == 0:
        raise CliError("the data file holds no samples")
    try:
        check_input_shape(x[0], desc)
    except ValueError as exc:
        raise CliError(f"sample {exc} (x has shape {x.shape}, samples along axis 0)") from exc
    if np.issubdtype(x.dtype, np.floating):
        return quantize_input(x, desc)
    if x.dtype == np.int8:
        return x
    raise CliError(f"x has dtype {x.dtype}: give float (quantized on the host) or int8")


def confusion_matrix(y: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    cm = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(cm, (y.astype(np.int64), pred.astype(np.int64)), 1)
    return cm


def format_confusion(cm: np.ndarray) -> str:
    width = max(4, len(str(int(cm.max()))) + 1)
    head = "true\\pred".ljust(10) + "".join(str(c).rjust(width) for c in range(cm.shape[1]))
    rows = [str(r).ljust(10) + "".join(str(int(v)).rjust(width) for v in cm[r])
            for r in range(cm.shape[0])]
    return "\n".join([head, *rows])


def run_inference(dev: Device, xq: np.ndarray, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from tqdm import tqdm

    outputs, counters = [], []
    for sample in tqdm(xq, desc="infer", unit="sample", disable=not progress, file=sys.stderr):
        out, counter = dev.infer(sample)
        outputs.append(out)
        counters.append(counter)
    return np.stack(outputs), np.asarray(counters, dtype=np.uint64)


def cmd_infer(args: argparse.Namespace) -> int:
    data = load_npz(Path(args.data), args.limit)
    with open_device(args.port, args.timeout) as dev:
        info = dev.info()
        xq = prepare_inputs(data.x, info.input)
        outputs, counters = run_inference(dev, xq, progress=not args.quiet)
    pred = outputs.reshape(len(outputs), -1).argmax(axis=1)
    unit = "instructions" if info.counter_unit == CounterUnit.INSTRUCTIONS else "cycles"
    print(f"{len(outputs)} inferences on {info.board}, model {info.model}")
    print(f"mean {unit} per inference: {counters.astype(np.float64).mean():.0f}")
    if data.y is not None:
        y = data.y.astype(np.int64)
        classes = int(max(y.max(), pred.max(), outputs[0].size - 1)) + 1
        print(f"accuracy: {(pred == y).mean():.4f} ({int((pred == y).sum())}/{len(y)})")
        print(format_confusion(confusion_matrix(y, pred, classes)))
    if args.save:
        np.savez(args.save, output=outputs, output_float=dequantize_output(outputs, info.output),
                 pred=pred, counter=counters)
        print(f"saved {args.save}")
    return 0


# ---- entry point ----


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcutrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_port(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", default=DEFAULT_PORT,
                       help="serial device, pyserial URL, qemu[:ELF] or host:EXE (default: qemu)")
        p.add_argument("--timeout", type=float, default=30.0,
                       help="seconds to wait for each reply (default: 30)")

    p = sub.add_parser("info", help="show the board and the model it runs")
    add_port(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("infer", help="run inference over a .npz file (x, optional y)")
    add_port(p)
    p.add_argument("--data", required=True, help=".npz with x (float or int8) and optional y")
    p.add_argument("--save", help="write outputs, dequantized outputs, predictions, counters")
    p.add_argument("--limit", type=int, help="use only the first N samples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)
    return parser


USER_ERRORS = (CliError, ProtocolError, DeviceError, DeviceTimeout, DeviceGone, QemuError,
               ValueError, OSError, ImportError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"mcutrain {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mcutrain {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
