"""`mcutrain` command line: talk to a board running the firmware.

  mcutrain info   [--port P]
  mcutrain infer  [--port P] --data FILE.npz [--save OUT.npz] [--limit N]
  mcutrain train  [--port P] --data TRAIN.npz [--eval TEST.npz] --epochs N [--lr LR]
                  [--schedule constant|cosine] [--seed S] [--limit N] [--out DIR] [--no-reset]
  mcutrain eval   [--port P] --data FILE.npz [--limit N]
  mcutrain params [--port P] --out STATE.bin
  mcutrain profile [--port P] [--report REPORT.json] [--json]
  mcutrain board  start|stop|status [--port qemu[:ELF]]
  mcutrain layers MODEL.tflite [--json] [--train-ram BYTES]

Every command takes --port (default `qemu`: the emulated board running the ELF that
`pio run -e qemu` built in the current directory, or in --project-dir). The emulated board keeps
its state between commands, like a real one: the first command starts a QEMU for that ELF and
later ones reconnect to it (`mcutrain board` shows and stops it; mcutrain.host.kept_board).

Each subcommand is one `cmd_<name>(args) -> int` plus its parser block in `build_parser`, so
`train` and `eval` slot in the same way. Errors print one line and exit with status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import layers, profile
from .curves import Curve, EpochRecord, plot_curve, write_curve_json
from .device import (
    Device,
    DeviceGone,
    DeviceTimeout,
    check_input_shape,
    dequantize_output,
    input_range,
    is_qemu_port,
    open_device,
    quantize_input,
    saturated_fraction,
)
from .protocol import (
    CounterUnit,
    DeviceError,
    DeviceInfo,
    LossKind,
    ProtocolError,
    TensorDesc,
    TrainInfo,
)
from .qemu import QemuError, resolve_elf

DEFAULT_PORT = "qemu"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive with members, an empty archive
SATURATION_WARN_FRACTION = 0.01


class CliError(Exception):
    """A user-facing problem (bad file, shape mismatch) reported as one line."""


def connect(args: argparse.Namespace) -> Device:
    """The board behind --port; on the emulated board, says on stderr which one and which ELF."""
    dev = open_device(args.port, args.timeout, keep_board=True, project_dir=args.project_dir)
    if is_qemu_port(args.port):
        print(f"mcutrain {args.command}: on the {dev.description}", file=sys.stderr, flush=True)
    return dev


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
    t = info.train
    if t.enabled:
        classes = f", {t.num_classes} classes" if t.loss == LossKind.CROSS_ENTROPY else ""
        lines += [
            f"training       {t.loss.name.lower()}{classes}, lr {t.current_lr:g} "
            f"(default {t.default_lr:g}), seed {t.seed}",
            f"trainable      {t.state_bytes} bytes, backward MACs {t.backward_macs}",
        ]
    else:
        lines.append("training       not built in (set custom_train / MCUTRAIN_TRAIN)")
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
        "train": {
            "enabled": info.train.enabled, "loss": info.train.loss.name.lower(),
            "num_classes": info.train.num_classes, "label_bytes": info.train.label_bytes,
            "default_lr": info.train.default_lr, "current_lr": info.train.current_lr,
            "seed": info.train.seed, "state_bytes": info.train.state_bytes,
            "backward_macs": info.train.backward_macs,
        },
    }


def cmd_info(args: argparse.Namespace) -> int:
    with connect(args) as dev:
        info = dev.info()
    if args.json:
        print(json.dumps({**info_json(info), "elf": None if dev.elf is None else str(dev.elf)},
                         indent=2))
    else:
        print(format_info(info))
        if dev.elf is not None:
            print(f"firmware ELF   {dev.elf}")
    return 0


# ---- infer ----


@dataclass
class Dataset:
    x: np.ndarray
    y: np.ndarray | None


def load_npz(path: Path, limit: int | None, regression: bool = False) -> Dataset:
    """x and optional y from an .npz. y: class labels (one-hot accepted), or with `regression`
    float targets of shape (N, ...)."""
    check_is_npz(path)
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
    if y is not None and regression:
        if len(y) != len(x):
            raise CliError(f"{path}: y has {len(y)} targets for {len(x)} samples")
    elif y is not None:
        if y.ndim == 2:  # one-hot
            y = y.argmax(axis=1)
        if y.ndim != 1 or len(y) != len(x):
            raise CliError(f"{path}: y has shape {y.shape}, expected ({len(x)},) labels")
    return Dataset(x, y)


def check_is_npz(path: Path) -> None:
    """np.load takes anything else for a pickle and gives allow_pickle advice: say what it is."""
    try:
        with path.open("rb") as fp:
            magic = fp.read(4)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if magic not in ZIP_MAGICS:
        raise CliError(f"{path} is not an .npz archive: write one with numpy.savez(path, x=..., "
                       "y=...)")


def check_class_labels(y: np.ndarray, classes: int, source: Path) -> np.ndarray:
    """Labels as int64, or CliError naming the first label that is not a class in [0, classes)."""
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
            or y.dtype == np.bool_):
        raise CliError(f"{source}: labels have dtype {y.dtype}; give integer class indices")
    values = y.astype(np.float64)
    fractional = ~np.isfinite(values) | (values != np.round(values))
    outside = ~fractional & ((values < 0) | (values >= classes))
    for bad, why in ((fractional, "is not an integer class index"),
                     (outside, f"outside [0, {classes})")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CliError(f"{source}: label {y[i]:g} {why} at index {i}")
    return values.astype(np.int64)


def prepare_inputs(x: np.ndarray, desc: TensorDesc, source: Path | None = None) -> np.ndarray:
    """Quantizes float samples and checks each sample's shape against the model input."""
    if len(x) == 0:
        raise CliError("the data file holds no samples")
    try:
        check_input_shape(x[0], desc)
    except ValueError as exc:
        raise CliError(f"sample {exc} (x has shape {x.shape}, samples along axis 0)") from exc
    if np.issubdtype(x.dtype, np.floating):
        warn_if_saturated(x, desc, source)
        return quantize_input(x, desc)
    if x.dtype == np.int8:
        return x
    raise CliError(f"x has dtype {x.dtype}: give float (quantized on the host) or int8")


