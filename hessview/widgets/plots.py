"""The explorer's bqplot views: test points, influence of every training point, Hessian spectrum.

Each view builds its marks once and only changes their data afterwards (``hold_sync`` batches one
update into one message), so selecting a point sends a few arrays and creates no widget.
"""

from __future__ import annotations

from collections.abc import Callable

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from hessview.widgets.results import ExplorerResults

IN_DISTRIBUTION = "#1f77b4"
EXTRAPOLATION = "#ff7f0e"
HELPFUL = "#1f77b4"
HARMFUL = "#d62728"
NEUTRAL = "#bdbdbd"
_MARGIN = {"top": 40, "bottom": 45, "left": 75, "right": 15}


def axis_scale(values: np.ndarray) -> bq.Scale:
    """A log scale for positive values spanning more than two decades (e.g. V1/J), else linear.

    >>> type(axis_scale(np.array([0.01, 39.0]))).__name__, type(axis_scale(np.array([0.0, 40.0]))).__name__
    ('LogScale', 'LinearScale')
    """
    positive = np.all(values > 0)
    if positive and values.max() / values.min() > 100:
        return bq.LogScale()
    return bq.LinearScale()


def figure(marks, axes, title: str, height: str, *, margin=None, min_width="320px", **kwargs) -> bq.Figure:
    """A full-width bqplot figure of the given height (the explorers' common frame)."""
    return bq.Figure(
        marks=marks,
        axes=axes,
        title=title,
        fig_margin=dict(margin or _MARGIN),
        layout=widgets.Layout(width="100%", height=height, min_width=min_width),
        **kwargs,
    )


class MainView:
    """Test points along the control parameter, their predicted value and RUE interval.

    Points are coloured by the extrapolation flag; clicking one (bqplot selection or element click)
    calls ``on_select(index)``.
    """

    def __init__(
        self,
        results: ExplorerResults,
        *,
        x_label: str,
        y_label: str,
        on_select: Callable[[int], None],
    ):
        self.results = results
        self.on_select = on_select
        value, lower, upper = results.main_value()
        x = results.x
        self.x_scale = axis_scale(x)
        if results.is_classification:
            self.y_scale = bq.LinearScale(min=0.0, max=1.0)
            y_range = np.array([0.0, 1.0])
        else:
            self.y_scale = bq.LinearScale()
            y_range = np.array([np.min(lower), np.max(upper)])
        xy = {"x": self.x_scale, "y": self.y_scale}
        self.intervals = bq.Lines(
            x=np.stack([x, x], axis=1),
            y=np.stack([lower, upper], axis=1),
            scales=xy,
            colors=["#8c8c8c"],
            stroke_width=1.5,
        )
        self.points = bq.Scatter(
            x=x,
            y=value,
            color=results.extrapolation_flag.astype(np.float64),
            scales=dict(xy, color=bq.ColorScale(colors=[IN_DISTRIBUTION, EXTRAPOLATION], min=0, max=1)),
            default_size=64,
            stroke="white",
            interactions={"click": "select", "hover": "tooltip"},
            selected_style={"stroke": "black", "stroke-width": "3"},
            tooltip=bq.Tooltip(
                fields=["index", "x", "y"],
                formats=["", ".4g", ".3f"],
                labels=["test point", x_label, y_label],
            ),
        )
        self.cursor = bq.Lines(
            x=[x[0], x[0]], y=y_range, scales=xy, colors=["black"], line_style="dashed", stroke_width=1
        )
        axes = [
            bq.Axis(scale=self.x_scale, label=x_label),
            bq.Axis(scale=self.y_scale, label=y_label, side="left"),
        ]
        self.figure = figure(
            [self.intervals, self.cursor, self.points], axes, "Test points: click one", "340px"
        )
        legend = widgets.HTML(
            f'<span style="color:{IN_DISTRIBUTION}">&#9679;</span> within the training data &nbsp; '
            f'<span style="color:{EXTRAPOLATION}">&#9679;</span> extrapolation (flagged) &nbsp; '
            f"bars: {results.level:.0%} resampling (RUE) interval"
        )
        self.widget = widgets.VBox([self.figure, legend, bq.Toolbar(figure=self.figure)])
        self.widget.add_class("hv-main")
        self.points.observe(self._selected_changed, "selected")
        self.points.on_element_click(self._element_clicked)

    def _selected_changed(self, change) -> None:
        selected = change["new"]
        if selected is not None and len(selected) > 0:
            self.on_select(int(selected[-1]))

    def _element_clicked(self, _mark, content) -> None:
        self.on_select(int(content["data"]["index"]))

    def show(self, index: int) -> None:
        """Mark ``index`` as the selected point."""
        selected = self.points.selected
        if selected is None or len(selected) != 1 or int(selected[0]) != index:
            self.points.selected = [index]
        self.cursor.x = [self.results.x[index]] * 2


