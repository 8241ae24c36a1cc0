"""Helpers shared by the operator modules: type checks, padding, requantization constants.

Each helper reproduces one piece of TensorFlow Lite's Prepare step (kernel_util.cc, padding.h) so
that the constants computed here on the host equal those TFLite computes at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..frontend.graph import Graph, ModelError, Operator, Tensor
from . import quant


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
        raise fail(op, f"{role} tensor '{tensor.name[:40]}' is {tensor.dtype}; only int8 is "
                       "supported")
    if tensor.quant is None or tensor.quant.scale.size != 1:
        raise fail(op, f"{role} tensor '{tensor.name[:40]}' needs per-tensor int8 quantization")
    if not tensor.scale > 0.0:
        raise fail(op, f"{role} tensor '{tensor.name[:40]}' has a non-positive scale")


def int8_input_output(op: Operator, graph: Graph) -> tuple[Tensor, Tensor]:
    """The data input and the output of a weighted operator, both checked to be int8."""
    x = tensor_at(op, graph, 0)
    if x is None:
        raise fail(op, "input is missing")
    if x.is_const:
        raise fail(op, f"data input '{x.name[:40]}' is a constant; the kernels read it from the "
                       "arena (fold constant layers away before converting)")
    y = output_tensor(op, graph)
    require_int8_activation(op, x, "input")
    require_int8_activation(op, y, "output")
    return x, y


def require_const(op: Operator, tensor: Tensor | None, role: str, dtype: str) -> Tensor:
    """A constant tensor of `dtype` (weights, bias), else ModelError."""
    if tensor is None:
        raise fail(op, f"{role} is missing")
    if not tensor.is_const:
        raise fail(op, f"{role} tensor '{tensor.name[:40]}' must be constant")
    if tensor.dtype != dtype:
        raise fail(op, f"{role} tensor '{tensor.name[:40]}' is {tensor.dtype}; expected {dtype}")
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


MAX_PADDED_VALUES = 1 << 22  # bound on the padded input of a dilated convolution


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


def conv_window(op: Operator, in_hw: tuple[int, int], filt_hw: tuple[int, int],
                pixel_values: int = 1) -> tuple[tuple[int, int], tuple[int, int], Window]:
    """Stride, dilation and window of a CONV_2D / DEPTHWISE_CONV_2D from its options.
    `pixel_values` (batches x channels) sizes the padded input the numpy reference builds."""
    stride = (positive_option(op, "stride_h"), positive_option(op, "stride_w"))
    dilation = (positive_option(op, "dilation_h"), positive_option(op, "dilation_w"))
    # The references pad the input out to the dilated filter's span, where TFLite only skips
    # the taps that fall outside: refuse a span whose padded input could not be allocated
    # (no model that fits a board comes near).
    spans = [(filt_hw[a] - 1) * dilation[a] + 1 + in_hw[a] for a in range(2)]
    if spans[0] * spans[1] * max(pixel_values, 1) > MAX_PADDED_VALUES:
        raise fail(op, f"dilation_h/dilation_w {dilation[0]}/{dilation[1]} spread the "
                       f"{filt_hw[0]}x{filt_hw[1]} filter so far that the padded "
                       f"{in_hw[0]}x{in_hw[1]} input would need {spans[0]}x{spans[1]} pixels; "
                       "the model is corrupt")
    try:
        win = compute_window(str(op.options.get("padding", "SAME")), in_hw, filt_hw, stride,
                             dilation)
    except ValueError as exc:
        raise fail(op, str(exc)) from None
    if win.out_h < 1 or win.out_w < 1:
        raise fail(op, f"the window leaves an empty {win.out_h}x{win.out_w} output")
    return stride, dilation, win


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
        real = real_multiplier(input_scale, scales[c if scales.size > 1 else 0], output_scale)
        significands[c], shifts[c] = quant.quantize_multiplier(real)
    return significands, shifts


def real_multiplier(input_scale: float, filter_scale: float, output_scale: float) -> float:
    """(input_scale * filter_scale) / output_scale in double from float32 parameters, in the
    order TFLite evaluates it (PopulateConvolutionQuantizationParams, reference FC)."""
    return quant.as_double(input_scale) * quant.as_double(filter_scale) / quant.as_double(
        output_scale)


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
    """int32 accumulators -> int8: multiply, add the output zero point, clamp (TFLite order).
    The addition wraps in int32 as TFLite's does (a saturated accumulator plus a positive zero
    point comes out negative there); the firmware's AddOffsetClamp does the same."""
    scaled = quant.multiply_by_quantized_multiplier(acc, significand, shift)
    return np.clip(wrap_int32(scaled + output_zero_point), act_min, act_max).astype(np.int8)