def warn_if_saturated(x: np.ndarray, desc: TensorDesc, source: Path | None) -> None:
    """Float inputs in the wrong units clamp to -128/127 and wreck accuracy without an error."""
    fraction = saturated_fraction(x, desc)
    if fraction > SATURATION_WARN_FRACTION:
        low, high = input_range(desc)
        where = f"{source}: " if source is not None else ""
        print(f"warning: {where}{fraction:.1%} of the input values lie outside [{low:.6g}, "
              f"{high:.6g}], the float range of the model's int8 input, and were clipped "
              "(wrong units or scaling?)", file=sys.stderr)


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
    with connect(args) as dev:
        info = dev.info()
        xq = prepare_inputs(data.x, info.input, Path(args.data))
        classes = int(np.prod(info.output.shape))
        y = None if data.y is None else check_class_labels(data.y, classes, Path(args.data))
        outputs, counters = run_inference(dev, xq, progress=not args.quiet)
    pred = outputs.reshape(len(outputs), -1).argmax(axis=1)
    unit = "instructions" if info.counter_unit == CounterUnit.INSTRUCTIONS else "cycles"
    print(f"{len(outputs)} inferences on {info.board}, model {info.model}")
    print(f"mean {unit} per inference: {counters.astype(np.float64).mean():.0f}")
    if y is not None:
        print(f"accuracy: {(pred == y).mean():.4f} ({int((pred == y).sum())}/{len(y)})")
        print(format_confusion(confusion_matrix(y, pred, classes)))
    if args.save:
        np.savez(args.save, output=outputs, output_float=dequantize_output(outputs, info.output),
                 pred=pred, counter=counters)
        print(f"saved {args.save}")
    return 0


# ---- training ----


@dataclass
class Pass:
    """Outcome of one pass of TRAIN or EVAL requests over a data set."""

    loss: float
    accuracy: float | None  # None for regression
    predictions: np.ndarray
    counters: np.ndarray


def require_training(info: DeviceInfo) -> TrainInfo:
    if not info.train.enabled:
        raise CliError(f"{info.board} runs firmware built without a training scheme: "
                       "set custom_train / MCUTRAIN_TRAIN and rebuild")
    return info.train


def training_data(path: Path, limit: int | None, info: DeviceInfo) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Quantized inputs and labels checked against the firmware's loss."""
    train = require_training(info)
    regression = train.loss == LossKind.MEAN_SQUARED_ERROR
    data = load_npz(path, limit, regression=regression)
    if data.y is None:
        raise CliError(f"{path}: training and evaluation need labels (an array named 'y')")
    xq = prepare_inputs(data.x, info.input, path)
    if regression:
        y = data.y.astype(np.float32).reshape(len(data.y), -1)
        if y.shape[1] * 4 != train.label_bytes:
            raise CliError(f"{path}: {y.shape[1]} targets per sample, the model has "
                           f"{train.label_bytes // 4}")
        return xq, y
    return xq, check_class_labels(data.y, train.num_classes, path)


