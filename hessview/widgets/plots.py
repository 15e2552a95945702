"""The explorer's bqplot views: test points, influence of every training point, Hessian spectrum.

Each view builds its marks once and only changes their data afterwards (``hold_sync`` batches one
update into one message), so selecting a point sends a few arrays and creates no widget.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from hessview.widgets import words
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


def log_positions(values: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, int]:
    """Positions of ``values`` on a log axis: values <= 0 go half the smallest positive value left.

    Returns the positions and how many values were moved. The smallest positive value is taken over
    ``values`` and ``reference`` (the main view's points) together.

    >>> positions, moved = log_positions(np.array([0.0, 0.1, 4.0]), np.array([0.2]))
    >>> positions.tolist(), moved
    ([0.05, 0.1, 4.0], 1)
    """
    values = np.asarray(values, dtype=np.float64)
    positive = np.concatenate([values[values > 0], np.asarray(reference, dtype=np.float64).reshape(-1)])
    positive = positive[positive > 0]
    floor = positive.min() / 2 if positive.size else 1.0
    return np.where(values > 0, values, floor), int((values <= 0).sum())


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
        self.caption = widgets.HTML(
            f'<div class="hv-explain">{words.main_caption(results, y_label, x_label)}</div>'
        )
        self.widget = widgets.VBox([self.figure, self.caption, legend, bq.Toolbar(figure=self.figure)])
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

    def __init__(
        self,
        results: ExplorerResults,
        *,
        train_x_label: str,
        log_x: bool | None = None,
        class_names: list[str] | None = None,
    ):
        self.results = results
        self.train_x_label = train_x_label
        self.class_names = class_names
        if log_x is None:
            log_x = isinstance(axis_scale(results.train_x), bq.LogScale)
        self.x_scale, self.y_scale = (bq.LogScale() if log_x else bq.LinearScale()), bq.LinearScale()
        # where the dots are drawn: on a log axis values <= 0 sit at its left edge (said in the note)
        self.positions, moved = log_positions(results.train_x, results.x) if log_x else (results.train_x, 0)
        xy = {"x": self.x_scale, "y": self.y_scale}
        self.dots = bq.Lines(
            x=np.repeat(self.positions, 3),  # per point: twice its position, then a gap
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
                fields=["name", "y"],
                formats=["", ".3g"],
                labels=["training point", "score"],
            ),
            display_names=False,
        )
        self.zero = bq.Lines(
            x=[self.positions.min(), self.positions.max()],
            y=[0.0, 0.0],
            scales=xy,
            colors=["#666666"],
            stroke_width=1,
        )
        self.y_axis = bq.Axis(
            scale=self.y_scale, label="influence", side="left", tick_format=".1e", label_offset="55px"
        )
        axis_label = f"{train_x_label} (log scale, as above)" if log_x else train_x_label
        axes = [bq.Axis(scale=self.x_scale, label=axis_label), self.y_axis]
        self.figure = figure([self.zero, self.dots, self.top], axes, "", "300px")
        self.figure.add_class("hv-dots")
        self.edge_note = (
            f" {moved} training point{'s' if moved != 1 else ''} at {html.escape(train_x_label)} &le; 0 "
            f"{'are' if moved != 1 else 'is'} drawn at the left edge of the log axis."
            if moved
            else ""
        )
        self.caption = widgets.HTML()
        self.example = widgets.HTML()
        self.widget = widgets.VBox(
            [
                widgets.HTML(self.CSS),
                self.figure,
                self.caption,
                self.example,
                bq.Toolbar(figure=self.figure),
            ]
        )
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
            self.top.x = self.positions[top]
            self.top.y = row[top]
            self.top.names = [
                f"#{j} ({self.train_x_label} = {self.results.train_x[j]:.4g})" for j in top.tolist()
            ]
        self.y_axis.label = name
        self.figure.title = f"{name} of each training point on test point #{index}"
        caption = words.influence_caption(self.results, kind, k) + self.edge_note
        self.caption.value = f'<div class="hv-explain">{caption}</div>'
        strongest = int(np.argmax(np.abs(row))) if row.size and np.any(row != 0) else None
        if strongest is None:
            self.example.value = (
                f'<div class="hv-explain-example" data-test-index="{index}">Every {name} score is 0: '
                "no training point changes this prediction to first order.</div>"
            )
        else:
            sentence = words.influence_sentence(
                self.results,
                index,
                strongest,
                kind,
                class_names=self.class_names,
                train_x_label=self.train_x_label,
            )
            self.example.value = (
                f'<div class="hv-explain-example" data-test-index="{index}" data-train-index="{strongest}" '
                f'data-score="{float(row[strongest])!r}"><b>Strongest:</b> {sentence}</div>'
            )


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
        tuned = (
            ""
            if getattr(results, "damping_lds", None) is None
            else f", chosen by retraining (tune_damping: hold-out LDS {results.damping_lds:.3f})"
        )
        self.note = widgets.HTML(
            f"{eigenvalues.size} eigenvalues, {int(negative.sum())} negative "
            f'(<span style="color:{HARMFUL}">&#10005;</span>); dashed line: damping '
            f"{results.damping:.3g} added before inverting{tuned}"
            f'<div class="hv-explain">{words.spectrum_sentence(results)}</div>'
        )
        self.widget = widgets.VBox([self.figure, self.note])
        self.widget.add_class("hv-spectrum")
