"""TensorFlow helpers shared by the tests that build models with it: full-integer conversion
and one interpreter run (LiteRT or TFLite Micro) that keeps every tensor.

convert_full_int8 only sets what makes a model "int8 all the way" (int8 builtins, int8 input and
output); each caller keeps its own converter source and calibration data, or, when the data does
not matter, convert_keras_int8 calibrates a Keras model on standard-normal samples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def convert_full_int8(converter: Any, representative: Callable[[], Iterator[list]], *,
                      per_channel: bool = True, legacy_quantizer: bool = False) -> bytes:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    if not per_channel:
        converter._experimental_disable_per_channel = True
    if legacy_quantizer:
        converter.experimental_new_quantizer = False
    return converter.convert()


def convert_keras_int8(model: Any, samples: int = 4, seed: int = 0) -> bytes:
    """A Keras model converted full-int8, calibrated on `samples` standard-normal inputs of its
    input shape (batch 1) drawn from one generator seeded `seed`."""
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape[1:])

    def calibration():
        rng = np.random.default_rng(seed)
        for _ in range(samples):
            yield [rng.normal(size=(1, *shape)).astype(np.float32)]

    return convert_full_int8(tf.lite.TFLiteConverter.from_keras_model(model), calibration)


def run_tflite(model: bytes, x: np.ndarray, reference: bool) -> dict[int, np.ndarray]:
    """Every int8 tensor of one TFLite invocation, by tensor index; reference picks the
    BUILTIN_REF kernels instead of the optimized ones."""
    import tensorflow as tf

    kind = tf.lite.experimental.OpResolverType
    interp = tf.lite.Interpreter(
        model_content=model, experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=kind.BUILTIN_REF if reference else kind.AUTO)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return {d["index"]: interp.get_tensor(d["index"]) for d in interp.get_tensor_details()
            if d["dtype"] == np.int8}


def run_tflm(model: bytes, x: np.ndarray) -> dict[int, np.ndarray]:
    """Every int8 tensor of one TFLite Micro invocation, by tensor index (as run_tflite)."""
    import tflite

    from firmware_support import tflm_interpreter

    interp = tflm_interpreter(model)
    interp.set_input(x, 0)
    interp.invoke()
    count = tflite.Model.GetRootAsModel(model, 0).Subgraphs(0).TensorsLength()
    tensors = (interp.GetTensor(i, 0) for i in range(count))
    return {i: t["tensor_data"] for i, t in enumerate(tensors) if t["dtype"] == np.int8}