def run_pass(dev: Device, xq: np.ndarray, y: np.ndarray, order: np.ndarray, *, update: bool,
             desc: str, progress: bool) -> Pass:
    """TRAIN (update) or EVAL over the samples in `order`, with a running loss/accuracy bar."""
    from tqdm import tqdm

    classify = y.ndim == 1
    step = dev.train if update else dev.eval
    losses = np.zeros(len(order), dtype=np.float64)
    preds = np.zeros(len(order), dtype=np.int64)
    counters = np.zeros(len(order), dtype=np.uint64)
    correct = 0
    bar = tqdm(order, desc=desc, unit="step", disable=not progress, file=sys.stderr, leave=False)
    for k, i in enumerate(bar):
        label = int(y[i]) if classify else y[i]
        reply = step(xq[i], label)
        losses[k], preds[k], counters[k] = reply.loss, reply.prediction, reply.counter
        if classify:
            correct += int(reply.prediction == label)
        if progress and (k % 10 == 0 or k + 1 == len(order)):
            postfix = {"loss": f"{losses[: k + 1].mean():.4f}"}
            if classify:
                postfix["acc"] = f"{correct / (k + 1):.3f}"
            bar.set_postfix(postfix)
    accuracy = correct / len(order) if classify and len(order) else None
    return Pass(float(losses.mean()) if len(order) else math.nan, accuracy, preds, counters)


def lr_for_epoch(schedule: str, base: float, epoch: int, epochs: int) -> float:
    """Learning rate of epoch `epoch` (0-based): constant, or cosine from base down towards 0."""
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base


def format_epoch(rec: EpochRecord, epochs: int, unit: str) -> str:
    def metric(loss: float | None, acc: float | None) -> str:
        text = f"loss {loss:.4f}" if loss is not None else "loss -"
        return text + (f" acc {acc:.4f}" if acc is not None else "")

    parts = [f"epoch {rec.epoch}/{epochs}"]
    if rec.lr is not None:
        parts.append(f"lr {rec.lr:.6g}")
    if rec.train_loss is not None:
        parts.append("train " + metric(rec.train_loss, rec.train_accuracy))
    if rec.eval_loss is not None:
        parts.append("eval " + metric(rec.eval_loss, rec.eval_accuracy))
    if rec.counter_per_step is not None:
        parts.append(f"{rec.counter_per_step:.0f} {unit}/step")
    return "  ".join(parts)


def counter_name(info: DeviceInfo) -> str:
    return "instructions" if info.counter_unit == CounterUnit.INSTRUCTIONS else "cycles"


def cmd_train(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise CliError("--epochs must be at least 1")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr >= 0):
        raise CliError(f"--lr {args.lr} must be finite and >= 0")
    out_dir = Path(args.out)
    progress = not args.quiet
    with connect(args) as dev:
        info = dev.info()
        train = require_training(info)
        xq, y = training_data(Path(args.data), args.limit, info)
        ev = training_data(Path(args.eval), None, info) if args.eval else None
        if not args.no_reset:
            dev.reset()
        base = args.lr if args.lr is not None else (
            train.current_lr if args.no_reset else train.default_lr)
        if args.lr is not None:
            base = dev.set_lr(args.lr)
        curve = Curve(board=info.board, model=info.model, counter_unit=counter_name(info),
                      loss=train.loss.name.lower(), schedule=args.schedule, base_lr=base,
                      seed=args.seed, train_samples=len(xq),
                      eval_samples=0 if ev is None else len(ev[0]))
        if ev is not None:
            first = run_pass(dev, ev[0], ev[1], np.arange(len(ev[0])), update=False,
                             desc="eval", progress=progress)
            curve.epochs.append(EpochRecord(0, eval_loss=first.loss,
                                            eval_accuracy=first.accuracy))
            print(format_epoch(curve.epochs[-1], args.epochs, counter_name(info)))
        rng = np.random.default_rng(args.seed)
        for epoch in range(args.epochs):
            lr = lr_for_epoch(args.schedule, base, epoch, args.epochs)
            if args.schedule == "cosine":
                lr = dev.set_lr(lr)
            order = rng.permutation(len(xq))
            start = time.monotonic()
            tr = run_pass(dev, xq, y, order, update=True, desc=f"epoch {epoch + 1}",
                          progress=progress)
            rec = EpochRecord(epoch + 1, lr=lr, train_loss=tr.loss, train_accuracy=tr.accuracy,
                              counter_per_step=float(tr.counters.astype(np.float64).mean()),
                              seconds=time.monotonic() - start)
            if ev is not None:
                res = run_pass(dev, ev[0], ev[1], np.arange(len(ev[0])), update=False,
                               desc="eval", progress=progress)
                rec.eval_loss, rec.eval_accuracy = res.loss, res.accuracy
            curve.epochs.append(rec)
            curve.order.append(order.tolist())
            print(format_epoch(rec, args.epochs, counter_name(info)), flush=True)
        state = dev.read_params()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_curve_json(curve, out_dir / "curve.json")
    plot_curve(curve, out_dir / "curve.png")
    (out_dir / "params.bin").write_bytes(state)
    layout = params_layout(info, dev.elf)
    (out_dir / "layout.json").write_text(json.dumps(layout, indent=2) + "\n")
    print(f"wrote {out_dir / 'curve.json'}, {out_dir / 'curve.png'}, "
          f"{out_dir / 'params.bin'} ({len(state)} bytes of trained parameters, sha256 "
          f"{hashlib.sha256(state).hexdigest()[:16]}) and {out_dir / 'layout.json'} "
          f"(its layout, from {layout['source']})")
    accuracies = [e.eval_accuracy for e in curve.epochs if e.eval_accuracy is not None]
    if ev is not None and len(accuracies) >= 2:
        print(f"{Path(args.eval).name} accuracy: {accuracies[0]:.2%} before training, "
              f"{accuracies[-1]:.2%} after {args.epochs} epoch(s) on {info.board}")
    return 0