def flat_size(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def filter_quant(op: Operator, tensor: Tensor, channels: int, axis: int) -> np.ndarray:
    """Filter scales (float32, 1 or `channels` entries) of a symmetric int8 weight tensor.

    Rejects missing quantization, a per-channel axis other than `axis`, a scale count that is
    neither 1 nor `channels`, and non-zero zero points (the per-channel kernels have no weight
    offset, exactly like TFLite's)."""
    q = tensor.quant
    if q is None or q.scale.size == 0:
        raise fail(op, f"weights '{tensor.name[:40]}' are not quantized (float or hybrid models "
                       "are "
                       "not supported; convert with full int8 quantization)")
    if q.scale.size not in (1, channels):
        raise fail(op, f"weights '{tensor.name[:40]}' have {q.scale.size} scales for {channels} "
                       "channels")
    if q.scale.size > 1 and q.axis != axis:
        raise fail(op, f"weights '{tensor.name[:40]}' are quantized along axis {q.axis}; "
                       f"expected axis {axis}")
    if np.any(np.asarray(q.zero_point) != 0):
        raise fail(op, f"weights '{tensor.name[:40]}' have a non-zero zero point; int8 weights "
                       "must be symmetric")
    if np.any(np.asarray(q.scale) <= 0):
        raise fail(op, f"weights '{tensor.name[:40]}' have a non-positive scale")
    return np.asarray(q.scale, dtype=np.float32).ravel()


def optional_bias(op: Operator, graph: Graph, position: int, channels: int) -> np.ndarray | None:
    """The constant int32 bias at `position` flattened to [channels], or None when absent."""
    tensor = tensor_at(op, graph, position)
    if tensor is None:
        return None
    require_const(op, tensor, "bias", "int32")
    bias = np.asarray(tensor.data, dtype=np.int32).ravel()
    if bias.size != channels:
        raise fail(op, f"bias '{tensor.name[:40]}' has {bias.size} entries for {channels} channels")
    return bias


INT32_MAX = 2**31 - 1


def accumulator_bound(taps: np.ndarray, input_offset: int, filter_offset: int = 0,
                      n_train: int = 0) -> np.ndarray:
    """The largest |inner sum| each output channel's accumulator can reach, before the bias:
    the sum over its taps (`taps`, int8 [channels, taps]) of |w + filter_offset| times the
    largest |x + input_offset| of an int8 x. Every partial sum of the kernels' inner loops lies
    within it, whatever the order. The first n_train channels train on the device, where a
    weight may become any int8: they count 128 + |filter_offset| for every tap."""
    x_max = max(abs(-128 + input_offset), abs(127 + input_offset))
    w_sum = np.abs(taps.astype(np.int64) + filter_offset).sum(axis=1)
    w_sum[:n_train] = taps.shape[1] * (128 + abs(filter_offset))
    return w_sum * x_max


def check_accumulator(op: Operator, taps: np.ndarray, input_offset: int,
                      filter_offset: int = 0, n_train: int = 0) -> None:
    """Refuse an operator whose inner sum could leave int32 (see accumulator_bound): the
    kernels accumulate in plain signed int32, which this check keeps free of overflow."""
    bound = accumulator_bound(taps, input_offset, filter_offset, n_train)
    if bound.size == 0 or int(bound.max()) <= INT32_MAX:
        return
    channel = int(bound.argmax())
    hint = ("freeze its weights (train its bias or other layers)" if channel < n_train
            else "the weights are corrupt (TFLite would wrap around)")
    raise fail(op, f"output channel {channel} sums {taps.shape[1]} products that can reach "
                   f"{int(bound.max())}, beyond int32; {hint}")


def positive_option(op: Operator, key: str, default: int = 1) -> int:
    """An integer option that must be >= 1 (strides, dilations)."""
    value = int(op.options.get(key, default))
    if value < 1:
        raise fail(op, f"{key} is {value}; it must be at least 1")
    return value


def check_output_shape(op: Operator, output: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(output.shape) != tuple(expected):
        raise fail(op, f"output shape {tuple(output.shape)} differs from the computed "
                       f"{tuple(expected)}")


def padded_input(
    x: np.ndarray, pad: tuple[int, int], window: tuple[int, int], stride: tuple[int, int],
    dilation: tuple[int, int], out_hw: tuple[int, int],
) -> np.ndarray:
    """NHWC `x` with zeros added around H and W so that every tap of every output pixel is in
    range; callers pass x already offset by -zero_point, so zeros stand for skipped taps."""
    after = []
    for axis in range(2):
        extent = (out_hw[axis] - 1) * stride[axis] + (window[axis] - 1) * dilation[axis] + 1
        after.append(max(0, extent - x.shape[1 + axis] - pad[axis]))
    return np.pad(x, ((0, 0), (pad[0], after[0]), (pad[1], after[1]), (0, 0)))


def window_tap(
    xp: np.ndarray, tap: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """The [N, out_h, out_w, C] slice of a padded input that filter tap (fy, fx) reads."""
    y0, x0 = tap[0] * dilation[0], tap[1] * dilation[1]
    return xp[:, y0:y0 + (out_hw[0] - 1) * stride[0] + 1:stride[0],
              x0:x0 + (out_hw[1] - 1) * stride[1] + 1:stride[1], :]


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to the int32 range (what the C++ accumulator does)."""
    return ((np.asarray(x, dtype=np.int64) + 2**31) % 2**32) - 2**31


def struct_init(type_name: str, var: str, fields: list[tuple[str, object]]) -> str:
    """`static const <type> <var> = {...};` with /*name=*/ labels, wrapped at 100 columns.
    Fields must be listed in the C++ struct's declaration order."""
    items = [f"/*{name}=*/{value}," for name, value in fields]
    lines, line = [], "    "
    for item in items:
        if len(line) + len(item) + 1 > 100 and line.strip():
            lines.append(line.rstrip())
            line = "    "
        line += item + " "
    lines.append(line.rstrip())
    return f"static const {type_name} {var} = {{\n" + "\n".join(lines) + "\n};"
