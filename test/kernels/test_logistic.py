"""LOGISTIC against TensorFlow Lite's interpreter (reference kernels), bit for bit.

Every int8 input value goes through a [1, 256] sigmoid model for several input quantizations;
the emitted kernel must equal the numpy reference on the same 256 values; and a small Keras model
with a sigmoid activation is compiled, built on the host and run against LiteRT.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import ai_edge_litert.interpreter as litert  # noqa: E402
import numpy as np
import pytest
import tensorflow as tf  # noqa: E402
from emitted import run_op
from host_build import KERNELS, host_compile

from mcutrain.frontend.graph import Graph, ModelError, Operator, Quant, Tensor
from mcutrain.frontend.tflite_reader import read_tflite
from mcutrain.ops.base import lookup
from tflite_convert import convert_full_int8, convert_keras_int8

ALL_INT8 = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
QUANTIZATIONS = {  # representative data (mean, std): each gives another input scale/zero point
    "unit": (0.0, 1.0), "wide_shifted": (2.0, 5.0), "narrow_negative": (-0.5, 0.2),
    "saturating": (0.0, 20.0),
}


@functools.cache
def sigmoid_model(mean: float, std: float) -> bytes:
    fn = tf.function(tf.sigmoid, input_signature=[tf.TensorSpec((1, 256), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(16):
            yield [rng.normal(mean, std, (1, 256)).astype(np.float32)]

    return convert_full_int8(converter, representative)


def litert_outputs(data: bytes, x: np.ndarray) -> np.ndarray:
    interp = litert.Interpreter(model_content=data,
                                experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def _prepared(data: bytes):
    graph = read_tflite(data)
    (op,) = graph.operators
    assert op.opcode == "LOGISTIC"
    opdef = lookup(op)
    return graph, op, opdef, opdef.prepare(op, graph)


@pytest.mark.parametrize("name", sorted(QUANTIZATIONS))
def test_all_int8_inputs_match_tflite(name: str) -> None:
    data = sigmoid_model(*QUANTIZATIONS[name])
    graph, op, opdef, params = _prepared(data)
    ours = opdef.reference(params, [ALL_INT8])
    theirs = litert_outputs(data, ALL_INT8)
    assert np.array_equal(ours, theirs), f"{int(np.sum(ours != theirs))} of 256 differ"
    assert len(set(theirs.ravel().tolist())) > 8  # the inputs span the curve, not one end


def test_quantizations_differ() -> None:
    scales = {read_tflite(sigmoid_model(*q)).tensors[0].quant.scale[0]
              for q in QUANTIZATIONS.values()}
    assert len(scales) == len(QUANTIZATIONS)


@pytest.mark.parametrize("name", sorted(QUANTIZATIONS))
@pytest.mark.parametrize("in_place", [False, True])
def test_kernel_matches_reference(name: str, in_place: bool) -> None:
    _, _, opdef, params = _prepared(sigmoid_model(*QUANTIZATIONS[name]))
    expected = opdef.reference(params, [ALL_INT8])
    assert np.array_equal(run_op(opdef, params, [ALL_INT8], (1, 256), in_place=in_place),
                          expected)


def _graph(out_scale: float, out_zp: int, out_dtype: str = "int8") -> tuple[Operator, Graph]:
    def quant(scale: float, zp: int) -> Quant:
        return Quant(np.array([scale], np.float32), np.array([zp], np.int64))

    tensors = [Tensor(0, "x", (1, 8), "int8", quant(0.05, 3)),
               Tensor(1, "y", (1, 8), out_dtype, quant(out_scale, out_zp))]
    op = Operator(0, "LOGISTIC", [0], [1], {})
    return op, Graph("g", tensors, [op], [0], [1])


@pytest.mark.parametrize("scale, zp", [(1.0 / 128.0, -128), (1.0 / 256.0, 0)])
def test_rejects_other_output_quantization(scale: float, zp: int) -> None:
    op, graph = _graph(scale, zp)
    with pytest.raises(ModelError) as err:
        lookup(op).prepare(op, graph)
    message = str(err.value)
    assert "\n" not in message and "scale 1/256, zero point -128" in message


def test_rejects_int16_output() -> None:
    op, graph = _graph(1.0 / 256.0, -128, "int16")
    with pytest.raises(ModelError, match="only int8"):
        lookup(op).prepare(op, graph)


# ---- a Keras model with a sigmoid activation, built on the host ------------------------------

_FORWARD_HARNESS = r"""
#include <cstdio>
#include "runtime/model.h"
// Reads inputs from argv[1] one after another, writes each output to stdout's file argv[2].
int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* f = std::fopen(argv[1], "rb");
  FILE* o = std::fopen(argv[2], "wb");
  if (f == nullptr || o == nullptr) return 3;
  while (std::fread(mt::model_input(), 1, mt::kModel.input.bytes, f) == mt::kModel.input.bytes) {
    if (mt::model_invoke() != mt::Status::kOk) return 4;
    std::fwrite(mt::model_output(), 1, mt::kModel.output.bytes, o);
  }
  std::fclose(o);
  return 0;
}
"""


def sigmoid_keras_model() -> tf.keras.Model:
    """Conv -> sigmoid -> Dense: LOGISTIC between two weighted layers."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((6, 6, 2), batch_size=1)
    t = tf.keras.layers.Conv2D(4, 3, activation="sigmoid")(inputs)
    t = tf.keras.layers.Dense(3)(tf.keras.layers.Flatten()(t))
    return tf.keras.Model(inputs, t)


def test_sigmoid_model_host_build_matches_tflite(tmp_path: Path) -> None:
    from mcutrain.compile.codegen import generate_model_source
    from mcutrain.compile.compiler import compile_model

    data = convert_keras_int8(sigmoid_keras_model(), samples=8)
    path = tmp_path / "sigmoid.tflite"
    path.write_bytes(data)
    model = compile_model(path)
    assert [p.op.opcode for p in model.ops] == [
        "CONV_2D", "LOGISTIC", "RESHAPE", "FULLY_CONNECTED"]
    (tmp_path / "model.cc").write_text(generate_model_source(model)[0])
    (tmp_path / "harness.cc").write_text(_FORWARD_HARNESS)
    exe = host_compile([tmp_path / "model.cc", tmp_path / "harness.cc",
                        *sorted(KERNELS.glob("*.cc"))], tmp_path / "run", shared=False)
    rng = np.random.default_rng(3)
    xs = [rng.integers(-128, 128, size=(1, 6, 6, 2), dtype=np.int8) for _ in range(6)]
    (tmp_path / "in.bin").write_bytes(b"".join(x.tobytes() for x in xs))
    subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True)
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.int8).reshape(len(xs), 1, 3)
    for k, x in enumerate(xs):
        assert np.array_equal(got[k], litert_outputs(data, x)), f"input {k}"