def params_layout(info: DeviceInfo, elf: Path | None) -> dict:
    """Where each trained tensor lies in the READ_PARAMS block: the build's report.json
    "training" section when it is the build of this model, else only what INFO says."""
    layout: dict = {"model": info.model, "model_sha256": info.model_sha256.hex(),
                    "board": info.board, "state_bytes": info.train.state_bytes}
    report = None if elf is None else elf.parent / "report.json"
    if report is not None and report.is_file():
        try:
            built = json.loads(report.read_text())
        except (OSError, ValueError):
            built = {}
        if built.get("sha256") == layout["model_sha256"] and "training" in built:
            return {**layout, "source": str(report), "training": built["training"]}
    return {**layout, "source": "the board's INFO reply (no report.json of this build found)"}


def cmd_eval(args: argparse.Namespace) -> int:
    with connect(args) as dev:
        info = dev.info()
        xq, y = training_data(Path(args.data), args.limit, info)
        res = run_pass(dev, xq, y, np.arange(len(xq)), update=False, desc="eval",
                       progress=not args.quiet)
    print(f"{len(xq)} samples on {info.board}, model {info.model}")
    print(f"mean {counter_name(info)} per step: {res.counters.astype(np.float64).mean():.0f}")
    print(f"loss: {res.loss:.6f}")
    if res.accuracy is not None:
        correct = int((res.predictions == y).sum())
        print(f"accuracy: {res.accuracy:.4f} ({correct}/{len(y)})")
        print(format_confusion(confusion_matrix(y, res.predictions, info.train.num_classes)))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    with connect(args) as dev:
        info = dev.info()
        require_training(info)
        state = dev.read_params()
    Path(args.out).write_bytes(state)
    print(f"wrote {len(state)} bytes of trainable state to {args.out} "
          f"(sha256 {hashlib.sha256(state).hexdigest()})")
    return 0


# ---- profile ----


def profile_report(args: argparse.Namespace) -> Path:
    """--report, else the report.json the build wrote next to the emulated board's ELF."""
    if args.report:
        return Path(args.report)
    if not is_qemu_port(args.port):
        raise CliError(f"--port {args.port}: give --report, the report.json of the build the "
                       "board runs (.pio/build/<env>/report.json)")
    return resolve_elf(args.port, args.project_dir).parent / "report.json"


def cmd_profile(args: argparse.Namespace) -> int:
    path = profile_report(args)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CliError(f"cannot read the build report {path}: {exc}") from exc
    with connect(args) as dev:
        info = dev.info()
        counts = dev.profile()
    if not counts:
        raise CliError("the firmware was built without profiling: rebuild it with "
                       "`custom_profile = on` (or MCUTRAIN_PROFILE=on pio run ...)")
    if not any(counts):
        raise CliError("nothing has run since the board started: run `mcutrain infer` or "
                       "`mcutrain train` first (the profile is that of the last request)")
    try:
        rows = profile.labelled(report, counts)
    except (KeyError, TypeError) as exc:
        raise CliError(f"{path} is not a build's report.json (it has no {exc} entry)") from exc
    if args.json:
        print(json.dumps({"rows": rows, "per_kernel": profile.per_kernel(rows)}, indent=1))
        return 0
    unit = "instructions" if info.counter_unit == CounterUnit.INSTRUCTIONS else "cycles"
    print(profile.format_table(rows, unit))
    return 0


