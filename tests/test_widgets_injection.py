"""Text from the user reaches HTML widgets escaped, and the CSV export neutralises spreadsheet formulas.

The explorer is built from hand-made :class:`ExplorerResults` (no toolbox): only the text paths matter.
Every HTML widget in the explorer's tree is read back; the raw tag must never appear in one, and its
escaped form must appear where the text is shown.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re

import ipywidgets as widgets
import numpy as np
import pytest

from hessview.widgets import Explorer, ExplorerResults, HtmlRenderer

ATTACK = "<img src=x onerror=alert(1)>"
ESCAPED = html.escape(ATTACK)
N_TEST, N_TRAIN = 4, 6


def results(n_classes: int = 2) -> ExplorerResults:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(n_classes), size=N_TEST)
    influence = rng.normal(size=(N_TEST, N_TRAIN))
    return ExplorerResults(
        x=np.linspace(0.0, 1.0, N_TEST),
        train_x=np.linspace(0.0, 1.0, N_TRAIN),
        y_test=np.arange(N_TEST) % n_classes,
        y_train=np.arange(N_TRAIN) % n_classes,
        prediction=probabilities,
        influence=influence,
        relatif=influence / 2,
        uncertainty_mean=probabilities,
        uncertainty_std=np.full_like(probabilities, 0.1),
        uncertainty_lower=probabilities / 2,
        uncertainty_upper=(1 + probabilities) / 2,
        level=0.95,
        extrapolation_score=np.arange(N_TEST, dtype=np.float64),
        extrapolation_threshold=1.5,
        extrapolation_flag=np.arange(N_TEST) > 1.5,
        eigenvalues=np.array([-1e-3, 0.5, 2.0]),
        damping=1e-2,
    )


def widget_tree(root) -> list[widgets.Widget]:
    """Every widget reachable from ``root`` through its synced traits (children, marks, axes, ...)."""
    seen, stack, found = set(), [root], []
    while stack:
        item = stack.pop()
        if isinstance(item, widgets.Widget):
            if id(item) in seen:
                continue
            seen.add(id(item))
            found.append(item)
            stack.extend(getattr(item, name) for name in item.keys if name != "comm")
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return found


def html_values(root) -> list[str]:
    """The markup of every widget whose text the browser renders as HTML."""
    values = []
    for widget in widget_tree(root):
        if isinstance(widget, (widgets.HTML, widgets.HTMLMath)):
            values.append(widget.value)
        if getattr(widget, "description_allow_html", False):
            values.append(widget.description)
    return values


def assert_never_raw(explorer) -> str:
    values = html_values(explorer)
    assert values, "no HTML widget found"
    for value in values:
        assert ATTACK not in value
        assert "<img src=x" not in value
    return "\n".join(values)


def explorer(**kwargs) -> Explorer:
    options = dict(
        x=np.linspace(0.0, 1.0, N_TEST),
        train_x=np.linspace(0.0, 1.0, N_TRAIN),
        results=results(),
        X_train=np.random.default_rng(1).normal(size=(N_TRAIN, 8)),
        render="1d",
        k=2,
    )
    options.update(kwargs)
    return Explorer(None, None, **options)


def test_title_is_escaped():
    shown = assert_never_raw(explorer(title=ATTACK))
    assert f">{ESCAPED}</h3>" in shown


def test_x_label_is_escaped_in_every_panel_and_the_status_line():
    ex = explorer(x_label=ATTACK)
    shown = assert_never_raw(ex)
    assert ESCAPED in ex.detail.summary.value  # "x_label = ..."
    assert ESCAPED in ex.status.value  # "Test point #0 selected (x_label = ...)"
    captions = ex.gallery.rows["helpful"].value + ex.gallery.rows["harmful"].value
    assert ESCAPED in captions  # the training points share the label
    assert shown.count(ESCAPED) >= 3
    # bqplot draws axis labels and tooltips as text (d3 .text()), so they keep the raw string
    assert ATTACK in [axis.label for axis in ex.main.figure.axes]


@pytest.mark.parametrize("position", [0, 1])
def test_class_names_are_escaped(position):
    names = ["LL", "CDW"]
    names[position] = ATTACK
    ex = explorer(class_names=names)
    for index in range(N_TEST):
        ex.select(index)
        assert_never_raw(ex)
    shown = "\n".join(html_values(ex))
    assert ESCAPED in ex.detail.interval_table.value  # one row per class
    assert ESCAPED in shown


def test_every_text_argument_at_once_and_after_each_interaction():
    ex = explorer(title=ATTACK, x_label=ATTACK, class_names=[ATTACK, ATTACK + "2"])
    assert_never_raw(ex)
    for action in (
        lambda: ex.select(3),
        lambda: ex.step(-1),
        lambda: setattr(ex.state, "kind", "relatif"),
        lambda: setattr(ex.state, "k", 1),
        lambda: ex._select(999),  # a bad click: its error text goes to the status line
    ):
        action()
        assert_never_raw(ex)


def test_exception_text_in_the_status_line_is_escaped():
    class Hostile(HtmlRenderer):
        def html(self, example):
            raise ValueError(ATTACK)

    ex = explorer(render=Hostile())
    assert ex.state.status.startswith("Could not")
    assert ATTACK in ex.state.status  # the state keeps the message itself ...
    assert ESCAPED in ex.status.value  # ... the widget shows it escaped
    assert_never_raw(ex)


def test_a_user_renderer_is_trusted():
    class Own(HtmlRenderer):
        def html(self, example):
            return '<b class="mine">own markup</b>'

    ex = explorer(render=Own())
    assert '<b class="mine">own markup</b>' in ex.gallery.rows["helpful"].value


FORMULAS = ['=HYPERLINK("http://x","y")', "+1+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1"]


def csv_cells(text: str) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert all(None not in row and len(row) == 8 for row in rows)  # no cell split a row
    return rows


@pytest.mark.parametrize("formula", FORMULAS)
def test_csv_neutralises_formulas_in_text_cells(formula, tmp_path):
    ex = explorer(class_names=[formula, "plain"])
    ex.select(0)
    text = ex.to_csv(tmp_path / "top.csv")
    assert (tmp_path / "top.csv").read_bytes().decode() == text
    rows = csv_cells(text)
    labels = {row["train_label"] for row in rows}
    stored = "'" + formula.replace("\r", "\n")  # a lone carriage return is written as a quoted newline
    assert labels <= {stored, "plain"} and stored in labels
    # numbers stay numbers: negative scores are not prefixed
    scores = [float(row["influence"]) for row in rows]
    assert any(score < 0 for score in scores)
    for row in rows:
        assert not row["influence"].startswith("'") and not row["relatif"].startswith("'")
    # the download link carries the same neutralised table
    payload = re.search(r'base64,([^"]+)"', ex.export_link.value).group(1)
    assert base64.b64decode(payload).decode() == text


def test_csv_leaves_ordinary_labels_alone():
    ex = explorer(class_names=["LL", "CDW-I"])
    assert {row["train_label"] for row in csv_cells(ex.to_csv())} <= {"LL", "CDW-I"}
