#!/usr/bin/env python3
"""Copy the project's third-party data into the repository and build the HAR dataset from it.

    python scripts/make_datasets.py copy [--source /work/shared/data]   # third-party files
    python scripts/make_datasets.py har                                 # data/har_{train,test}.npz
    python scripts/make_datasets.py adapt                   # data/adapt_{train,test}.npz

`copy` needs the shared data folder once; `har` only reads the committed zip, so a clone can
rebuild the dataset. Numpy only: no TensorFlow here.

HAR windows: ST's recordings (3-axis accelerometer, mg, 26 Hz, 1000 samples each) are cut into
windows of 64 samples (2.5 s) with stride 32 and scaled to g. The train/test split is by recording,
never by window, so overlapping windows of one recording cannot leak across the split; every window
keeps its recording id so later work can hold out whole recordings ("new user" adaptation).

Adaptation task (on-device training demo): the device mounted differently. The held-out HAR test
recordings, which the pretrained model never saw, are rotated by one fixed rotation of the sensor
axes (upside down, 180 degrees about x, then tilted 45 degrees about y), then split by recording,
stratified and seeded, into adapt_train (for training on the device) and adapt_test (held out).
"""

from __future__ import annotations

import argparse
import io
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS_3P = ROOT / "models" / "third_party"
DATA_3P = ROOT / "data" / "third_party"
HAR_ZIP = DATA_3P / "st_har_accel_dataset_26Hz.zip"

HAR_CLASSES = ("stationary", "walking", "running")
WINDOW = 64
STRIDE = 32
TEST_FRACTION = 0.25
SPLIT_SEED = 20240611

ADAPT_SEED = 20240612
ADAPT_TRAIN_FRACTION = 0.5  # of the held-out test recordings, per class

TFLM = "tensorflow/tflite-micro"


@dataclass(frozen=True)
class ThirdPartyFile:
    name: str
    dest: Path
    what: str
    source: str  # repository @ commit, path
    licence: str


THIRD_PARTY = (
    ThirdPartyFile(
        "tflm_hello_world_int8.tflite", MODELS_3P,
        "3 FULLY_CONNECTED layers (1-16-16-1) sine regressor; in int8[1,1] s=0.0244801 zp=-128 "
        "(x in [0, 2pi]); out int8[1,1] s=0.00829096 zp=5",
        f"{TFLM} @90b983c2, tensorflow/lite/micro/examples/hello_world/models/"
        "hello_world_int8.tflite",
        "Apache-2.0"),
    ThirdPartyFile(
        "tflm_micro_speech_int8.tflite", MODELS_3P,
        "keyword spotter: RESHAPE, DEPTHWISE_CONV_2D (10x8 kernel, 8 ch), FULLY_CONNECTED "
        "4000->4, SOFTMAX; in int8[1,1960] (49x40 features) s=0.101716 zp=-128; out int8[1,4] "
        "(silence, unknown, yes, no)",
        f"{TFLM} @90b983c2, tensorflow/lite/micro/examples/micro_speech/models/"
        "micro_speech_quantized.tflite",
        "Apache-2.0"),
    ThirdPartyFile(
        "micro_speech_yes_features_49x40_int8.bin", MODELS_3P,
        "raw int8 input for the micro_speech model; expected output [-128,-128,127,-128]",
        f"{TFLM} @266d49d0, micro_speech/micro_features/yes_micro_features_data.cc",
        "Apache-2.0"),
    ThirdPartyFile(
        "micro_speech_no_features_49x40_int8.bin", MODELS_3P,
        "raw int8 input for the micro_speech model; expected output [-128,-114,-128,114]",
        f"{TFLM} @266d49d0, micro_speech/micro_features/no_micro_features_data.cc",
        "Apache-2.0"),
    ThirdPartyFile(
        "arduino_magic_wand_int8.tflite", MODELS_3P,
        "small CNN: 3 CONV_2D, MEAN, FULLY_CONNECTED, SOFTMAX; in int8[1,32,32,3] s=1 zp=-128 "
        "(a rasterised gesture stroke); out int8[1,10] (digits drawn in the air)",
        "tensorflow/tflite-micro-arduino-examples @7948b85e, "
        "examples/magic_wand/magic_wand_model_data.cpp (C array turned back into bytes)",
        "Apache-2.0"),
    ThirdPartyFile(
        "st_har_accel_dataset_26Hz.zip", DATA_3P,
        "92 CSV recordings of real 3-axis accelerometer data (mg, 26 Hz, +-4 g, 1000 samples "
        "each): stationary 36, walking 39, running 17, one folder per class",
        "STMicroelectronics/stm32ai-wiki @5ed628af",
        "BSD-3-Clause (licence text inside the zip: dataset/LICENSE)"),
)


def attribution(dest: Path) -> str:
    lines = [
        "# Third-party files",
        "",
        "None of these files was written by this project; they are copied unchanged and keep",
        "their original licences. Written by `scripts/make_datasets.py copy`.",
        "",
        "| file | what it is | source (repository @ commit, path) | licence |",
        "|---|---|---|---|",
    ]
    for f in THIRD_PARTY:
        if f.dest == dest:
            lines.append(f"| `{f.name}` | {f.what} | {f.source} | {f.licence} |")
    return "\n".join(lines) + "\n"


def copy_third_party(source: Path) -> None:
    for f in THIRD_PARTY:
        f.dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / f.name, f.dest / f.name)
        print(f"copied {f.name} -> {f.dest.relative_to(ROOT)}")
    for dest in (MODELS_3P, DATA_3P):
        (dest / "ATTRIBUTION.md").write_text(attribution(dest))


