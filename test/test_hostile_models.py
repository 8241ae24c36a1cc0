"""Real models with one field mutated: each must compile to code TFLite Micro agrees with, or be
refused with one short clean line (issue 6, item 13). The seeded fuzz campaign over the shipped
models lives in test_reader_fuzz.py."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import tflite

import model_mutation as mm
from firmware_support import tflm_interpreter, tflm_reference
from mcutrain.compile.codegen import generate_model_source
from mcutrain.compile.compiler import _prepare, compile_model
from mcutrain.compile.reference import run_reference
from mcutrain.frontend.graph import MESSAGE_LIMIT, ModelError
from mcutrain.frontend.tflite_reader import read_tflite

MODELS = Path(__file__).resolve().parents[1] / "models"
HELLO = (MODELS / "third_party" / "tflm_hello_world_int8.tflite").read_bytes()
SPEECH = (MODELS / "third_party" / "tflm_micro_speech_int8.tflite").read_bytes()
WAND = (MODELS / "third_party" / "arduino_magic_wand_int8.tflite").read_bytes()


def refused(data: bytes, *fragments: str) -> str:
    """compile + codegen must raise ModelError with one clean line containing `fragments`."""
    with pytest.raises(ModelError) as err:
        generate_model_source(compile_model(data))
    message = str(err.value)
    assert_clean(message)
    for fragment in fragments:
        assert fragment in message, message
    return message


def assert_clean(message: str) -> None:
    assert 0 < len(message) <= 300, f"{len(message)} characters"
    assert message.isprintable(), repr(message)


@pytest.mark.parametrize("op", [0, 11], ids=["quantize", "dequantize"])
def test_operator_without_outputs_is_refused(op: int) -> None:
    data = bytearray((MODELS / "test" / "residual_dw_f32io.tflite").read_bytes())
    start = mm.vector_pos(mm.operator(bytes(data), op), mm.OP_OUTPUTS)
    mm.put(data, start - 4, "I", 0)
    refused(bytes(data), "corrupt", "outputs")


def test_fc_whose_data_input_is_a_constant_is_refused() -> None:
    # hello_world op 2 takes its 16 inputs from a constant (1,16)-element weight tensor instead.
    refused(mm.set_op_input(HELLO, 2, 0, 6), "operator 2 (FULLY_CONNECTED)", "constant")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e-40, 0.0, -0.5],
                         ids=["nan", "inf", "-inf", "denormal", "zero", "negative"])
@pytest.mark.parametrize("tensor", [7, 4, 3], ids=["activation", "weights", "bias"])
def test_bad_scales_are_refused_naming_the_tensor(value: float, tensor: int) -> None:
    data = mm.set_scale(HELLO, tensor, value)
    name = read_tflite(HELLO).tensors[tensor].name[:20]
    refused(data, "scale", name)


def test_bad_per_channel_scale_is_refused() -> None:
    refused(mm.set_scale(WAND, 2, float("nan"), element=5), "scale")


def test_reshape_shape_tensor_of_floats_is_refused() -> None:
    data = mm.set_type(SPEECH, 5, tflite.TensorType.FLOAT32)
    refused(data, "RESHAPE", "int32")


@pytest.mark.parametrize("zero_point", [2**40, -(2**40), 2**31])
def test_zero_point_outside_int32_is_refused(zero_point: int) -> None:
    refused(mm.set_zero_point(HELLO, 9, zero_point), "zero point")


@pytest.mark.parametrize(("tensor", "zero_point"), [(7, 200), (7, 128), (0, -129), (9, 300)])
def test_int8_zero_point_outside_int8_is_refused(tensor: int, zero_point: int) -> None:
    # Tensor 7 feeds a RELU clamp: TFLite's lower bound would pass its upper one.
    refused(mm.set_zero_point(HELLO, tensor, zero_point), "zero point", "[-128, 127]")


def test_conv_input_zero_point_near_int32_limit_is_refused() -> None:
    refused(mm.set_zero_point(WAND, 0, 2**31 - 1), "zero point")


def test_bias_zero_point_must_be_zero() -> None:
    refused(mm.set_zero_point(HELLO, 5, 3), "zero point", "bias")


def test_requantization_multiplier_too_large_is_refused() -> None:
    # A conv output scale of 1e-30 needs a left shift past 31 bits (undefined in the kernels).
    refused(mm.set_scale(WAND, 10, 1e-30), "operator 0 (CONV_2D)", "scale")


def power_of_two_fc(output_exponent: int, zero_point: int) -> bytes:
    """hello_world whose last FULLY_CONNECTED has power-of-two scales, the bias scale exactly
    input x weight scale (so TFLite accepts any output scale), output scale 2^output_exponent."""
    data = HELLO
    for tensor, scale in ((8, 2.0**-6), (2, 2.0**-6), (1, 2.0**-12),
                          (9, 2.0**output_exponent)):
        data = mm.set_scale(data, tensor, scale)
    return mm.set_zero_point(data, 9, zero_point)


@pytest.mark.parametrize("zero_point", [-100, 0, 5, 100])
@pytest.mark.parametrize("exponent", [-40, -34, -31])
def test_fc_accumulator_leaving_int32_matches_tflm(exponent: int, zero_point: int) -> None:
    """acc * scale leaves int32 and the output zero point is added on top: the numpy reference
    (and so the firmware, test_reader_fuzz) must give what TFLite Micro gives, its fixed-point
    multiply wrapping the left shift. LiteRT's reference kernels round in double there and give
    something else (INT32_MIN plus the zero point), which is recorded so a change shows."""
    data = power_of_two_fc(exponent, zero_point)
    compiled = compile_model(data)
    xs = np.arange(-128, 128, dtype=np.int8)
    ours = np.array([run_reference(compiled, np.array([[x]], dtype=np.int8)).item() for x in xs])
    tflm = np.array([y.item() for y in tflm_reference(data, [np.array([[x]]) for x in xs])])
    np.testing.assert_array_equal(ours, tflm)
    assert not np.array_equal(tflm, litert_outputs(data, xs))


def litert_outputs(data: bytes, xs: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_content=data,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    for x in xs:
        interp.set_tensor(inp["index"], np.full(inp["shape"], x, dtype=np.int8))
        interp.invoke()
        results.append(interp.get_tensor(out["index"]).copy())
    return np.array(results).reshape(len(xs), -1).squeeze(-1)


def test_opcode_fields_that_disagree_take_the_larger_like_tflite() -> None:
    # builtin_code says RESHAPE (22), deprecated_builtin_code still FULLY_CONNECTED (9): TFLite's
    # GetBuiltinCode takes the larger one.
    out = bytearray(HELLO)
    code = mm.model(HELLO).OperatorCodes(0)
    mm.put(out, mm.field_pos(code, mm.OPCODE_BUILTIN), "i", tflite.BuiltinOperator.RESHAPE)
    assert {op.opcode for op in read_tflite(bytes(out)).operators} == {"RESHAPE"}


def test_vtable_larger_than_its_table_is_refused() -> None:
    # The conv options vtable lists 4 slots; claiming 6 makes the dilation slots point past
    # the 16-byte table, which TFLite's verifier rejects.
    out = bytearray(WAND)
    options = tflite.Conv2DOptions()
    table = mm.operator(WAND, 0).BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    vt = mm.vtable_pos(options)
    assert struct.unpack_from("<H", out, vt)[0] == 12
    mm.put(out, vt, "H", 16)
    mm.put(out, vt + 12, "H", 40)
    mm.put(out, vt + 14, "H", 44)
    refused(bytes(out), "corrupt")


def test_odd_vtable_size_is_refused() -> None:
    out = bytearray(WAND)
    vt = mm.vtable_pos(mm.tensor(WAND, 3))
    mm.put(out, vt, "H", struct.unpack_from("<H", out, vt)[0] + 1)
    refused(bytes(out), "corrupt")


def test_table_field_past_the_end_of_file_is_refused() -> None:
    out = bytearray(HELLO)
    vt = mm.vtable_pos(mm.tensor(HELLO, 2))
    mm.put(out, vt + 2, "H", 0xFFF0)  # table size
    mm.put(out, vt + 4 + 2 * 4, "H", 0xFFE0)  # the quantization slot
    refused(bytes(out), "corrupt")


def test_string_without_terminator_is_refused() -> None:
    out = bytearray(HELLO)
    t = mm.tensor(HELLO, 2)
    start = mm.vector_pos(t, mm.TENSOR_NAME)  # strings are vectors of bytes
    length = struct.unpack_from("<I", out, start - 4)[0]
    out[start + length] = ord("x")
    refused(bytes(out), "corrupt")


def test_messages_are_one_short_printable_line() -> None:
    err = ModelError("tensor 'a\x00b\nc' " + "x" * 8000 + " the end")
    assert len(str(err)) <= MESSAGE_LIMIT and str(err).isprintable()
    assert str(err).endswith("x the end")
    assert str(err).startswith("tensor 'a?b c' xxx")


def test_tensor_name_with_control_bytes_gives_a_clean_message() -> None:
    out = bytearray(mm.set_scale(HELLO, 7, float("nan")))
    start = mm.vector_pos(mm.tensor(HELLO, 7), mm.TENSOR_NAME)
    out[start:start + 4] = b"\x00\n\x1b\x07"
    refused(bytes(out), "scale")


@pytest.mark.parametrize("key", ["dilation_h", "dilation_w"])
def test_absurd_conv_geometry_is_refused_before_any_work(key: str) -> None:
    graph = read_tflite(WAND)
    graph.operators[0].options[key] = 10**9
    with pytest.raises(ModelError) as err:
        _prepare(graph.operators[0], graph)
    assert_clean(str(err.value))
    assert key in str(err.value)


@pytest.mark.parametrize("edges", ["float", "int16"])
def test_int16x8_model_is_told_int8_activations_only(edges: str) -> None:
    """A real 16x8 conversion (TensorFlow's int16-activation ops set), with the converter's
    default float edges or int16 ones: it is full-integer already, so saying "convert with
    full-integer quantization" would be wrong."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((8,), batch_size=1)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(4, activation="relu")(inputs))

    def calibration():
        for _ in range(4):
            yield [np.random.default_rng(0).normal(size=(1, 8)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    if edges == "int16":
        converter.inference_input_type = converter.inference_output_type = tf.int16
    message = refused(converter.convert(), "int16")
    assert "16x8" in message and "int8 activations" in message
    assert "full-integer quantization" not in message


def test_fc_bias_scale_off_the_product_is_refused_like_tflite() -> None:
    # TFLite's FULLY_CONNECTED refuses |in * w - bias| / out > 0.02 (the 2^-30 output scale),
    # in LiteRT and in TFLite Micro (whose Prepare fails, so no tensor is allocated).
    data = mm.set_scale(HELLO, 9, 0.00829096 / 2**30)
    with pytest.raises(RuntimeError, match="scale_diff"):
        litert_outputs(data, np.zeros(1, dtype=np.int8))
    with pytest.raises(RuntimeError, match="allocate tensors"):
        tflm_interpreter(data)
    refused(data, "operator 2 (FULLY_CONNECTED)", "bias")


def test_scales_too_small_to_train_are_refused() -> None:
    """Normal but tiny weight and bias scales of har's last FULLY_CONNECTED: 1/(sx * sw), a
    training coefficient, overflows float32."""
    from mcutrain.train.codegen import generate_training_source
    from mcutrain.train.scheme import load_scheme
    from mcutrain.train.training_graph import build_training

    root = MODELS.parent
    data = (MODELS / "har_cnn1d_int8.tflite").read_bytes()
    fc = [p for p in compile_model(data).ops if p.op.opcode == "FULLY_CONNECTED"][-1]
    for tensor in fc.op.inputs[1:3]:
        data = mm.set_scale(data, tensor, 1.2e-38)
    with pytest.raises(ModelError) as err:
        scheme = load_scheme(root / "train" / "har_adapt.json")
        generate_training_source(build_training(compile_model(data), scheme))
    assert_clean(str(err.value))
    assert "scale" in str(err.value)


@pytest.mark.parametrize("mutant", ["fc_constant_input", "inf_weight_scale", "float_reshape_shape"])
def test_pre_build_hook_stops_on_a_hostile_model_in_one_line(mutant: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    data = {"fc_constant_input": mm.set_op_input(HELLO, 2, 0, 6),
            "inf_weight_scale": mm.set_scale(HELLO, 4, float("inf")),
            "float_reshape_shape": mm.set_type(SPEECH, 5, tflite.TensorType.FLOAT32)}[mutant]
    model = tmp_path / f"{mutant}.tflite"
    model.write_bytes(data)
    environ = dict(os.environ, PLATFORMIO_BUILD_DIR=str(tmp_path / "build"),
                   MCUTRAIN_MODEL=str(model), MCUTRAIN_TRAIN="")
    proc = subprocess.run([sys.executable, "-m", "platformio", "run", "-e", "qemu", "-d",
                           str(MODELS.parent)], env=environ, capture_output=True, text=True,
                          timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in log and "internal error" not in log, log[-2000:]
    errors = [line for line in log.splitlines() if line.startswith("mcutrain: error: ")]
    assert len(errors) == 1, log[-2000:]
    assert_clean(errors[0])


def set_options_type(data: bytes, op: int, options_type: int) -> bytes:
    out = bytearray(data)
    return bytes(mm.put(out, mm.field_pos(mm.operator(data, op), 10), "B", options_type))


def test_softmax_without_options_is_refused_like_tflite() -> None:
    # TFLite zero-fills absent SoftmaxOptions: beta 0, which its Prepare aborts on.
    refused(set_options_type(SPEECH, 3, tflite.BuiltinOptions.NONE), "SoftmaxOptions", "beta")


@pytest.mark.parametrize(("data", "op"), [(HELLO, 0), (WAND, 0)], ids=["fc", "conv"])
def test_options_of_another_operator_are_refused(data: bytes, op: int) -> None:
    # SVDFOptions on a FULLY_CONNECTED or CONV_2D: TFLite's verifier checks the table as SVDF,
    # a table mcutrain's check does not know, so it refuses rather than guess.
    refused(set_options_type(data, op, tflite.BuiltinOptions.SVDFOptions), "corrupt", "type 6")


def test_conv_with_another_operators_options_is_refused_like_tflite() -> None:
    # FullyConnectedOptions on a CONV_2D verify as such; TFLite then runs the conv with zeroed
    # Conv2DOptions (stride 0) and refuses it.
    data = set_options_type(WAND, 0, tflite.BuiltinOptions.FullyConnectedOptions)
    refused(data, "Conv2DOptions", "strides")
