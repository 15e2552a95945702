"""``LandscapeExplorer``: a disconnectivity graph whose minima, when clicked, explain themselves.

One :class:`LandscapeState` holds the selection and display choices; the views observe it and never
talk to each other (bqplot's pattern). Selecting a minimum (or a basin from the list) shows the
feature relevance of its monotonic sequence basin (bars, or a lattice heat map for physics inputs),
the basin's conserved-weight matrix and the basin's statistics. Everything drawn is computed from the
landscape when the widget is built or on first selection of a basin (then cached), never re-sampled;
given a :class:`~hessview.landscape.LandscapeSummary` instead (every basin precomputed, for example
read from a file), the widget computes nothing and needs neither torch nor SciPy.
Only the connected set holding the global minimum is drawn; the other sets are listed under the graph.
Every string that reaches an HTML widget (title, status line, feature names, exception text) is escaped
with :func:`html.escape`.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

import bqplot as bq
import ipywidgets as widgets
import numpy as np
from traitlets import Enum, HasTraits, Int, TraitError, Unicode, validate

from hessview.landscape.summary import BasinSummary, LandscapeSummary
from hessview.widgets.plots import figure

if TYPE_CHECKING:
    from hessview.landscape import Landscape

BASIN_COLOURS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
_MARGIN = {"top": 40, "bottom": 50, "left": 65, "right": 15}


class LandscapeState(HasTraits):
    """The explorer's shared state: selected minimum id, colouring, relevance display, status line.

    >>> state = LandscapeState(minimum_ids=[3, 5])
    >>> state.selected = 5
    >>> state.selected = 4
    Traceback (most recent call last):
    ...
    traitlets.traitlets.TraitError: 4 is not the id of a minimum in the graph
    """

    selected = Int(-1, help="id of the selected minimum (-1: none yet)")
    colour_by = Enum(("basin", "accuracy"), default_value="basin", help="colouring of the minima")
    relevance_view = Enum(("bars", "lattice"), default_value="bars", help="how relevance is drawn")
    status = Unicode("", help="one-line status message")

    def __init__(self, minimum_ids: Sequence[int], **kwargs):
        self._ids = {int(m) for m in minimum_ids}
        super().__init__(**kwargs)

    @validate("selected")
    def _check_selected(self, proposal):
        value = proposal["value"]
        if value != -1 and value not in self._ids:
            raise TraitError(f"{value} is not the id of a minimum in the graph")
        return value


def _figure(marks, axes, title: str, height: str, **kwargs) -> bq.Figure:
    return figure(marks, axes, title, height, margin=_MARGIN, min_width="300px", **kwargs)


class LandscapeExplorer(widgets.VBox):
    """Interactive disconnectivity graph of a :class:`~hessview.landscape.Landscape`.

    Args:
        landscape: an explored (and preferably connected) landscape, or a
            :class:`~hessview.landscape.LandscapeSummary` of one (its test data, ``levels``,
            ``temperature`` and ``k`` are then the summary's, and those arguments must be left out).
        X_test, y_test: optional held-out data; enables colouring minima by test accuracy.
        feature_names: names of the input features (default ``x0, x1, ...``).
        lattice_shape: shape to fold the features into for a lattice view (physics inputs):
            ``(12,)`` draws a 12-site chain as a ring of sites, ``(4, 4)`` a heat map of a square lattice.
        levels: number of energy levels of the disconnectivity graph (default 20).
        temperature: temperature of the harmonic-superposition occupation probabilities shown
            (default 0.01).
        title: heading text (shown as text: HTML in it is escaped).
        k: with ``X_test``, the number of top influential training points compared by the basin's
            explanation stability (:meth:`~hessview.landscape.Landscape.explanation_stability`;
            default 10).

    Example (what ``hessview app landscape`` does: every basin computed once, read back without torch)::

        LandscapeSummary.compute(landscape, X_test, y_test).save("explorer.json")
        LandscapeExplorer(LandscapeSummary.load("explorer.json"), feature_names=names)
    """

    def __init__(
        self,
        landscape: Landscape | LandscapeSummary,
        *,
        X_test=None,
        y_test=None,
        feature_names=None,
        lattice_shape: tuple[int, ...] | None = None,
        levels: int | None = None,
        temperature: float | None = None,
        title: str | None = None,
        k: int | None = None,
    ):
        if isinstance(landscape, LandscapeSummary):
            given = [name for name, v in (("X_test", X_test), ("y_test", y_test), ("levels", levels),
                     ("temperature", temperature), ("k", k)) if v is not None]  # fmt: skip
            if given:
                raise ValueError(f"{', '.join(given)}: a LandscapeSummary brings its own; leave them out")
            summary = landscape
        else:
            from hessview.landscape.landscape import Landscape

            if not isinstance(landscape, Landscape):
                kind = type(landscape).__name__
                raise TypeError(f"landscape must be a hessview Landscape or LandscapeSummary, got {kind}")
            if not landscape.minima:
                raise ValueError("the landscape holds no minima: call landscape.explore() first")
            summary = None
        levels = 20 if levels is None else levels
        temperature = 0.01 if temperature is None else temperature
        k = 10 if k is None else k
        n_inputs = summary.n_inputs if summary is not None else landscape.network.n_inputs
        if feature_names is None:
            feature_names = [f"x{i}" for i in range(n_inputs)]
        feature_names = [str(name) for name in feature_names]
        if len(feature_names) != n_inputs:
            raise ValueError(
                f"feature_names has {len(feature_names)} names but the network has {n_inputs} inputs"
            )
        if lattice_shape is not None and (
            len(lattice_shape) not in (1, 2) or int(np.prod(lattice_shape)) != n_inputs
        ):
            raise ValueError(
                f"lattice_shape {tuple(lattice_shape)} must be 1-D or 2-D and hold {n_inputs} features"
            )
        if (X_test is None) != (y_test is None):
            raise ValueError("give both X_test and y_test, or neither")

        if title is not None and not isinstance(title, str):
            raise TypeError(f"title must be a string or None, got {type(title).__name__}")
        n_train = summary.n_train if summary is not None else len(landscape.y)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_train:
            raise ValueError(f"k must be an integer in [1, {n_train}], got {k!r}")
        if summary is None:  # the per-basin numbers are computed on first selection
            summary = LandscapeSummary.compute(
                landscape, X_test, y_test, levels=levels, temperature=temperature, k=k, every_basin=False
            )

        self.summary = summary
        self.landscape = summary.landscape  # None for a summary read from a file
        self.k = summary.k
        self.X_test = summary.X_test
        self.y_test = summary.y_test
        self.feature_names = feature_names
        self.lattice_shape = tuple(lattice_shape) if lattice_shape is not None else None
        self.graph = summary.graph
        self.minimum_ids = self.graph.minimum_ids
        self.records = summary.minima
        self.basins = summary.basins
        self.occupation = summary.occupation
        self.temperature = summary.temperature
        self.accuracy = summary.accuracy
        self._cache: dict[int, BasinSummary] = {}
        self.state = LandscapeState(self.minimum_ids.tolist())

        self._build_graph()
        self._build_relevance()
        self._build_conserved()
        self.stats = widgets.HTML()
        self.stats.add_class("hv-basin-stats")
        self.status = widgets.HTML()
        self.status.add_class("hv-landscape-status")
        controls = self._build_controls()

        right = widgets.VBox(
            [self.relevance_box, self.conserved_figure, self.stats], layout=widgets.Layout(width="45%")
        )
        left = widgets.VBox([self.graph_figure], layout=widgets.Layout(width="55%"))
        heading = widgets.HTML(f"<h3 style='margin:4px 0'>{html.escape(title or 'Energy landscape')}</h3>")
        self.unconnected = widgets.HTML(self._unconnected_html())
        self.unconnected.add_class("hv-unconnected")
        left.children = (*left.children, self.unconnected)
        super().__init__([heading, controls, self.status, widgets.HBox([left, right])])
        self.add_class("hv-landscape-explorer")

        self.state.observe(self._selected_changed, "selected")
        self.state.observe(self._colour_changed, "colour_by")
        self.state.observe(self._relevance_view_changed, "relevance_view")
        self.state.observe(self._status_changed, "status")
        self.state.selected = summary.global_minimum

    # ----------------------------------------------------------------------------- building
    def _build_graph(self) -> None:
        g = self.graph
        self.x_scale, self.y_scale = bq.LinearScale(), bq.LinearScale()
        xy = {"x": self.x_scale, "y": self.y_scale}
        self.branches = bq.Lines(
            x=g.segments[:, :, 0], y=g.segments[:, :, 1], scales=xy, colors=["#555555"], stroke_width=1.2
        )
        self.colour_scale = bq.OrdinalColorScale(colors=BASIN_COLOURS)
        self.points = bq.Scatter(
            x=g.minimum_x,
            y=g.minimum_energy,
            color=self._basin_colours(),
            scales=dict(xy, color=self.colour_scale),
            default_size=60,
            stroke="white",
            interactions={"click": "select", "hover": "tooltip"},
            selected_style={"stroke": "black", "stroke-width": "3"},
            tooltip=bq.Tooltip(fields=["index", "y"], formats=["", ".5g"], labels=["position", "loss"]),
        )
        axes = [
            bq.Axis(scale=self.x_scale, label="minima", num_ticks=0),
            bq.Axis(scale=self.y_scale, label="regularised loss", side="left", tick_format=".3g"),
        ]
        self.graph_figure = _figure(
            [self.branches, self.points], axes, "Disconnectivity graph: click a minimum", "480px"
        )
        self.graph_figure.add_class("hv-landscape-graph")
        self.points.observe(self._points_selected, "selected")

    def _build_relevance(self) -> None:
        self.bar_x, self.bar_y = bq.OrdinalScale(), bq.LinearScale(min=0.0)
        self.bars = bq.Bars(
            x=self.feature_names,
            y=np.zeros(len(self.feature_names)),
            scales={"x": self.bar_x, "y": self.bar_y},
            colors=["#1f77b4"],
        )
        self.relevance_figure = _figure(
            [self.bars],
            [
                bq.Axis(scale=self.bar_x, label="input feature"),
                bq.Axis(scale=self.bar_y, label="relevance", side="left"),
            ],
            "Feature relevance of the basin",
            "260px",
        )
        self.relevance_figure.add_class("hv-relevance")
        children = [self.relevance_figure]
        if self.lattice_shape is not None:
            self.lattice, self.lattice_figure = self._lattice_view()
            self.lattice_figure.add_class("hv-relevance-lattice")
            self.lattice_figure.layout.display = "none"
            children.append(self.lattice_figure)
        self.relevance_box = widgets.VBox(children)

    def _lattice_view(self) -> tuple[bq.Mark, bq.Figure]:
        """A grid heat map for 2-D lattices; sites on a ring for chains (bqplot flattens one-row grids)."""
        colours = bq.ColorScale(scheme="Blues", min=0.0)
        n_sites = int(np.prod(self.lattice_shape))
        if len(self.lattice_shape) == 1 or self.lattice_shape[0] == 1:
            angle = 2 * np.pi * np.arange(n_sites) / n_sites
            sites = bq.Scatter(
                x=np.sin(angle),
                y=np.cos(angle),
                color=np.zeros(n_sites),
                default_size=300,
                scales={
                    "x": bq.LinearScale(min=-1.3, max=1.3),
                    "y": bq.LinearScale(min=-1.3, max=1.3),
                    "color": colours,
                },
                stroke="#444444",
                names=self.feature_names,
                display_names=True,
                interactions={"hover": "tooltip"},
                tooltip=bq.Tooltip(
                    fields=["name", "color"], formats=["", ".3f"], labels=["site", "relevance"]
                ),
            )
            return sites, _figure([sites], [], "Relevance per site (chain drawn as a ring)", "260px")
        grid = bq.GridHeatMap(
            color=np.zeros(self.lattice_shape),
            scales={"row": bq.OrdinalScale(), "column": bq.OrdinalScale(), "color": colours},
        )
        return grid, _figure([grid], [], "Relevance on the lattice", "220px")

    def _build_conserved(self) -> None:
        h = self.summary.hidden
        rows, columns = bq.OrdinalScale(), bq.OrdinalScale()
        self.conserved_map = bq.GridHeatMap(
            color=np.zeros((h, len(self.feature_names))),
            row=[f"h{j}" for j in range(h)],
            column=self.feature_names,
            scales={
                "row": rows,
                "column": columns,
                "color": bq.ColorScale(scheme="Greens", min=0.0, max=1.0),
            },
        )
        axes = [
            bq.Axis(scale=columns, label="input feature"),
            bq.Axis(scale=rows, label="hidden unit", side="left"),
        ]
        self.conserved_figure = _figure(
            [self.conserved_map], axes, "Conserved input weights: |mean| / (|mean| + spread)", "240px"
        )
        self.conserved_figure.add_class("hv-conserved-weights")

    def _build_controls(self) -> widgets.HBox:
        options = [("basin", "basin")] + ([("test accuracy", "accuracy")] if self.accuracy else [])
        self.colour_toggle = widgets.ToggleButtons(options=options, value="basin", description="colour by")
        self.colour_toggle.observe(lambda change: setattr(self.state, "colour_by", change["new"]), "value")
        drawn = set(self.minimum_ids.tolist())
        bottoms = sorted({b for b in self.basins.values() if b in drawn}, key=lambda b: self.records[b].loss)
        sizes = {b: sum(1 for v in self.basins.values() if v == b) for b in bottoms}
        self.basin_picker = widgets.Dropdown(
            options=[(f"bottom {b}: loss {self.records[b].loss:.5g}, {sizes[b]} minima", b) for b in bottoms],
            value=bottoms[0],
            description="basin",
        )
        self.basin_picker.observe(self._basin_picked, "value")
        items = [self.basin_picker, self.colour_toggle]
        if self.lattice_shape is not None:
            self.view_toggle = widgets.ToggleButtons(
                options=[("bars", "bars"), ("lattice", "lattice")], value="bars", description="relevance"
            )
            self.view_toggle.observe(
                lambda change: setattr(self.state, "relevance_view", change["new"]), "value"
            )
            items.append(self.view_toggle)
        return widgets.HBox(items, layout=widgets.Layout(flex_flow="row wrap"))

    # ----------------------------------------------------------------------------- derived data
    def _basin_colours(self) -> np.ndarray:
        bottoms = sorted(set(self.basins.values()), key=lambda b: self.records[b].loss)
        rank = {b: k for k, b in enumerate(bottoms)}
        return np.array([rank[self.basins[int(m)]] for m in self.minimum_ids])

    def basin_analysis(self, minimum_id: int) -> tuple[BasinSummary, np.ndarray]:
        """The basin containing ``minimum_id`` (its minima, conserved weights, ...) and its feature relevance.

        Cached per basin; read from the summary when it holds the basin, else computed from the landscape.
        """
        bottom = self.basins[int(minimum_id)]
        if bottom not in self._cache:
            self._cache[bottom] = self.summary.basin(bottom)
        return self._cache[bottom], self._cache[bottom].relevance

    # ----------------------------------------------------------------------------- observers
    def _points_selected(self, change) -> None:
        selected = change["new"]
        if selected is not None and len(selected) > 0:
            self.state.selected = int(self.minimum_ids[int(selected[-1])])

    def _basin_picked(self, change) -> None:
        if self.basins.get(self.state.selected) != change["new"]:
            self.state.selected = int(change["new"])

    def _selected_changed(self, change) -> None:
        minimum_id = change["new"]
        if minimum_id == -1:
            return
        try:
            self._show(minimum_id)
        except Exception as error:  # noqa: BLE001 - shown in the status line, never as a traceback
            self.state.status = f"could not analyse minimum {minimum_id}: {error}"

    def _show(self, minimum_id: int) -> None:
        position = int(np.flatnonzero(self.minimum_ids == minimum_id)[0])
        if self.points.selected is None or list(self.points.selected) != [position]:
            self.points.selected = [position]
        if self.basin_picker.value != self.basins[minimum_id]:
            self.basin_picker.value = self.basins[minimum_id]
        conserved, relevance = self.basin_analysis(minimum_id)
        with self.bars.hold_sync():
            self.bars.y = relevance
        if self.lattice_shape is not None:
            self.lattice.color = relevance.reshape(np.shape(self.lattice.color))
        self.conserved_map.color = conserved.conservation
        self.stats.value = self._stats_html(minimum_id, conserved)
        top = self.feature_names[int(np.argmax(relevance))]
        self.state.status = (
            f"minimum {minimum_id} selected: basin of {len(conserved.minimum_ids)} "
            f"minima, most relevant feature {top}"
        )

    def basin_stability(self, minimum_id: int) -> np.ndarray | None:
        """Explanation stability of the test points over the basin of ``minimum_id``.

        Cached per basin; ``None`` without test data.
        """
        if self.accuracy is None:
            return None
        return self.basin_analysis(minimum_id)[0].stability

    def _unconnected_html(self) -> str:
        others = self.graph.unconnected
        if not others:
            return "<small>every stored minimum is drawn: one connected set</small>"
        items = "".join(
            f"<li>{len(s)} minima: ids {html.escape(', '.join(str(m) for m in sorted(s)[:12]))}"
            f"{', ...' if len(s) > 12 else ''}</li>"
            for s in others
        )
        return (
            f"<small>not drawn: {len(others)} connected set(s) that no transition state joins to the "
            f"global minimum (run connect()):<ul>{items}</ul></small>"
        )

    def _occupation_text(self, members) -> str:
        total = sum(self.occupation[m] for m in members)
        if np.isfinite(total):
            return f"{total:.3g}"
        return "n/a (landscape built with hessian='hvp': no full Hessian spectrum)"

    def _stats_html(self, minimum_id: int, conserved: BasinSummary) -> str:
        record = self.records[minimum_id]
        members = conserved.minimum_ids
        rows = [
            ("minimum", f"{minimum_id}"),
            ("loss", f"{record.loss:.6g}"),
            ("lowest Hessian eigenvalue", f"{record.lowest_eigenvalue:.3g}"),
            ("times found", f"{record.hits}"),
            ("basin bottom (lowest-energy rule)", f"{self.basins[minimum_id]}"),
            ("minima in basin", f"{len(members)}"),
            (
                "basin loss range",
                f"{min(self.records[m].loss for m in members):.6g} – "
                f"{max(self.records[m].loss for m in members):.6g}",
            ),
            (
                f"basin occupation at T={self.temperature:g}",
                self._occupation_text(members),
            ),
        ]
        if self.accuracy is not None:
            rows.append(("test accuracy", f"{self.accuracy[minimum_id]:.3f}"))
            rows.append(("basin mean test accuracy", f"{np.mean([self.accuracy[m] for m in members]):.3f}"))
            stability = self.basin_stability(minimum_id)
            rows.append((f"explanation stability (top {self.k}, mean over test)", f"{stability.mean():.3f}"))
        body = "".join(
            f"<tr><td>{html.escape(k)}</td><td style='text-align:right'><b>{html.escape(v)}</b></td></tr>"
            for k, v in rows
        )
        return f"<table class='hv-stats-table'>{body}</table>"

    def _colour_changed(self, change) -> None:
        if change["new"] == "accuracy" and self.accuracy is None:
            self.state.status = "no test data given: pass X_test and y_test to colour by accuracy"
            self.state.colour_by = "basin"
            return
        with self.points.hold_sync():
            if change["new"] == "accuracy":
                # the domain follows the data: minima often differ by a few percent only
                self.points.scales = dict(self.points.scales, color=bq.ColorScale(scheme="RdYlGn"))
                self.points.color = np.array([self.accuracy[int(m)] for m in self.minimum_ids])
            else:
                self.points.scales = dict(self.points.scales, color=self.colour_scale)
                self.points.color = self._basin_colours()
        if self.colour_toggle.value != change["new"]:
            self.colour_toggle.value = change["new"]

    def _relevance_view_changed(self, change) -> None:
        lattice = change["new"] == "lattice"
        if self.lattice_shape is None:
            if lattice:
                self.state.status = "no lattice_shape given: relevance is shown as bars"
                self.state.relevance_view = "bars"
            return
        self.relevance_figure.layout.display = "none" if lattice else None
        self.lattice_figure.layout.display = None if lattice else "none"

    def _status_changed(self, change) -> None:
        self.status.value = f"<span>{html.escape(change['new'])}</span>"
