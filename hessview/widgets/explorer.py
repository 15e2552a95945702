"""``Explorer``: click a test point, see its most influential training points, uncertainty and flag.

One :class:`~hessview.widgets.state.ExplorerState` holds the selection; the views observe it and
read :class:`~hessview.widgets.results.ExplorerResults`, computed once at construction, so a click
costs no gradient computation (Dawid et al., MLST 3, 015002 (2022) for the quantities shown).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import os

import bqplot as bq
import ipywidgets as widgets
import numpy as np
import traitlets

from hessview._io import atomic_path, csv_safe
from hessview.widgets import words
from hessview.widgets.panels import DetailView, GalleryView, label_text
from hessview.widgets.plots import InfluenceView, MainView, SpectrumView
from hessview.widgets.renderers import make_renderer
from hessview.widgets.results import ExplorerResults
from hessview.widgets.retrain_panel import RetrainPanel
from hessview.widgets.state import ExplorerState

logger = logging.getLogger(__name__)

CSV_COLUMNS = (
    "test_index",
    "role",
    "rank",
    "train_index",
    "train_x",
    "train_label",
    "influence",
    "relatif",
)
MAX_K = 10


def _csv_cell(value):
    """A float as its ``repr``; text neutralised against formulas, a lone ``\r`` made ``\n`` (then quoted)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return csv_safe(value).replace("\r\n", "\n").replace("\r", "\n")
    return value