# ---- the kept emulated board ----


def cmd_board(args: argparse.Namespace) -> int:
    from . import kept_board

    if not is_qemu_port(args.port):
        raise CliError(f"--port {args.port}: `mcutrain board` manages the emulated board only "
                       "(--port qemu or qemu:PATH.elf)")
    elf = resolve_elf(args.port, args.project_dir)
    if args.action == "status":
        print(kept_board.status(elf).describe(elf))
    elif args.action == "start":
        lock = kept_board.BoardLock(elf)
        try:
            record, note = kept_board.ensure_running(elf)
        finally:
            lock.release()
        print(f"emulated board, QEMU pid {record.pid}, {note}; firmware {elf}")
    else:
        stopped = kept_board.stop(elf)
        print(f"stopped the emulated board (QEMU pid {stopped.pid}), firmware {elf}"
              if stopped else f"no emulated board running for {elf}")
    return 0


# ---- entry point ----


def positive_int(text: str) -> int:
    """argparse type of --limit: a count of samples, so 0 and negative counts are mistakes."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mcutrain")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcutrain", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mcutrain {package_version()}",
                        help="print the version of mcutrain and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_project_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--project-dir", "-d", metavar="DIR",
                       help="PlatformIO project whose .pio/build/qemu/firmware.elf --port qemu "
                            "runs (default: the current directory)")

    def add_port(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", default=DEFAULT_PORT,
                       help="serial device, pyserial URL, qemu[:ELF] or host:EXE (default: qemu, "
                            "the emulated board, kept between commands)")
        p.add_argument("--timeout", type=float, default=30.0,
                       help="seconds to wait for each reply (default: 30)")
        add_project_dir(p)

    p = sub.add_parser("info", help="show the board and the model it runs")
    add_port(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("infer", help="run inference over a .npz file (x, optional y)")
    add_port(p)
    p.add_argument("--data", required=True, help=".npz with x (float or int8) and optional y")
    p.add_argument("--save", help="write outputs, dequantized outputs, predictions, counters")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use only the first N samples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("train", help="train on the board over a .npz file (x, y)")
    add_port(p)
    p.add_argument("--data", required=True, help="training .npz with x and y")
    p.add_argument("--eval", help=".npz evaluated before training and after every epoch")
    p.add_argument("--epochs", type=int, required=True, help="passes over the training data")
    p.add_argument("--lr", type=float, help="learning rate (default: the scheme's)")
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                   help="learning rate per epoch: constant, or cosine decay from --lr towards 0 "
                        "(default: constant)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample shuffling")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use only the first N training samples")
    p.add_argument("--out", default="train_out",
                   help="directory for curve.json, curve.png, params.bin (the trained "
                        "parameters) and layout.json (default: train_out)")
    p.add_argument("--no-reset", action="store_true",
                   help="continue from the board's current parameters (default: reset to the "
                        "flashed ones first)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="loss, accuracy and confusion matrix without updates")
    add_port(p)
    p.add_argument("--data", required=True, help=".npz with x and y")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use only the first N samples")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("params", help="save the trainable parameters")
    add_port(p)
    p.add_argument("--out", required=True, help="file for the raw state block")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("profile", help="per-layer counts of the last inference or training "
                                       "step (custom_profile = on builds)")
    add_port(p)
    p.add_argument("--report", metavar="REPORT.json",
                   help="the build's report.json, which names each step (default: the one "
                        "next to the emulated board's ELF)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("board", help="start, stop or show the emulated board kept between "
                                     "commands")
    p.add_argument("action", choices=("start", "stop", "status"),
                   help="start: boot it now; stop: end it (the trained state is lost); "
                        "status: is it running, since when, on which ELF")
    p.add_argument("--port", default=DEFAULT_PORT,
                   help="qemu (the project's ELF) or qemu:PATH.elf (default: qemu)")
    add_project_dir(p)
    p.set_defaults(func=cmd_board)

    layers.add_parser(sub)
    return parser


USER_ERRORS = (CliError, ProtocolError, DeviceError, DeviceTimeout, DeviceGone, QemuError,
               ValueError, OSError, ImportError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        hint = ""
        if isinstance(exc, (DeviceTimeout, DeviceGone)) and is_qemu_port(args.port):
            hint = " (if the emulated board is stuck, `mcutrain board stop` restarts it)"
        print(f"mcutrain {args.command}: error: {exc}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mcutrain {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
