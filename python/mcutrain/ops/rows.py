"""Row bands of NHWC operators, for row-streamed execution (compile/streaming.py).

A band is output rows [y0, y1) computed from a window of input rows. The kernels need no band
variant: a band of CONV_2D or DEPTHWISE_CONV_2D is the same kernel called with a copy of the
operator's params whose input is the window (input_h = rows held) and output the band
(output_h = y1 - y0), and whose top padding moves by the band's offset, so that
`oy * stride_h - pad_h` still lands on the window's row of the tensor row it means. Taps the
copy sees above or below the window are exactly the taps outside the tensor (the planner keeps
every row inside the tensor that the band reads), so implicit padding stays right.
"""

from __future__ import annotations

from typing import Any

from .base import EmitContext, RowGeometry, kernel_name


def spatial_geometry(p: Any) -> list[RowGeometry] | None:
    """The row geometry of a convolution-like operator's input (filter height on axis 1 of its
    weights, OHWI or 1HWC), None when it has more than one batch."""
    if p.input_shape[0] != 1:
        return None
    return [RowGeometry(in_h=p.input_shape[1], out_h=p.output_shape[1], kernel=p.filter.shape[1],
                        stride=p.stride[0], dilation=p.dilation[0], pad=p.pad[0])]


def emit_spatial_band(struct_init: str, ctx: EmitContext, kernel: str, window: str,
                      filt: str, bias: str, output: str, y0: str, y1: str, extra: str) -> str:
    """One band of a conv-like kernel `kernel(params, input, filter, bias, output{extra})`;
    the struct_init defines `kParams`, extra is the variant's trailing arguments."""
    return "\n".join([
        "{",
        struct_init,
        "auto band = kParams;",
        f"band.input_h = {window}.count;",
        f"band.output_h = {y1} - {y0};",
        f"band.pad_h = kParams.pad_h + {window}.first - {y0} * kParams.stride_h;",
        f"{kernel_name(ctx, kernel)}(band, {window}.base, {filt}, {bias}, {output}"
        f"{extra});",
        "}",
    ])


def window_row(window: str, row: str, row_bytes: int) -> str:
    """C++ int8_t* to tensor row `row` inside `window` (which must hold it)."""
    return f"({window}.base + ({row} - {window}.first) * {row_bytes})"
