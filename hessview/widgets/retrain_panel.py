"""The explorer's "retrain without the top-k" action: predicted against actual change, side by side.

For the selected test point, the ``k`` most helpful and the ``k`` most harmful training points (the ones
the explorer shows) are each left out and the model retrained
(:meth:`~hessview.engine.groundtruth.GroundTruthMixin.actual_effect`); the table puts the measured change
of the explorer's measurement beside the two predictions (the sum of the single-point influences and the
Newton step of :meth:`~hessview.engine.groundtruth.GroundTruthMixin.group_influence`), all in the
influence sign convention (positive: the removed points helped this prediction).

The work runs in a background thread on the first click, with progress in the explorer's status line, so
the app keeps answering clicks; answers are cached per (test point, k, ranking). Nothing is computed
when the explorer is built: in the app the toolbox itself is loaded only on the first click (``source``).
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np

logger = logging.getLogger(__name__)

ROLES = ("helpful", "harmful")
MEASURED = {"margin": "margin of the predicted label", "loss": "loss"}


class RetrainPanel:
    """Button, progress and the predicted-against-actual table of the "retrain without the top-k" action.

    Args:
        source: a callable returning ``(toolbox, X_test, y_test)`` (``y_test`` may be None), called once,
            in the background thread, on the first click; None hides the action (nothing to retrain).
        results: the explorer's :class:`~hessview.widgets.results.ExplorerResults` (its measurement, its
            ranking of training points).
        state: the explorer's :class:`~hessview.widgets.state.ExplorerState` (selection, ``k``, ranking,
            and the status line that shows the progress).

    Attributes:
        widget: the panel (CSS class ``hv-retrain``).
        values: ``{(index, k, kind): {"helpful": {...}, "harmful": {...}}}``, each with ``removed``
            (training indices), ``sum_of_influences``, ``newton_step`` (NaN when not available) and
            ``actual``.
    """

    def __init__(self, source: Callable | None, results, state):
        self.source = source
        self.results = results
        self.state = state
        self.values: dict[tuple, dict] = {}
        self._loaded = None
        self._thread: threading.Thread | None = None
        self._running_key: tuple | None = None
        self._progress_text = ""
        self.button = widgets.Button(
            description="Retrain without the top k",
            icon="refresh",
            tooltip="leave out the k most helpful, then the k most harmful training points, retrain, and "
            "compare the measured change with the predicted one",
            layout=widgets.Layout(width="auto"),
        )
        self.button.on_click(lambda _: self.start())
        self.table = widgets.HTML()
        self.table.add_class("hv-retrain-table")
        self.widget = widgets.VBox([widgets.HTML("<b>Ground truth: retraining</b>"), self.button, self.table])
        self.widget.add_class("hv-retrain")
        if source is None:
            self.widget.layout.display = "none"
        state.observe(lambda _: self.show(), ["index", "k", "kind"])
        self.show()

    # ---------------------------------------------------------------- state
    @property
    def key(self) -> tuple:
        """The cache key of the current selection: (test index, k, ranking)."""
        return (int(self.state.index), int(self.state.k), str(self.state.kind))

    @property
    def running(self) -> bool:
        """Whether a retraining is under way."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running retraining (if any); True when none is left running."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    # ---------------------------------------------------------------- actions
    def start(self) -> None:
        """Retrain for the current selection in a background thread (cached answers are shown at once)."""
        key = self.key
        if key in self.values:
            self.show()
            return
        if self.running:
            self.state.status = (
                f"Still retraining for test point #{self._running_key[0]}; try again when it is done."
            )
            return
        self._running_key = key
        self._progress_text = f"Retraining without the top {key[1]} for test point #{key[0]} ..."
        self.button.disabled = True
        self._thread = threading.Thread(target=self._work, args=(key,), daemon=True, name="hessview-retrain")
        self._thread.start()

    def _progress(self, text: str) -> None:
        self._progress_text = text
        self.state.status = text
        if self.key == self._running_key:
            self.table.value = f"<i>{html.escape(text)}</i>"

    def _work(self, key: tuple) -> None:
        index, k, kind = key
        try:
            started = time.perf_counter()
            if self._loaded is None:
                self._progress("Loading the model and its toolbox for retraining ...")
                self._loaded = self.source()
            toolbox, X_test, y_test = self._loaded
            measurement = self.results.measurement
            X = X_test[index : index + 1]
            labels = None if measurement == "margin" or y_test is None else y_test[index : index + 1]
            answer = {}
            for step, (role, removed) in enumerate(
                zip(ROLES, self.results.top_k(index, k, kind), strict=True)
            ):
                self._progress(
                    f"Retraining without the top {len(removed)} {role} training points of test point "
                    f"#{index} ({step + 1} of 2) ..."
                )
                answer[role] = self._compare(toolbox, X, labels, removed, measurement)
            self.values[key] = answer
            seconds = time.perf_counter() - started
            self._finish(f"Retrained for test point #{index} in {seconds:.1f} s: predicted and actual below.")
        except Exception as error:  # reported in the app, which keeps working
            logger.exception("hessview explorer: retraining failed")
            self._finish(f"Could not retrain: {type(error).__name__}: {error}")

    @staticmethod
    def _compare(toolbox, X, labels, removed: np.ndarray, measurement: str) -> dict:
        if removed.size == 0:
            return {"removed": removed, "sum_of_influences": 0.0, "newton_step": 0.0, "actual": 0.0}
        args = {"remove": removed, "measurement": measurement}
        first = float(toolbox.group_influence(X, labels, order=1, **args)[0])
        try:
            newton = float(toolbox.group_influence(X, labels, order=2, **args)[0])
        except ValueError:  # low-rank toolbox: no P x P curvature for the Newton step
            newton = float("nan")
        # no warnings from this thread (filters are process-wide): the retrainings say if they converged
        effect, runs = toolbox._gt_actual_effect(X, labels, removed, measurement, warn=False)
        actual = float(effect[0])
        notes = [
            f"a retraining stopped at gradient norm {r.gradient_norm:.3g}, above its tolerance: the actual "
            "value is approximate"
            for r in runs
            if not r.converged
        ]
        return {
            "removed": removed,
            "sum_of_influences": first,
            "newton_step": newton,
            "actual": actual,
            "notes": notes,
        }

    def _finish(self, text: str) -> None:
        self.button.disabled = False
        self.state.status = text
        self.show()

    # ---------------------------------------------------------------- view
    def show(self) -> None:
        """Draw the table for the current selection (or say what a click on the button would do)."""
        key = self.key
        if key in self.values:
            self.table.value = self._table(key)
            self.button.description = "Retrained (cached)"
            return
        self.button.description = "Retrain without the top k"
        if self.running and key == self._running_key:
            self.table.value = f"<i>{html.escape(self._progress_text)}</i>"
            return
        index, k, _ = key
        self.table.value = (
            f"<span>Leave out the top {k} helpful, then the top {k} harmful training points of test point "
            f"#{index}, retrain, and compare with the prediction (seconds to minutes; the app keeps "
            "working).</span>"
        )

    def _table(self, key: tuple) -> str:
        index, k, _ = key
        answer = self.values[key]
        measured = MEASURED.get(self.results.measurement, self.results.measurement)
        rows = []
        for role in ROLES:
            v = answer[role]
            cells = [v["sum_of_influences"], v["newton_step"], v["actual"]]
            text = ["n/a" if not np.isfinite(c) else f"{c:+.4g}" for c in cells]
            rows.append(
                f'<tr data-role="{role}"><td>top {len(v["removed"])} {role}</td>'
                + "".join(f"<td style='text-align:right'>{t}</td>" for t in text)
                + "</tr>"
            )
        notes = sorted({note for role in ROLES for note in answer[role].get("notes", [])})
        caveat = "".join(f"<div style='color:#b00020'>{html.escape(n)}</div>" for n in notes)
        return (
            f'<table data-test-index="{index}" style="border-collapse:collapse">'
            "<tr><th>left out</th><th>predicted: sum of influences</th><th>predicted: Newton step</th>"
            "<th>actual: retrained</th></tr>" + "".join(rows) + "</table>"
            f"<div style='font-size:90%'>Change of the {html.escape(measured)} of test point #{index} when "
            "those points are left out and the model is retrained, signed like influence: positive means "
            "they helped this prediction (removing them raises the loss or lowers the margin).</div>" + caveat
        )
