"""The Cortex-M7 kernels with the real DSP instructions, on the emulated board, on random layers.

test/kernels/test_m7_kernels.py checks the algorithm on the host (plain C++ stand-ins of SMLAD,
SXTB16, SMMULR, SSAT); here the firmware runs them on QEMU's Cortex-M7. Each case is a model of
one or three random layers (odd channel counts, strides, dilation, padding, per-tensor and
per-channel weights) converted by TensorFlow, built on the optimized kernels, and its outputs
must equal LiteRT's reference kernels byte for byte; report.json must show the m7 variant ran.
Every shipped model runs the same way in test_firmware_bitexact.py.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from firmware_support import build_firmware, tflite_reference
from mcutrain.compile.compiler import compile_model, scratch_buffer
from mcutrain.host.device import open_device
from mcutrain.ops import conv2d, depthwise_conv2d
from tflite_convert import convert_full_int8


@dataclass(frozen=True)
class Layer:
    kind: str  # "conv" or "dw"
    kernel: tuple[int, int]
    stride: int = 1
    dilation: int = 1
    padding: str = "same"
    filters: int = 0  # conv output channels
    # None leaves the full int8 range, whose clamp is one SSAT (the conv kernel's assembly
    # channel loop); relu clamps below as well.
    activation: str | None = "relu"


@dataclass(frozen=True)
class Case:
    name: str
    input_shape: tuple[int, int, int]  # HWC
    layers: tuple[Layer, ...]
    per_channel: bool = True
    ring: bool = False  # the depthwise layer runs on staged rows (planned in a free gap)
    narrow: bool = False  # the depth-8 pointwise layer runs sixteen pixels a pass (likewise)


CASES = [
    Case("stem", (17, 15, 3), (Layer("conv", (3, 3), 2, filters=13),)),
    Case("pointwise_odd", (9, 11, 7), (Layer("conv", (1, 1), filters=11),)),
    # Whole-word depths take the direct column path: 9 weight words (two unrolled loops of
    # four and one more), then at stride 2 (input pixels not the output's) with a last block
    # of two pixels, 5 words.
    Case("pointwise_deep", (5, 7, 36), (Layer("conv", (1, 1), filters=16),)),
    Case("pointwise_strided", (13, 11, 20), (Layer("conv", (1, 1), 2, filters=9),)),
    Case("conv_dilated_valid", (14, 13, 5),
         (Layer("conv", (3, 2), dilation=2, padding="valid", filters=6),), per_channel=False),
    # Linear layers take the assembly channel loop, which reads each weight row as whole
    # words: depths of 27 (the stem's, 7 groups: a first pass of 3, then 4), 9 and 18 (past the
    # image's edge the general columns, inside the byte-staged ones), 8 and 16 (2 and 4 groups).
    Case("stem_linear", (17, 15, 3), (Layer("conv", (3, 3), 2, filters=13, activation=None),)),
    Case("conv_depth9_linear", (9, 10, 1), (Layer("conv", (3, 3), filters=6, activation=None),)),
    Case("conv_depth18_linear", (8, 9, 2),
         (Layer("conv", (3, 3), filters=5, activation=None),)),
    Case("pointwise_linear", (9, 11, 8),
         (Layer("conv", (1, 1), filters=7, activation=None),
          Layer("conv", (1, 1), filters=16, activation=None),
          Layer("conv", (1, 1), filters=5, activation=None))),
    Case("dw3_stride2", (15, 16, 12), (Layer("dw", (3, 3), 2),)),
    Case("dw5_odd_channels", (12, 9, 9), (Layer("dw", (5, 5)),)),
    # Rows of 16 and more at stride 1 run on staged rows where the arena has a gap for them:
    # the wide layer before leaves one, padded here and unpadded in the second case.
    Case("dw3_ring", (20, 20, 8),
         (Layer("conv", (1, 1), filters=40), Layer("conv", (1, 1), filters=8),
          Layer("dw", (3, 3))), ring=True),
    Case("dw3_ring_valid", (9, 19, 4),
         (Layer("conv", (1, 1), filters=64), Layer("conv", (1, 1), filters=4),
          Layer("dw", (3, 3), padding="valid")), ring=True),
    Case("dw3_dilated_valid", (13, 14, 8), (Layer("dw", (3, 3), dilation=2, padding="valid"),),
         per_channel=False),
    # A depth-8 expansion ahead of the arena's peak (which leaves the gap): eight passes of
    # sixteen pixels, the last 15 in four-pixel blocks; doubled columns in both.
    Case("pointwise_narrow", (11, 13, 8),
         (Layer("conv", (1, 1), filters=40, activation=None), Layer("conv", (1, 1), filters=8),
          Layer("conv", (1, 1), filters=96)), narrow=True),
    Case("inverted_residual", (24, 24, 8),
         (Layer("conv", (1, 1), filters=24), Layer("dw", (3, 3)),
          Layer("conv", (1, 1), filters=8))),
]


def _keras(case: Case):  # noqa: ANN202 - a tf.keras.Model
    import tensorflow as tf

    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    x = inp = tf.keras.Input(case.input_shape, batch_size=1)
    for layer in case.layers:
        if layer.kind == "conv":
            x = tf.keras.layers.Conv2D(layer.filters, layer.kernel, layer.stride,
                                       padding=layer.padding, dilation_rate=layer.dilation,
                                       activation=layer.activation)(x)
        else:
            x = tf.keras.layers.DepthwiseConv2D(layer.kernel, layer.stride,
                                                padding=layer.padding,
                                                dilation_rate=layer.dilation)(x)
    model = tf.keras.Model(inp, x)
    # Random biases too, so the folded offsets and the bias add are both exercised.
    for var in model.trainable_variables:
        var.assign(rng.normal(scale=0.3, size=var.shape).astype(np.float32))
    return model


def _convert(case: Case, directory: Path) -> Path:
    import tensorflow as tf

    def calibration():
        rng = np.random.default_rng(7)
        for _ in range(8):
            yield [rng.normal(size=(1, *case.input_shape)).astype(np.float32)]

    data = convert_full_int8(tf.lite.TFLiteConverter.from_keras_model(_keras(case)), calibration,
                             per_channel=case.per_channel)
    path = directory / f"m7_{case.name}.tflite"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_m7_layers_on_the_emulated_board_equal_litert(case: Case,
                                                      tmp_path_factory: pytest.TempPathFactory
                                                      ) -> None:
    model = _convert(case, tmp_path_factory.mktemp(case.name))
    elf = build_firmware(model)
    report = json.loads((elf.parent / "report.json").read_text())
    weighted = [op for op in report["operators"] if op["opcode"] in ("CONV_2D",
                                                                     "DEPTHWISE_CONV_2D")]
    assert weighted and all(op["kernel"] == "m7" for op in weighted), report["operators"]
    if case.ring:
        compiled = compile_model(model)
        dw = [(s, p) for s, p in enumerate(compiled.ops) if p.op.opcode == "DEPTHWISE_CONV_2D"]
        assert dw and all(
            compiled.planner.placements()[scratch_buffer(s)].size
            == depthwise_conv2d.m7_ring_scratch_bytes(p.params) for s, p in dw)
    if case.narrow:
        compiled = compile_model(model)
        # The first layer; the second, 40 -> 8, is not of depth 8.
        first = compiled.ops[0]
        assert conv2d.m7_roomy_scratch(first.params)
        assert (compiled.planner.placements()[scratch_buffer(0)].size
                == conv2d.m7_roomy_scratch(first.params)[0])
    rng = np.random.default_rng(11)
    with open_device(f"qemu:{elf}") as dev:
        shape = dev.info().input.shape
        inputs = [rng.integers(-128, 128, size=shape, dtype=np.int8) for _ in range(3)]
        got = [dev.infer(x)[0] for x in inputs]
    for x, out, want in zip(inputs, got, tflite_reference(model, inputs), strict=True):
        np.testing.assert_array_equal(out.ravel(), want.ravel(), err_msg=f"input {x.ravel()[:4]}")
