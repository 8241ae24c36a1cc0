"""Helpers shared by the operator modules: type checks, padding, requantization constants.

Each helper reproduces one piece of TensorFlow Lite's Prepare step (kernel_util.cc, padding.h) so
that the constants computed here on the host equal those TFLite computes at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import quant
from ..graph import Graph, ModelError, Operator, Tensor


def fail(op: Operator, message: str) -> ModelError:
    """A one-line ModelError naming the operator: `raise fail(op, "...")`."""
    return ModelError(f"operator {op.index} ({op.opcode}): {message}")


def tensor_at(op: Operator, graph: Graph, position: int) -> Tensor | None:
    """Input tensor at `position`, or None when absent (-1 or beyond the input list)."""
    if position >= len(op.inputs) or op.inputs[position] < 0:
        return None
    return graph.tensor(op.inputs[position])


def output_tensor(op: Operator, graph: Graph, position: int = 0) -> Tensor:
    return graph.tensor(op.outputs[position])


def require_int8_activation(op: Operator, tensor: Tensor, role: str) -> None:
    """An int8 per-tensor quantized activation, else ModelError (int16, float, hybrid, ...)."""
    if tensor.dtype != "int8":
        raise fail(op, f"{role} tensor '{tensor.name}' is {tensor.dtype}; only int8 is supported")
    if tensor.quant is None or tensor.quant.scale.size != 1:
        raise fail(op, f"{role} tensor '{tensor.name}' needs per-tensor int8 quantization")
    if not tensor.scale > 0.0:
        raise fail(op, f"{role} tensor '{tensor.name}' has a non-positive scale")


def require_const(op: Operator, tensor: Tensor | None, role: str, dtype: str) -> Tensor:
    """A constant tensor of `dtype` (weights, bias), else ModelError."""
    if tensor is None:
        raise fail(op, f"{role} is missing")
    if not tensor.is_const:
        raise fail(op, f"{role} tensor '{tensor.name}' must be constant")
    if tensor.dtype != dtype:
        raise fail(op, f"{role} tensor '{tensor.name}' is {tensor.dtype}; expected {dtype}")
    return tensor


def compute_out_size(padding: str, image: int, filt: int, stride: int, dilation: int) -> int:
    """Output extent along one axis, as TFLite's ComputeOutSize."""
    effective = (filt - 1) * dilation + 1
    if padding == "SAME":
        return (image + stride - 1) // stride
    if padding == "VALID":
        return (image + stride - effective) // stride
    raise ValueError(f"padding {padding} is not supported (SAME, VALID)")


def compute_padding(stride: int, dilation: int, image: int, filt: int, out: int) -> int:
    """Leading padding along one axis (TFLite's ComputePaddingWithOffset; the odd extra pixel
    goes at the end and needs no parameter because out-of-image taps are skipped)."""
    effective = (filt - 1) * dilation + 1
    total = max((out - 1) * stride + effective - image, 0)
    return total // 2


@dataclass(frozen=True)
class Window:
    """Spatial geometry of a convolution or pooling window (NHWC, one axis pair)."""

    out_h: int
    out_w: int
    pad_h: int
    pad_w: int


def compute_window(
    padding: str, in_hw: tuple[int, int], filt_hw: tuple[int, int],
    stride: tuple[int, int], dilation: tuple[int, int] = (1, 1),
) -> Window:
    """Output size and leading padding for both axes, as TFLite's ComputePaddingHeightWidth."""
    out_h = compute_out_size(padding, in_hw[0], filt_hw[0], stride[0], dilation[0])
    out_w = compute_out_size(padding, in_hw[1], filt_hw[1], stride[1], dilation[1])
    pad_h = compute_padding(stride[0], dilation[0], in_hw[0], filt_hw[0], out_h)
    pad_w = compute_padding(stride[1], dilation[1], in_hw[1], filt_hw[1], out_w)
    return Window(out_h, out_w, pad_h, pad_w)


def requant_multiplier(real: float) -> tuple[int, int]:
    """(significand, shift) of one real multiplier (TFLite's QuantizeMultiplier)."""
    return quant.quantize_multiplier(real)


def per_channel_multipliers(
    input_scale: float, filter_scales: np.ndarray, output_scale: float, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """int32 significands and shifts for each output channel, as TFLite's
    PopulateConvolutionQuantizationParams: a per-tensor filter scale is used for every channel.
    The effective scale is computed in double from the float32 parameters, in TFLite's order
    (input * filter) / output."""
    scales = np.asarray(filter_scales, dtype=np.float32).ravel()
    if scales.size not in (1, channels):
        raise ModelError(f"filter has {scales.size} scales for {channels} channels")
    significands = np.zeros(channels, dtype=np.int32)
    shifts = np.zeros(channels, dtype=np.int32)
    for c in range(channels):
        filter_scale = quant.as_double(scales[c if scales.size > 1 else 0])
        real = quant.as_double(input_scale) * filter_scale / quant.as_double(output_scale)
        significands[c], shifts[c] = quant.quantize_multiplier(real)
    return significands, shifts


def activation_bounds(op: Operator, output: Tensor) -> tuple[int, int]:
    """int8 clamp bounds of the operator's fused activation (options['activation'])."""
    activation = str(op.options.get("activation", "NONE"))
    try:
        return quant.activation_range(activation, output.scale, output.zero_point)
    except ValueError as exc:
        raise fail(op, str(exc)) from None


def requantize(
    acc: np.ndarray, significand: np.ndarray | int, shift: np.ndarray | int,
    output_zero_point: int, act_min: int, act_max: int,
) -> np.ndarray:
    """int32 accumulators -> int8: multiply, add the output zero point, clamp (TFLite order)."""
    scaled = quant.multiply_by_quantized_multiplier(acc, significand, shift)
    return np.clip(scaled + output_zero_point, act_min, act_max).astype(np.int8)


def flat_size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))
