"""Layout checks for the results plots, from the boxes matplotlib's renderer draws: no two texts
(titles, axis and tick labels, value labels, whole legends) overlap, none is cut off by the
figure's edge, and no legend covers a plotted line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import matplotlib.figure as mfigure
import matplotlib.text as mtext
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.legend import Legend
from matplotlib.transforms import Bbox

TOLERANCE_PX = 0.5  # boxes that only touch do not collide
LINE_SAMPLES = 50  # points per line segment tested against legends


def saved_figure(plot: Callable[[], Any]) -> mfigure.Figure:
    """The figure that `plot()` saves (it may close it afterwards: the canvas still draws)."""
    saved: list[mfigure.Figure] = []
    original = mfigure.Figure.savefig

    def record(self: mfigure.Figure, *args: Any, **kwargs: Any) -> Any:
        saved.append(self)
        return original(self, *args, **kwargs)

    with mock.patch.object(mfigure.Figure, "savefig", record):
        plot()
    assert len(saved) == 1, f"expected one saved figure, got {len(saved)}"
    if not isinstance(saved[0].canvas, FigureCanvasAgg):  # plt.close detached it
        FigureCanvasAgg(saved[0])
    return saved[0]


@contextmanager
def _recording_texts() -> Iterator[list[tuple[mtext.Text, Bbox]]]:
    """Every non-empty text the renderer draws (tick labels outside the view are not drawn)."""
    drawn: list[tuple[mtext.Text, Bbox]] = []
    original = mtext.Text.draw

    def record(self: mtext.Text, renderer: Any) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self, self.get_window_extent(renderer)))

    with mock.patch.object(mtext.Text, "draw", record):
        yield drawn


def _overlap(a: Bbox, b: Bbox) -> bool:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width > TOLERANCE_PX and height > TOLERANCE_PX


def _inside(inner: Bbox, outer: Bbox) -> bool:
    return (inner.x0 >= outer.x0 - TOLERANCE_PX and inner.y0 >= outer.y0 - TOLERANCE_PX
            and inner.x1 <= outer.x1 + TOLERANCE_PX and inner.y1 <= outer.y1 + TOLERANCE_PX)


def _line_points(line: Any) -> np.ndarray:
    """Display coordinates along a line, its segments sampled densely."""
    xy = line.axes.transData.transform(np.asarray(line.get_xydata(), dtype=float))
    if len(xy) < 2:
        return xy
    t = np.linspace(0.0, 1.0, LINE_SAMPLES)[:, None]
    return np.concatenate([a + t * (b - a) for a, b in zip(xy[:-1], xy[1:], strict=True)])


def _legend_covers_lines(legend: Legend, box: Bbox) -> list[str]:
    """Lines of the legend's axes (a figure legend: of every axes) that run under it."""
    problems = []
    for axes in [legend.axes] if legend.axes else legend.figure.axes:
        for line in axes.lines if _overlap(box, axes.bbox) else []:
            points = _line_points(line)
            inside = ((points[:, 0] > box.x0) & (points[:, 0] < box.x1)
                      & (points[:, 1] > box.y0) & (points[:, 1] < box.y1))
            if inside.any():
                problems.append(f"a legend covers line {line.get_label()!r} of "
                                f"{axes.get_title()!r}")
    return problems


def layout_problems(fig: mfigure.Figure) -> list[str]:
    """What collides in `fig` once drawn, one line each; empty when the layout is clean."""
    with _recording_texts() as drawn:
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [obj for obj in fig.findobj(Legend) if obj.get_visible()]
    in_legend = {id(t) for leg in legends for t in [*leg.get_texts(), leg.get_title()]}
    boxes = [(repr(text.get_text()), box) for text, box in drawn if id(text) not in in_legend]
    legend_boxes = [(f"legend of {(leg.axes.get_title() if leg.axes else 'figure')!r}",
                     leg.get_window_extent(renderer)) for leg in legends]
    problems = [f"{name} is cut off by the figure's edge"
                for name, box in boxes + legend_boxes if not _inside(box, fig.bbox)]
    everything = boxes + legend_boxes
    for i, (name_a, a) in enumerate(everything):
        problems += [f"{name_a} overlaps {name_b}"
                     for name_b, b in everything[i + 1:] if _overlap(a, b)]
    for leg, (_, box) in zip(legends, legend_boxes, strict=True):
        problems += _legend_covers_lines(leg, box)
    return problems


def figure_texts(fig: mfigure.Figure) -> list[str]:
    """Every text `fig` draws, legends included."""
    with _recording_texts() as drawn:
        fig.canvas.draw()
    return [text.get_text() for text, _ in drawn]
