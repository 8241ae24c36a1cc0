"""Full-integer TFLite conversion settings shared by the tests that build models with TensorFlow.

Each caller keeps its own converter source and calibration data; this only sets what makes a
model "int8 all the way": int8 builtins, int8 input and output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


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