class InfluenceView:
    """Score of every training point for the selected test point against its control parameter.

    Helpful points (positive score) are blue, harmful ones red, zero scores grey; the top ``k`` of
    each sign are circled and carry hover tooltips. The dots are three ``Lines`` curves, one per
    sign, each a single SVG path of zero-length segments drawn with round caps: a click then
    rewrites three path attributes in the browser, where one SVG element per training point cost
    most of a click's redraw (see benchmarks/results/explorer.md).
    """

    SIGNS = (1.0, -1.0, 0.0)  # one curve each: helpful, harmful, zero
    CSS = "<style>.hv-influence .hv-dots path.line { stroke-linecap: round; }</style>"

    def __init__(self, results: ExplorerResults, *, train_x_label: str):
        self.results = results
        self.x_scale, self.y_scale = axis_scale(results.train_x), bq.LinearScale()
        xy = {"x": self.x_scale, "y": self.y_scale}
        self.dots = bq.Lines(
            x=np.repeat(results.train_x, 3),  # per point: twice its position, then a gap
            y=np.full((len(self.SIGNS), 3 * results.n_train), np.nan),
            scales=xy,
            colors=[HELPFUL, HARMFUL, NEUTRAL],
            stroke_width=4,
        )
        self.top = bq.Scatter(
            x=np.zeros(0),
            y=np.zeros(0),
            scales=xy,
            default_size=110,
            fill=False,
            colors=["black"],
            stroke_width=1.5,
            interactions={"hover": "tooltip"},
            tooltip=bq.Tooltip(
                fields=["x", "y", "name"],
                formats=[".4g", ".3g", ""],
                labels=[train_x_label, "score", "training point"],
            ),
            display_names=False,
        )
        self.zero = bq.Lines(
            x=[results.train_x.min(), results.train_x.max()],
            y=[0.0, 0.0],
            scales=xy,
            colors=["#666666"],
            stroke_width=1,
        )
        self.y_axis = bq.Axis(
            scale=self.y_scale, label="influence", side="left", tick_format=".1e", label_offset="55px"
        )
        axes = [bq.Axis(scale=self.x_scale, label=train_x_label), self.y_axis]
        self.figure = figure([self.zero, self.dots, self.top], axes, "", "300px")
        self.figure.add_class("hv-dots")
        self.widget = widgets.VBox([widgets.HTML(self.CSS), self.figure, bq.Toolbar(figure=self.figure)])
        self.widget.add_class("hv-influence")

    @classmethod
    def dot_curves(cls, scores: np.ndarray) -> np.ndarray:
        """The ``y`` of the three curves: each point's score twice then NaN, on its sign's curve only.

        >>> InfluenceView.dot_curves(np.array([2.0, -1.0, 0.0])).tolist()[0]
        [2.0, 2.0, nan, nan, nan, nan, nan, nan, nan]
        """
        sign = np.sign(scores)
        per_point = np.stack([scores, scores, np.full_like(scores, np.nan)], axis=1).reshape(-1)
        return np.stack([np.where(np.repeat(sign == s, 3), per_point, np.nan) for s in cls.SIGNS])

    def show(self, index: int, k: int, kind: str) -> None:
        """Plot the scores for test point ``index`` and circle its top ``k`` of each sign."""
        row = self.results.scores(kind)[index]
        helpful, harmful = self.results.top_k(index, k, kind)
        top = np.concatenate([helpful, harmful])
        name = "influence" if kind == "influence" else "RelatIF"
        self.dots.y = self.dot_curves(row)
        with self.top.hold_sync():
            self.top.x = self.results.train_x[top]
            self.top.y = row[top]
            self.top.names = [f"#{j}" for j in top]
        self.y_axis.label = name
        self.figure.title = f"{name} of each training point on test point #{index}"


def log_abs_eigenvalues(eigenvalues: np.ndarray) -> np.ndarray:
    """Return log10 |lambda|, with exact zeros drawn one decade below the smallest nonzero |lambda|.

    >>> log_abs_eigenvalues(np.array([-0.01, 0.0, 10.0])).tolist()
    [-2.0, -3.0, 1.0]
    """
    magnitude = np.abs(eigenvalues)
    nonzero = magnitude[magnitude > 0]
    floor = nonzero.min() / 10 if nonzero.size else 1.0
    return np.log10(np.where(magnitude > 0, magnitude, floor))


class SpectrumView:
    """The Hessian eigenvalues as log10 |lambda| (negative ones as red crosses) and the damping."""

    def __init__(self, results: ExplorerResults):
        eigenvalues = results.eigenvalues
        rank = np.arange(eigenvalues.size, dtype=np.float64)
        log_abs = log_abs_eigenvalues(eigenvalues)
        negative = eigenvalues < 0
        xy = {"x": bq.LinearScale(), "y": bq.LinearScale()}
        self.positive = bq.Scatter(
            x=rank[~negative], y=log_abs[~negative], scales=xy, colors=[HELPFUL], default_size=8, stroke=None
        )
        self.negative = bq.Scatter(
            x=rank[negative],
            y=log_abs[negative],
            scales=xy,
            colors=[HARMFUL],
            marker="cross",
            default_size=24,
        )
        marks = [self.positive, self.negative]
        if results.damping > 0:
            level = np.log10(results.damping)
            marks.append(
                bq.Lines(
                    x=[0.0, max(rank[-1], 1.0)],
                    y=[level, level],
                    scales=xy,
                    colors=["black"],
                    line_style="dashed",
                )
            )
        axes = [
            bq.Axis(scale=xy["x"], label="eigenvalue rank (ascending)"),
            bq.Axis(scale=xy["y"], label="log10 |lambda|", side="left"),
        ]
        self.figure = figure(marks, axes, "Hessian spectrum", "260px")
        self.note = widgets.HTML(
            f"{eigenvalues.size} eigenvalues, {int(negative.sum())} negative "
            f'(<span style="color:{HARMFUL}">&#10005;</span>); dashed line: damping '
            f"{results.damping:.3g} added before inverting"
        )
        self.widget = widgets.VBox([self.figure, self.note])
        self.widget.add_class("hv-spectrum")