@dataclass
class Recording:
    name: str  # e.g. "walking/walking_07_26Hz_4g_mg.csv"
    label: int
    samples: np.ndarray  # float32 [T, 3], in g


def read_recordings(zip_path: Path) -> list[Recording]:
    recordings = []
    with zipfile.ZipFile(zip_path) as z:
        for member in sorted(z.namelist()):
            parts = member.split("/")
            if not member.endswith(".csv") or parts[-2] not in HAR_CLASSES:
                continue
            milli_g = np.loadtxt(io.BytesIO(z.read(member)), delimiter=",", dtype=np.float32)
            recordings.append(Recording("/".join(parts[-2:]), HAR_CLASSES.index(parts[-2]),
                                        milli_g / np.float32(1000.0)))
    return recordings


def windows(samples: np.ndarray) -> np.ndarray:
    starts = range(0, len(samples) - WINDOW + 1, STRIDE)
    return np.stack([samples[s:s + WINDOW] for s in starts])


def split_recordings(labels: np.ndarray) -> np.ndarray:
    """Boolean mask over recordings: True = test. Stratified per class, seeded."""
    rng = np.random.default_rng(SPLIT_SEED)
    is_test = np.zeros(len(labels), dtype=bool)
    for c in range(len(HAR_CLASSES)):
        ids = np.flatnonzero(labels == c)
        n_test = max(1, round(TEST_FRACTION * len(ids)))
        is_test[rng.choice(ids, n_test, replace=False)] = True
    return is_test


def save_split(path: Path, recordings: list[Recording], ids: np.ndarray) -> None:
    xs, ys, recs = [], [], []
    for i in ids:
        w = windows(recordings[i].samples)
        xs.append(w)
        ys.append(np.full(len(w), recordings[i].label, np.int64))
        recs.append(np.full(len(w), i, np.int32))
    x, y, rec = np.concatenate(xs), np.concatenate(ys), np.concatenate(recs)
    np.savez_compressed(
        path, x=x, y=y, recording=rec, classes=np.array(HAR_CLASSES),
        recording_names=np.array([r.name for r in recordings]))
    counts = {c: int((y == k).sum()) for k, c in enumerate(HAR_CLASSES)}
    print(f"{path.relative_to(ROOT)}: x{list(x.shape)} recordings={len(ids)} windows={counts}")


def build_har() -> None:
    recordings = read_recordings(HAR_ZIP)
    is_test = split_recordings(np.array([r.label for r in recordings]))
    save_split(ROOT / "data" / "har_train.npz", recordings, np.flatnonzero(~is_test))
    save_split(ROOT / "data" / "har_test.npz", recordings, np.flatnonzero(is_test))


def axis_rotation(axis: int, degrees: float) -> np.ndarray:
    """Right-handed rotation matrix about sensor axis 0, 1 or 2 (float64, exact for 90/180)."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    c, s = np.round(c, 15), np.round(s, 15)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# Mounted upside down (180 degrees about x), then tilted by -45 degrees about y. Chosen among the
# 45-degree grid of x/y rotations as one that clearly hurts the pretrained model (report of the
# TFLite accuracies: scripts/adaptation_experiment.py); the plain axis swaps cost it far less,
# because the model is fairly orientation-tolerant.
ADAPT_ROTATION = axis_rotation(0, 180.0) @ axis_rotation(1, -45.0)


def build_adapt() -> None:
    """data/adapt_{train,test}.npz from data/har_test.npz (whole recordings on each side)."""
    src = np.load(ROOT / "data" / "har_test.npz")
    x, y, rec = src["x"], src["y"], src["recording"]
    rotated = (x.astype(np.float64) @ ADAPT_ROTATION.T).astype(np.float32)
    rng = np.random.default_rng(ADAPT_SEED)
    train_recs = []
    for c in range(len(HAR_CLASSES)):
        ids = np.unique(rec[y == c])
        n_train = max(1, round(ADAPT_TRAIN_FRACTION * len(ids)))
        train_recs.extend(rng.choice(ids, n_train, replace=False).tolist())
    is_train = np.isin(rec, train_recs)
    for name, mask in (("adapt_train", is_train), ("adapt_test", ~is_train)):
        path = ROOT / "data" / f"{name}.npz"
        np.savez_compressed(
            path, x=rotated[mask], y=y[mask], recording=rec[mask], classes=src["classes"],
            recording_names=src["recording_names"], rotation=ADAPT_ROTATION.astype(np.float32))
        counts = {c: int((y[mask] == k).sum()) for k, c in enumerate(HAR_CLASSES)}
        print(f"{path.relative_to(ROOT)}: x{list(rotated[mask].shape)} "
              f"recordings={len(np.unique(rec[mask]))} windows={counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    copy = sub.add_parser("copy", help="copy third-party files and write ATTRIBUTION.md")
    copy.add_argument("--source", type=Path, default=Path("/work/shared/data"))
    sub.add_parser("har", help="build data/har_{train,test}.npz from the committed zip")
    sub.add_parser("adapt", help="build data/adapt_{train,test}.npz (rotated held-out recordings)")
    args = parser.parse_args()
    if args.cmd == "copy":
        copy_third_party(args.source)
    elif args.cmd == "har":
        build_har()
    else:
        build_adapt()


if __name__ == "__main__":
    main()