class Explorer(widgets.AppLayout):
    """Interactive explorer of a fitted :class:`hessview.HessianToolbox` on a test set.

    Args:
        toolbox: a fitted toolbox; its ``X_train`` and ``y_train`` feed the gallery. May be None
            when ``results`` and ``X_train`` are given (nothing is computed then).
        X_test: test inputs ``(n_test, ...)`` (unused when ``results`` is given); y_test: optional
            test labels.
        x: control parameter of each test point (e.g. V1/J or temperature); the index if None.
        x_label: name of the control parameter.
        train_x: control parameter of each training point; the index if None.
        render: gallery thumbnails: ``"1d"``, ``"2d"``, a ``Renderer``, a function
            ``example -> widget``, or None to choose from the examples' shape.
        k: number of most helpful and most harmful training points shown (1 to 10).
        n_resamples, seed: resampling uncertainty settings (``toolbox.uncertainty``).
        class_names: names of the classes; X_train, y_train: override the toolbox's training data.
        results: precomputed :class:`ExplorerResults` (skips querying the toolbox).
        title: heading of the app.
        index: the test point selected first; None opens on the most informative one
            (:meth:`ExplorerResults.opening_index`: nearest the decision boundary for a classifier,
            the most uncertain for a regression) and the page says why.
        measurement: what influence measures (``ExplorerResults.from_toolbox``): ``"margin"`` of the
            predicted label (the default for classifiers) or ``"loss"``; None picks ``"margin"`` for
            classifiers and ``"loss"`` otherwise. Ignored when ``results`` is given.
        retrain: the "retrain without the top-k" action (:mod:`~hessview.widgets.retrain_panel`): a
            callable returning ``(toolbox, X_test, y_test)``, called on its first click (the app passes a
            loader, so that nothing is loaded before); None uses ``toolbox``, ``X_test`` and ``y_test``
            when given; False hides the action.

    Attributes:
        state: the shared :class:`ExplorerState` (``index``, ``k``, ``kind``, ``status``).
        results: the precomputed :class:`ExplorerResults`.
        main, influence, gallery, detail, spectrum: the views.
    """

    def __init__(
        self,
        toolbox,
        X_test,
        y_test=None,
        *,
        x=None,
        x_label=None,
        train_x=None,
        render=None,
        k: int = 5,
        n_resamples: int = 200,
        seed: int = 0,
        class_names=None,
        X_train=None,
        y_train=None,
        results=None,
        title=None,
        index: int | None = None,
        measurement: str | None = None,
        retrain=None,
    ):
        # Cheap checks first: the precomputation below queries the toolbox for every test point.
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise TypeError(f"k must be an integer, got {type(k).__name__}")
        if results is not None and not isinstance(results, ExplorerResults):
            raise TypeError(f"results must be ExplorerResults, got {type(results).__name__}")
        if results is None and (toolbox is None or X_test is None):
            raise ValueError("without precomputed results the explorer needs a toolbox and X_test")
        X_train = X_train if X_train is not None else getattr(toolbox, "X_train", None)
        if X_train is None:
            raise ValueError("the toolbox has no X_train: pass X_train= to draw the gallery")
        n_train = results.n_train if results is not None else int(toolbox.n_train)
        if len(X_train) != n_train:
            raise ValueError(f"X_train has {len(X_train)} rows but the toolbox has {n_train} training points")
        if not 1 <= k <= min(MAX_K, n_train):
            raise ValueError(f"k must be between 1 and {min(MAX_K, n_train)}, got {k}")
        renderer = make_renderer(render, tuple(X_train.shape[1:]))
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            n_classes = results.n_classes if results is not None else toolbox.n_classes
            if n_classes is not None and len(class_names) != n_classes:
                raise ValueError(
                    f"class_names has {len(class_names)} names but the model has {n_classes} classes"
                )
        if index is not None and (not isinstance(index, (int, np.integer)) or isinstance(index, bool)):
            raise TypeError(f"index must be an integer or None, got {type(index).__name__}")
        if results is None:
            if measurement is None:
                measurement = "margin" if getattr(toolbox, "n_classes", None) is not None else "loss"
            results = ExplorerResults.from_toolbox(
                toolbox,
                X_test,
                y_test,
                x=x,
                train_x=train_x,
                y_train=y_train,
                n_resamples=n_resamples,
                seed=seed,
                measurement=measurement,
            )
        if index is not None and not 0 <= index < results.n_test:
            raise ValueError(f"test index {index} is outside 0..{results.n_test - 1}")
        self.results = results
        self.class_names = class_names
        self.x_label = x_label or ("control parameter" if x is not None else "test point index")
        self.train_x_label = (
            x_label
            if train_x is not None and x_label
            else ("control parameter" if train_x is not None else "training point index")
        )
        self.renderer = renderer
        self.opening_index = int(results.opening_index() if index is None else index)
        self.state = ExplorerState(
            results.n_test, k=int(k), index=self.opening_index, thumbnail=renderer.mode or ""
        )
        self._order = np.argsort(results.x, kind="stable")

        self.main = MainView(results, x_label=self.x_label, y_label=self._y_label(), on_select=self._select)
        # the same control parameter gets the same axis scale in both plots
        same_axis = x is not None and train_x is not None
        log_x = isinstance(self.main.x_scale, bq.LogScale) if same_axis else None
        self.influence = InfluenceView(
            results, train_x_label=self.train_x_label, log_x=log_x, class_names=class_names
        )
        self.gallery = GalleryView(
            results,
            X_train,
            renderer,
            max_k=min(MAX_K, results.n_train),
            train_x_label=self.train_x_label,
            class_names=class_names,
        )
        self.detail = DetailView(results, x_label=self.x_label, class_names=class_names)
        self.spectrum = SpectrumView(results)
        if retrain is None and toolbox is not None and X_test is not None:
            retrain = lambda: (toolbox, X_test, y_test)  # noqa: E731
        self.retrain_panel = RetrainPanel(retrain or None, results, self.state)
        self.status = widgets.HTML()
        self.status.add_class("hv-status")
        self.export_link = widgets.HTML()
        self.export_link.add_class("hv-export")
        controls = self._controls()
        self.opening = widgets.HTML(self._opening_words(index is None))
        self.opening.add_class("hv-opening")
        self.how_to = widgets.Accordion(
            children=[widgets.HTML(words.how_to_read(results, renderer.describe()))],
            selected_index=None,
        )
        self.how_to.set_title(0, "How to read this")
        self.how_to.add_class("hv-howto")

        super().__init__(
            header=widgets.VBox(
                [
                    widgets.HTML(f"<h3 style='margin:4px 0'>{html.escape(str(title or 'hessview'))}</h3>"),
                    self.opening,
                    self.how_to,
                    controls,
                    self.status,
                ]
            ),
            center=widgets.VBox([self.main.widget, self.influence.widget]),
            right_sidebar=widgets.VBox([self.detail.widget, self.spectrum.widget, self.retrain_panel.widget]),
            footer=self.gallery.widget,
            pane_widths=[0, 3, 2],
            grid_gap="8px",
        )
        # AppLayout accepts only px/fr/% heights; rows sized to their content read best here.
        self.layout.grid_template_rows = "auto auto auto"
        self.add_class("hv-explorer")
        self.state.observe(self._status_changed, "status")
        self.state.observe(self._index_changed, "index")
        self.state.observe(self._ranking_changed, ["k", "kind", "thumbnail"])
        self._refresh(self._all_parts())

    # ---------------------------------------------------------------- wiring
    def _controls(self) -> widgets.HBox:
        self.previous_button = widgets.Button(
            description="previous", icon="arrow-left", tooltip="test point to the left"
        )
        self.next_button = widgets.Button(
            description="next", icon="arrow-right", tooltip="test point to the right"
        )
        self.previous_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(+1))
        self.kind_toggle = widgets.ToggleButtons(
            options=[("influence", "influence"), ("RelatIF", "relatif")],
            value=self.state.kind,
            tooltips=["Koh & Liang influence", "relative influence (RelatIF)"],
        )
        self.k_slider = widgets.IntSlider(
            value=self.state.k,
            min=1,
            max=min(MAX_K, self.results.n_train),
            description="top k",
            continuous_update=False,
        )
        traitlets.link((self.kind_toggle, "value"), (self.state, "kind"))
        traitlets.link((self.k_slider, "value"), (self.state, "k"))
        self.index_box = widgets.BoundedIntText(
            value=self.state.index,
            min=0,
            max=self.results.n_test - 1,
            description="test #",
            layout=widgets.Layout(width="140px"),
        )
        traitlets.link((self.index_box, "value"), (self.state, "index"))
        extra = []
        if len(self.renderer.modes) > 1:
            self.thumbnail_toggle = widgets.ToggleButtons(
                options=list(self.renderer.modes),
                value=self.state.thumbnail,
                tooltips=[f"draw the gallery's examples as {mode}" for mode in self.renderer.modes],
                description="gallery",
            )
            self.thumbnail_toggle.add_class("hv-thumbnail-toggle")
            traitlets.link((self.thumbnail_toggle, "value"), (self.state, "thumbnail"))
            extra.append(self.thumbnail_toggle)
        return widgets.HBox(
            [
                self.previous_button,
                self.next_button,
                self.index_box,
                self.kind_toggle,
                self.k_slider,
                *extra,
                self.export_link,
            ],
            layout=widgets.Layout(flex_flow="row wrap", align_items="center"),
        )

    def _y_label(self) -> str:
        if not self.results.is_classification:
            return "prediction"
        plotted = self.results.plotted_class()
        if plotted is None:
            return "P(predicted class)"
        return f"P({label_text(plotted, self.class_names or ['class 0', 'class 1'])})"

    def _opening_words(self, chosen: bool) -> str:
        """Why the explorer opened on its first test point (HTML)."""
        r, i = self.results, self.opening_index
        where = f"test point #{i} ({html.escape(self.x_label)} = {r.x[i]:.4g})"
        if not chosen:
            return f'<div data-test-index="{i}">Opened on {where}, as asked.</div>'
        if r.is_classification:
            names = self.class_names or [f"class {c}" for c in range(r.n_classes)]
            first, second = np.argsort(r.prediction[i])[::-1][:2]
            why = (
                f"it lies nearest the decision boundary of all {r.n_test} test points: the model gives "
                f"{html.escape(names[first])} p = {r.prediction[i, first]:.3f} and "
                f"{html.escape(names[second])} p = {r.prediction[i, second]:.3f}, so this is where the "
                "training data decide most visibly"
            )
        else:
            width = float(np.max(np.atleast_1d(r.uncertainty_upper[i] - r.uncertainty_lower[i])))
            why = (
                f"its prediction is the most uncertain of all {r.n_test} test points (its "
                f"{r.level:.0%} resampling interval is {width:.3g} wide)"
            )
        return (
            f'<div data-test-index="{i}" style="background:#eef4fb;padding:4px 8px;border-radius:4px">'
            f"<b>Opened on {where}</b> because {why}. Click any other test point to explore it.</div>"
        )

    def _select(self, index: int) -> None:
        try:
            self.state.index = index
        except traitlets.TraitError as error:
            self.state.status = f"Could not select that point: {error}"

    def step(self, direction: int) -> None:
        """Select the neighbouring test point along the control parameter (-1 left, +1 right)."""
        position = int(np.flatnonzero(self._order == self.state.index)[0]) + direction
        self.state.index = int(self._order[min(max(position, 0), len(self._order) - 1)])

    def _all_parts(self):
        s = self.state
        return [
            ("main view", lambda: self.main.show(s.index)),
            ("detail", lambda: self.detail.show(s.index)),
            ("buttons", self._update_buttons),
        ] + self._ranking_parts()

    def _ranking_parts(self):
        s = self.state
        return [
            ("influence view", lambda: self.influence.show(s.index, s.k, s.kind)),
            ("gallery", lambda: self.gallery.show(s.index, s.k, s.kind)),
            ("export", self._update_export),
        ]

    def _index_changed(self, _change) -> None:
        self._refresh(self._all_parts())

    def _ranking_changed(self, change) -> None:
        if change["name"] == "thumbnail":
            if change["new"] not in self.renderer.modes:
                self.state.status = f"Could not draw the gallery as {change['new']!r}"
                return
            self.renderer.mode = change["new"]
            self._refresh(
                [("gallery", lambda: self.gallery.show(self.state.index, self.state.k, self.state.kind))]
            )
            return
        self._refresh(self._ranking_parts())

    def _refresh(self, parts) -> None:
        """Run each view's update; a failing view reports in the status line, the others go on."""
        failures = []
        for name, update in parts:
            try:
                update()
            except Exception as error:
                logger.exception("hessview explorer: updating the %s failed", name)
                failures.append(f"{name}: {type(error).__name__}: {error}")
        s = self.state
        if failures:
            s.status = (
                "Could not update the "
                + "; ".join(failures)
                + ". The other panels show test point #"
                + str(s.index)
                + "."
            )
        else:
            s.status = (
                f"Test point #{s.index} selected ({self.x_label} = "
                f"{self.results.x[s.index]:.4g}); showing the top {s.k} by "
                f"{'influence' if s.kind == 'influence' else 'RelatIF'}."
            )

    def _status_changed(self, change) -> None:
        failed = change["new"].startswith("Could not")
        (self.status.add_class if failed else self.status.remove_class)("hv-status-error")
        colour = "#b00020" if failed else "#333333"
        self.status.value = f'<span style="color:{colour}">{html.escape(change["new"])}</span>'

    def _update_buttons(self) -> None:
        position = int(np.flatnonzero(self._order == self.state.index)[0])
        self.previous_button.disabled = position == 0
        self.next_button.disabled = position == len(self._order) - 1

    def _update_export(self) -> None:
        s = self.state
        payload = base64.b64encode(self.to_csv().encode()).decode()
        self.export_link.value = (
            f'<a download="hessview-test-{s.index}-top{s.k}.csv" '
            f'href="data:text/csv;base64,{payload}" class="jupyter-button" '
            'style="padding:4px 10px;text-decoration:none">Export top-k (CSV)</a>'
        )

    # ---------------------------------------------------------------- public
    def select(self, index: int) -> None:
        """Select test point ``index`` (as a click on it would)."""
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index must be an integer, got {type(index).__name__}")
        if not 0 <= index < self.results.n_test:
            raise ValueError(f"test index {index} is outside 0..{self.results.n_test - 1}")
        self.state.index = int(index)

    def top_k_rows(self) -> list[dict]:
        """Rows of the selected point's top-k table, most helpful first, then most harmful."""
        s, r = self.state, self.results
        rows = []
        for role, chosen in zip(("helpful", "harmful"), r.top_k(s.index, s.k, s.kind), strict=True):
            for rank, train in enumerate(chosen.tolist(), start=1):
                label = None if r.y_train is None else r.y_train[train]
                rows.append(
                    {
                        "test_index": s.index,
                        "role": role,
                        "rank": rank,
                        "train_index": train,
                        "train_x": float(r.train_x[train]),
                        "train_label": "" if label is None else label_text(label, self.class_names),
                        "influence": float(r.influence[s.index, train]),
                        "relatif": float(r.relatif[s.index, train]),
                    }
                )
        return rows

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """Return the selected point's top-k table as CSV text; also write it to ``path`` if given.

        Columns: test_index, role (helpful/harmful), rank, train_index, train_x, train_label,
        influence, relatif (full precision, ``repr`` of the float). Text cells that a spreadsheet would
        read as a formula (a class name starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
        return) get a leading single quote (:func:`hessview._io.csv_safe`), and their line breaks are
        written as ``\n`` inside a quoted cell; numbers are written as they are.
        """
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.top_k_rows():
            writer.writerow({key: _csv_cell(value) for key, value in row.items()})
        text = buffer.getvalue()
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(text)
        return text
