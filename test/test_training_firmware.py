"""On-device training on the emulated board equals the numpy training reference.

For each (model, scheme) pair the firmware is built with the scheme, booted on QEMU, and trained
sample by sample; after every step the prediction must match, the loss must agree within 1e-5
(relative), and the trainable state read back over serial (int8 weights, int32 biases) must be
byte-identical to the reference's (with an fp32 classifier, its float32 weights too). Together
the pairs exercise every operator's backward rule.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from firmware_support import build_firmware
from mcutrain.compile.compiler import compile_model
from mcutrain.compile.firmware_size import firmware_size
from mcutrain.host.device import open_device
from mcutrain.host.protocol import DeviceError, RequestType
from mcutrain.train.reference import TrainingReference, check_state_equal
from mcutrain.train.scheme import load_scheme
from mcutrain.train.training_graph import build_training

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SCHEMES = ROOT / "test" / "fixtures" / "schemes"
TRAIN_RAM = 256 * 1024

CASES = [
    ("har_cnn1d_int8", "sparse_ratios"),
    ("har_cnn1d_int8", "full_nearest_noqas"),
    ("har_cnn1d_int8", "fp32_classifier"),  # float FC + SOFTMAX: float32 state byte-identical
    ("test/residual_dw_f32io", "full_stochastic"),
    ("test/concat_pool_pertensor_int8", "full_stochastic"),
    ("third_party/tflm_micro_speech_int8", "bias_only"),
    ("third_party/arduino_magic_wand_int8", "last2"),
    ("third_party/tflm_hello_world_int8", "full_mse"),
    # cross-entropy on FULLY_CONNECTED logits; a first layer whose dx would overflow trains
    ("test/wide_logits_int8", "full_stochastic"),
    ("test/wide_logits_int8", "fp32_classifier"),  # float FC on logits, INFER returns logits
    # LOGISTIC and PADV2 backward (the sigmoid between two trained convolutions)
    ("test/logistic_padv2_int8", "full_stochastic"),
]
# Shipped schemes of train/ run on the model they are written for (scripts/benchmark.py
# benchmarks them; CASES above are the fixture pairs it adds).
TRAIN_DIR_CASES = [
    # The paper's model and sparse scheme: its 64x64 stage runs row-streamed in training too,
    # once with the input sent whole and once pulled from the host row by row.
    ("mobilenetv2_w035_128_int8", "mbv2_paper_50kb", False),
    ("mobilenetv2_w035_128_int8", "mbv2_paper_50kb", True),
]
PAIRS = ([(m, SCHEMES / f"{s}.json", False) for m, s in CASES]
         + [(m, ROOT / "train" / f"{s}.json", rows) for m, s, rows in TRAIN_DIR_CASES])


@pytest.mark.parametrize("model_name, scheme_path, input_rows", PAIRS,
                         ids=[f"{m.split('/')[-1]}-{s.stem}{'-rows' if r else ''}"
                              for m, s, r in PAIRS])
def test_training_step_matches_reference(model_name: str, scheme_path: Path,
                                         input_rows: bool) -> None:
    model_path = MODELS / f"{model_name}.tflite"
    program = build_training(compile_model(model_path, pull_input=input_rows),
                             load_scheme(scheme_path))
    assert any(s.pulled is not None for s in program.streams) == input_rows
    reference = TrainingReference(program)
    elf = build_firmware(model_path, scheme=scheme_path, input_rows=input_rows)
    size = firmware_size(elf)
    assert size.ram_bytes <= TRAIN_RAM and size.flash_bytes <= 1024 * 1024, size

    compiled = program.model
    shape = compiled.graph.tensors[compiled.input].shape
    rng = np.random.default_rng(11)
    classes = program.num_classes
    out_n = compiled.graph.tensors[compiled.output].num_elements
    with open_device(f"qemu:{elf}", timeout=60) as board:
        board.reset()
        check_state_equal(reference.state_bytes(), board.read_params())
        for i in range(6):
            x = rng.integers(-128, 128, size=shape, dtype=np.int8)
            label = (int(rng.integers(0, classes)) if classes
                     else rng.normal(size=out_n).astype(np.float32))
            want = reference.step(x, label)
            got = board.train(x, label)
            assert got.prediction == want.prediction, f"step {i}"
            assert got.loss == pytest.approx(want.loss, rel=1e-5, abs=1e-6), f"step {i}"
            check_state_equal(reference.state_bytes(), board.read_params())
        # INFER runs the same forward pass (an fp32 classifier included) with the trained state.
        inferred, _ = board.infer(x)
        want_out = reference.forward(x)[compiled.output]
        assert np.array_equal(inferred.ravel(), want_out.ravel()), "INFER output"
        before = board.read_params()
        evaluated = board.eval(x, label)
        assert board.read_params() == before, "EVAL changed the trainable state"
        assert evaluated.loss == pytest.approx(reference.step(x, label, update=False).loss,
                                               rel=1e-5, abs=1e-6)
        if classes:
            # Past the host's own check, straight to the firmware's.
            label = struct.pack("<H", classes)
            with pytest.raises(DeviceError, match="BAD_LABEL"):
                if input_rows:  # the label is checked before any input row is pulled
                    board.request(RequestType.TRAIN, label)
                else:
                    board.request(RequestType.TRAIN, x.tobytes() + label)
            assert board.read_params() == before, "a refused label changed the state"
        board.reset()
        reference.reset()
        check_state_equal(reference.state_bytes(), board.read_params())
        info = board.info()
        # Peak SRAM is static data + the deepest stack the training steps reached.
        assert 0 < info.stack_used_bytes < info.stack_size_bytes, info
