"""Headless tests of hessview.Explorer against numbers read directly from a fitted HessianToolbox.

A small MLP learns a 1D "phase transition" (label = control parameter > 0, a few labels flipped so
that both helpful and harmful training points exist). Every panel is checked after a simulated
click against the toolbox's own influence / RelatIF / RUE / extrapolation (the ground truth).
"""

from __future__ import annotations

import base64
import csv
import io
import re
import struct
import zlib

import ipywidgets as widgets
import numpy as np
import pytest
import torch
from support import train_model
from torch import nn

from hessview import HessianToolbox
from hessview.widgets import (
    Explorer,
    ExplorerResults,
    HtmlRenderer,
    LatticeRenderer,
    LineRenderer,
    Renderer,
)
from hessview.widgets.plots import HARMFUL, HELPFUL, NEUTRAL
from hessview.widgets.renderers import HIGH_COLOUR, LINE_GRID, LOW_COLOUR, line_points

N_RESAMPLES = 40
REQUIRED_CLASSES = {
    "hv-main",
    "hv-influence",
    "hv-gallery",
    "hv-uncertainty",
    "hv-extrapolation",
    "hv-status",
    "hv-detail",
}


def fit_toolbox(model, X, y, loss="cross_entropy"):
    train_model(model, X, y, loss=loss, weight_decay=0.01)
    # trained to a minimum: any hessview warning here fails the test
    return HessianToolbox(model, X, y, loss=loss, weight_decay=0.01, progress=False).fit()


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    train_x = torch.linspace(-2, 2, 36, dtype=torch.float64)
    X = torch.stack([train_x, 0.3 * torch.randn(36, dtype=torch.float64)], 1)
    y = (train_x > 0).long()
    y[[15, 16, 21]] = 1 - y[[15, 16, 21]]  # label noise near the transition: harmful points
    tb = fit_toolbox(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)), X, y)
    order = torch.randperm(12)  # test points not sorted along x: prev/next must sort them
    test_x = torch.linspace(-3, 3, 12, dtype=torch.float64)[order]
    X_test = torch.stack([test_x, torch.tensor([0, 0, 4, 0, 0, -4, 0, 0, 4, 0, 0, 0.0])[order]], 1)
    y_test = (test_x > 0).long()
    truth = {
        "prediction": tb.predict(X_test),
        "influence": tb.influence(X_test, y_test),
        "relatif": tb.relatif(X_test, y_test),
        "uncertainty": tb.uncertainty(X_test, y_test, n_resamples=N_RESAMPLES, seed=0),
        "extrapolation": tb.extrapolation(X_test),
    }
    return dict(
        tb=tb,
        X=X,
        y=y,
        train_x=train_x.numpy(),
        X_test=X_test,
        y_test=y_test,
        test_x=test_x.numpy(),
        truth=truth,
    )


def make_explorer(p, **kwargs):
    options = dict(
        x=p["test_x"],
        x_label="V1/J",
        train_x=p["train_x"],
        n_resamples=N_RESAMPLES,
        class_names=["LL", "CDW"],
        k=3,
        measurement="loss",  # the truth above: influence on the loss of the true label
        index=0,
    )
    options.update(kwargs)
    return Explorer(p["tb"], p["X_test"], p["y_test"], **options)


@pytest.fixture
def explorer(problem):
    return make_explorer(problem)


def expected_top(scores_row, k):
    """Ground truth: the k largest positive scores (descending), the k most negative (ascending)."""
    ranked = sorted(range(len(scores_row)), key=lambda j: -scores_row[j])
    helpful = [j for j in ranked if scores_row[j] > 0][:k]
    harmful = [j for j in reversed(ranked) if scores_row[j] < 0][:k]
    return helpful, harmful


def decode_png(data: bytes) -> np.ndarray:
    """Minimal PNG reader (8-bit RGB, filter type 0): the pixels as an (h, w, 3) array."""
    data = bytes(data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        tag, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0] == zlib.crc32(tag + body)
        chunks[tag] = chunks.get(tag, b"") + body
        at += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour_type) == (8, 2)
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def attrs(html, name):
    return re.findall(rf'data-{name}="([^"]*)"', html)


def drawn_dots(view):
    """The influence view's dots as drawn: per training point (position in x), its y and colour.

    Each curve draws a dot as two equal points followed by a NaN gap; every training point must be
    on exactly one curve.
    """
    x = np.asarray(view.dots.x)
    curves = np.asarray(view.dots.y)
    assert curves.shape == (3, x.size) and x.size % 3 == 0
    drawn = np.isfinite(curves)
    assert not drawn[:, 2::3].any()  # the gaps
    np.testing.assert_array_equal(drawn[:, 0::3], drawn[:, 1::3])
    np.testing.assert_array_equal(curves[:, 0::3][drawn[:, 0::3]], curves[:, 1::3][drawn[:, 1::3]])
    np.testing.assert_array_equal(drawn[:, 0::3].sum(0), 1)  # each point on one curve
    np.testing.assert_array_equal(x[0::3], x[1::3])
    curve = np.argmax(drawn[:, 0::3], axis=0)
    y = curves[curve, 3 * np.arange(curve.size)]
    return x[0::3], y, [view.dots.colors[c] for c in curve]


def assert_influence_view_shows(view, train_x, scores):
    x, y, colours = drawn_dots(view)
    np.testing.assert_array_equal(x, train_x)
    np.testing.assert_allclose(y, scores, rtol=1e-12)
    expected = [HELPFUL if s > 0 else HARMFUL if s < 0 else NEUTRAL for s in scores]
    assert colours == expected


def gallery_cards(ex):
    """Per role, the shown cards as (caption html, thumbnail): parsed rows or visible widget cards."""
    out = {}
    for role in ("helpful", "harmful"):
        if ex.gallery.cards is None:
            row = ex.gallery.rows[role].value
            cards = row.split('<div class="hv-card"')[1:]
            out[role] = [(card[card.index('<div class="hv-card-caption"') :], card) for card in cards]
        else:
            out[role] = [
                (caption.value, view)
                for card, caption, view in ex.gallery.cards[role]
                if card.layout.display != "none"
            ]
    return out


def shown_gallery(ex):
    return {
        role: [(int(attrs(c, "train-index")[0]), float(attrs(c, "score")[0])) for c, _ in cards]
        for role, cards in gallery_cards(ex).items()
    }


def svg_line(html):
    """Points ``(n, 2)`` of the one polyline in an HTML fragment."""
    points = re.search(r'<polyline points="([^"]*)"', html).group(1)
    return np.array([[int(v) for v in point.split(",")] for point in points.split()])


def png_of(html):
    payload = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    return decode_png(base64.b64decode(payload))


def assert_panels_show(ex, p, i, kind="influence"):
    truth = p["truth"]
    k = ex.state.k
    assert ex.state.index == i
    # detail: the index as text, the prediction
    assert f"Test point #{i}" in ex.detail.summary.value
    assert attrs(ex.detail.summary.value, "test-index") == [str(i)]
    predicted = int(np.argmax(truth["prediction"][i]))
    assert f"p = {truth['prediction'][i, predicted]:.3f}" in ex.detail.summary.value
    # uncertainty: one row per class with the RUE mean, std and interval
    table = ex.detail.interval_table.value
    unc = truth["uncertainty"]
    for name, values in (("mean", unc.mean), ("std", unc.std), ("lower", unc.lower), ("upper", unc.upper)):
        np.testing.assert_allclose([float(v) for v in attrs(table, name)], values[i], rtol=1e-12)
    np.testing.assert_allclose(ex.detail.means.y, unc.mean[i], rtol=1e-12)
    np.testing.assert_allclose(ex.detail.interval_lines.y, np.stack([unc.lower[i], unc.upper[i]], 1))
    # extrapolation badge
    ext = truth["extrapolation"]
    badge = ex.detail.badge.value
    assert attrs(badge, "flag") == [str(bool(ext.flag[i])).lower()]
    assert float(attrs(badge, "score")[0]) == pytest.approx(ext.score[i], rel=1e-12)
    assert float(attrs(badge, "threshold")[0]) == pytest.approx(ext.threshold, rel=1e-12)
    assert ("EXTRAPOLATION" in badge) == bool(ext.flag[i])
    # influence view and gallery
    scores = truth[kind][i]
    assert_influence_view_shows(ex.influence, p["train_x"], scores)
    helpful, harmful = expected_top(scores.tolist(), k)
    np.testing.assert_allclose(ex.influence.top.y, scores[helpful + harmful], rtol=1e-12)
    np.testing.assert_allclose(ex.influence.top.x, p["train_x"][helpful + harmful])
    assert [name.split(" ")[0] for name in ex.influence.top.names] == [f"#{j}" for j in helpful + harmful]
    assert ex.influence.figure.title.endswith(f"on test point #{i}")
    gallery = shown_gallery(ex)
    assert [j for j, _ in gallery["helpful"]] == helpful
    assert [j for j, _ in gallery["harmful"]] == harmful
    for j, score in gallery["helpful"] + gallery["harmful"]:
        assert score == pytest.approx(scores[j], rel=1e-12)
    # each thumbnail draws its own training example: a line across, its values up (SVG rows down)
    for role, chosen in (("helpful", helpful), ("harmful", harmful)):
        cards = gallery_cards(ex)[role]
        assert len(cards) == len(chosen)
        for (_, thumbnail), j in zip(cards, chosen, strict=True):
            values = p["X"][j].numpy()
            points = svg_line(thumbnail)
            np.testing.assert_array_equal(points[:, 0], np.linspace(0, LINE_GRID, values.size).round())
            height = (points[:, 1].max() - points[:, 1]) / LINE_GRID
            np.testing.assert_allclose(height, (values - values.min()) / np.ptp(values), atol=0.5 / LINE_GRID)
    # main view: the point is selected and the cursor sits on it
    assert list(ex.main.points.selected) == [i]
    assert list(ex.main.cursor.x) == [p["test_x"][i]] * 2
    assert "Could not" not in ex.state.status


def test_fixture_has_both_signs_and_both_flags(problem):
    influence, flags = problem["truth"]["influence"], problem["truth"]["extrapolation"].flag
    assert (influence > 0).any() and (influence < 0).any()
    assert flags.any() and not flags.all()


def test_main_view_matches_toolbox(explorer, problem):
    truth = problem["truth"]
    np.testing.assert_allclose(explorer.main.points.x, problem["test_x"])
    np.testing.assert_allclose(explorer.main.points.y, truth["prediction"][:, 1], rtol=1e-12)
    np.testing.assert_array_equal(explorer.main.points.color, truth["extrapolation"].flag.astype(float))
    np.testing.assert_allclose(explorer.main.intervals.y[:, 0], truth["uncertainty"].lower[:, 1])
    np.testing.assert_allclose(explorer.main.intervals.y[:, 1], truth["uncertainty"].upper[:, 1])


def test_index_argument_opens_on_that_point(explorer, problem):
    assert_panels_show(explorer, problem, 0)
    assert "as asked" in explorer.opening.value


def test_opening_view_is_the_point_nearest_the_decision_boundary(problem):
    explorer = make_explorer(problem, index=None, class_names=["LL", "<b>CDW</b>"])
    p = problem["truth"]["prediction"]
    gap = np.abs(p[:, 1] - p[:, 0])  # two classes: distance of P(class 1) from 1/2, twice
    nearest = int(np.argmin(gap))
    assert np.sort(gap)[1] > gap[nearest]  # a unique answer in this fixture
    assert explorer.state.index == explorer.opening_index == nearest
    assert_panels_show(explorer, problem, nearest)
    text = explorer.opening.value
    assert f"test point #{nearest}" in text and "nearest the decision boundary" in text
    assert f"p = {p[nearest].max():.3f}" in text and f"p = {p[nearest].min():.3f}" in text
    assert "&lt;b&gt;CDW&lt;/b&gt;" in text and "<b>CDW</b>" not in text  # class names escaped
    assert attrs(text, "test-index") == [str(nearest)]


def test_opening_view_of_a_regression_is_the_most_uncertain_point():
    torch.manual_seed(2)
    X = torch.linspace(-1, 1, 20, dtype=torch.float64).unsqueeze(1)
    y = torch.sin(3 * X) + 0.1 * torch.randn_like(X)
    tb = fit_toolbox(nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1)), X, y, loss="mse")
    X_test = torch.linspace(-2, 2, 7, dtype=torch.float64).unsqueeze(1)
    y_test = torch.sin(3 * X_test)
    ex = Explorer(tb, X_test, y_test, x=X_test[:, 0], n_resamples=N_RESAMPLES, k=2)
    unc = tb.uncertainty(X_test, y_test, n_resamples=N_RESAMPLES, seed=0)
    width = np.ravel(unc.upper) - np.ravel(unc.lower)
    assert ex.state.index == int(np.argmax(width))
    assert "most uncertain" in ex.opening.value and f"{width.max():.3g} wide" in ex.opening.value
    assert ex.results.measurement == "loss"  # no margin without classes


def test_click_by_selection_updates_every_panel(explorer, problem):
    for i in range(problem["X_test"].shape[0]):
        explorer.main.points.selected = np.array([i])
        assert_panels_show(explorer, problem, i)


def test_click_by_element_click_message(explorer, problem):
    flagged = int(np.flatnonzero(problem["truth"]["extrapolation"].flag)[0])
    message = {
        "event": "element_click",
        "data": {"x": float(problem["test_x"][flagged]), "y": 0.5, "index": flagged},
    }
    explorer.main.points._handle_custom_msgs(None, message)
    assert_panels_show(explorer, problem, flagged)
    assert "EXTRAPOLATION" in explorer.detail.badge.value


def test_previous_and_next_walk_along_the_control_parameter(explorer, problem):
    order = np.argsort(problem["test_x"])
    explorer.select(int(order[0]))
    assert explorer.previous_button.disabled
    visited = [explorer.state.index]
    for _ in range(len(order) - 1):
        explorer.next_button.click()
        visited.append(explorer.state.index)
    assert visited == order.tolist()
    assert explorer.next_button.disabled and not explorer.previous_button.disabled
    explorer.previous_button.click()
    assert_panels_show(explorer, problem, int(order[-2]))


def test_typing_an_index_selects_it(explorer, problem):
    explorer.index_box.value = 9
    assert_panels_show(explorer, problem, 9)
    explorer.select(3)
    assert explorer.index_box.value == 3


def test_k_slider_changes_gallery_and_highlight(explorer, problem):
    i = int(np.argmax((problem["truth"]["influence"] < 0).sum(1)))
    explorer.select(i)
    for k in (1, 5, 2):
        explorer.k_slider.value = k
        assert explorer.state.k == k
        assert_panels_show(explorer, problem, i)
    assert len(shown_gallery(explorer)["helpful"]) == 2


def test_relatif_toggle(explorer, problem):
    i = 2
    explorer.select(i)
    explorer.kind_toggle.value = "relatif"
    assert explorer.state.kind == "relatif"
    assert_panels_show(explorer, problem, i, kind="relatif")
    assert explorer.influence.y_axis.label == "RelatIF"
    explorer.kind_toggle.value = "influence"
    assert_panels_show(explorer, problem, i)


def test_error_in_a_callback_shows_in_status_and_app_keeps_working(problem):
    class Flaky(LineRenderer):
        fail = False

        def html(self, example):
            if self.fail:
                raise RuntimeError("cannot draw this state")
            return super().html(example)

    renderer = Flaky()
    ex = make_explorer(problem, render=renderer)
    renderer.fail = True
    ex.main.points.selected = np.array([4])
    assert ex.state.index == 4
    assert "gallery" in ex.state.status and "cannot draw this state" in ex.state.status
    assert "hv-status-error" in ex.status._dom_classes
    assert "cannot draw this state" in ex.status.value and "Traceback" not in ex.status.value
    assert "Test point #4" in ex.detail.summary.value  # the other panels still updated
    assert "could not draw this example" in ex.gallery.rows["helpful"].value
    assert shown_gallery(ex)["helpful"]  # the captions still name the training points
    renderer.fail = False
    ex.main.points.selected = np.array([7])
    assert_panels_show(ex, problem, 7)
    assert "hv-status-error" not in ex.status._dom_classes


def test_bad_element_click_reports_instead_of_raising(explorer, problem):
    explorer.select(3)
    explorer.main.points._handle_custom_msgs(None, {"event": "element_click", "data": {"index": 99}})
    assert explorer.state.index == 3
    assert "Could not select" in explorer.state.status


def test_css_classes_present(explorer):
    found, stack = set(), [explorer]
    while stack:
        w = stack.pop()
        found.update(getattr(w, "_dom_classes", ()))
        stack.extend(c for c in getattr(w, "children", ()) if c is not None)
        stack.extend(
            getattr(w, n)
            for n in ("header", "center", "right_sidebar", "footer")
            if isinstance(getattr(w, n, None), widgets.Widget)
        )
    assert REQUIRED_CLASSES <= found


def test_to_csv_matches_toolbox(explorer, problem, tmp_path):
    i = int(np.argmax((problem["truth"]["influence"] < 0).sum(1)))
    explorer.select(i)
    text = explorer.to_csv(tmp_path / "top.csv")
    assert (tmp_path / "top.csv").read_text() == text
    rows = list(csv.DictReader(io.StringIO(text)))
    influence, relatif = problem["truth"]["influence"][i], problem["truth"]["relatif"][i]
    helpful, harmful = expected_top(influence.tolist(), explorer.state.k)
    assert [int(r["train_index"]) for r in rows] == helpful + harmful
    assert [r["role"] for r in rows] == ["helpful"] * len(helpful) + ["harmful"] * len(harmful)
    for r in rows:
        j = int(r["train_index"])
        assert float(r["influence"]) == influence[j] and float(r["relatif"]) == relatif[j]
        assert float(r["train_x"]) == problem["train_x"][j]
        assert r["train_label"] == ["LL", "CDW"][int(problem["y"][j])]
        assert int(r["test_index"]) == i
    link = explorer.export_link.value
    assert f'download="hessview-test-{i}-top{explorer.state.k}.csv"' in link
    payload = re.search(r"base64,([^\"]+)", link).group(1)
    assert base64.b64decode(payload).decode() == text


def test_spectrum_view(explorer, problem):
    eig = problem["tb"].eigenvalues.numpy()
    shown = np.concatenate([explorer.spectrum.positive.y, explorer.spectrum.negative.y])
    np.testing.assert_allclose(np.sort(shown), np.sort(np.log10(np.abs(eig))), rtol=1e-12)
    assert len(explorer.spectrum.negative.y) == int((eig < 0).sum())
    note = explorer.spectrum.note.value
    assert f"damping {problem['tb'].damping_:.3g}" in note
    assert f"{eig.size} eigenvalues, {int((eig < 0).sum())} negative" in note


def test_lattice_and_user_renderers(problem):
    torch.manual_seed(1)
    spins = torch.sign(torch.randn(24, 3, 3, dtype=torch.float64))
    y = (spins.sum((1, 2)) > 0).long()
    tb = fit_toolbox(nn.Sequential(nn.Flatten(), nn.Linear(9, 2)), spins, y)
    ex = Explorer(tb, spins[:4], y[:4], k=2, n_resamples=N_RESAMPLES)
    assert isinstance(ex.gallery.renderer, LatticeRenderer)
    cards = gallery_cards(ex)
    for caption, thumbnail in cards["helpful"] + cards["harmful"]:
        j = int(attrs(caption, "train-index")[0])
        pixels = png_of(thumbnail)
        up = spins[j].numpy() > 0
        np.testing.assert_array_equal(pixels[up], np.broadcast_to(HIGH_COLOUR, (up.sum(), 3)))
        np.testing.assert_array_equal(pixels[~up], np.broadcast_to(LOW_COLOUR, ((~up).sum(), 3)))
    assert len(cards["helpful"] + cards["harmful"]) > 0

    seen = []

    def draw(example):
        seen.append(example)
        return widgets.HTML(f"sum={example.sum():.0f}")

    ex = Explorer(tb, spins[:4], y[:4], k=2, n_resamples=N_RESAMPLES, render=draw)
    shown = [
        int(attrs(c, "train-index")[0]) for role in ("helpful", "harmful") for c, _ in gallery_cards(ex)[role]
    ]
    assert len(seen) == len(shown) > 0
    for example, j in zip(seen, shown, strict=True):
        np.testing.assert_array_equal(example, spins[j].numpy())

    ex = Explorer(tb, spins[:4], y[:4], k=2, n_resamples=N_RESAMPLES, render=lambda e: "not a widget")
    assert "TypeError" in ex.state.status and "must return an ipywidgets Widget" in ex.state.status


def test_regression_toolbox(problem):
    torch.manual_seed(2)
    X = torch.linspace(-1, 1, 20, dtype=torch.float64).unsqueeze(1)
    y = torch.sin(3 * X) + 0.1 * torch.randn_like(X)
    tb = fit_toolbox(nn.Sequential(nn.Linear(1, 5), nn.Tanh(), nn.Linear(5, 1)), X, y, loss="mse")
    X_test = torch.linspace(-2, 2, 6, dtype=torch.float64).unsqueeze(1)
    y_test = torch.sin(3 * X_test)
    ex = Explorer(tb, X_test, y_test, x=X_test[:, 0], n_resamples=N_RESAMPLES, k=2)
    ex.select(5)
    np.testing.assert_allclose(ex.main.points.y, tb.predict(X_test).reshape(-1), rtol=1e-12)
    unc = tb.uncertainty(X_test, y_test, n_resamples=N_RESAMPLES, seed=0)
    table = ex.detail.interval_table.value
    assert float(attrs(table, "mean")[0]) == pytest.approx(float(np.ravel(unc.mean)[5]), rel=1e-12)
    helpful, harmful = expected_top(tb.influence(X_test, y_test)[5].tolist(), 2)
    gallery = shown_gallery(ex)
    assert [j for j, _ in gallery["helpful"]] == helpful
    assert [j for j, _ in gallery["harmful"]] == harmful


def test_results_can_be_reused(explorer, problem):
    again = Explorer(problem["tb"], problem["X_test"], results=explorer.results, k=2)
    again.select(6)
    assert_influence_view_shows(again.influence, problem["train_x"], problem["truth"]["influence"][6])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 0}, ValueError, "k must be between"),
        ({"k": 11}, ValueError, "k must be between"),
        ({"k": "3"}, TypeError, "k must be an integer"),
        ({"x": np.zeros(5)}, ValueError, "x has 5 values"),
        ({"x": np.full(12, np.nan)}, ValueError, "NaN"),
        ({"train_x": np.zeros(3)}, ValueError, "train_x has 3 values"),
        ({"class_names": ["a", "b", "c"]}, ValueError, "class_names has 3 names"),
        ({"render": "3d"}, ValueError, "render must be"),
        ({"render": 42}, TypeError, "render must be"),
        ({"results": {"influence": 1}}, TypeError, "results must be ExplorerResults"),
        ({"n_resamples": 1}, ValueError, "n_resamples"),
        ({"X_train": np.zeros((3, 2))}, ValueError, "X_train has 3 rows"),
    ],
)
def test_bad_arguments(problem, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_explorer(problem, **kwargs)


def test_bad_test_labels_and_empty_test_set(problem):
    with pytest.raises(ValueError, match="y_test"):
        ExplorerResults.from_toolbox(problem["tb"], problem["X_test"], np.zeros(5), n_resamples=4)
    with pytest.raises(ValueError, match="empty"):
        ExplorerResults.from_toolbox(problem["tb"], problem["X_test"][:0], n_resamples=4)


def test_bad_selection(explorer):
    with pytest.raises(ValueError, match="outside"):
        explorer.select(12)
    with pytest.raises(TypeError, match="integer"):
        explorer.select(1.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        explorer.results.top_k(0, 2, "gradient")


def test_renderer_base_and_lattice_shape_errors():
    with pytest.raises(NotImplementedError):
        Renderer().create()
    with pytest.raises(ValueError, match="square lattice"):
        LatticeRenderer().update(LatticeRenderer().create(), np.zeros(5))
    with pytest.raises(ValueError, match="vmax must exceed vmin"):
        LatticeRenderer(vmin=1, vmax=1)
    with pytest.raises(NotImplementedError):
        HtmlRenderer().html(np.zeros(3))
    for bad in (np.array([0.0, np.nan]), np.zeros(0)):
        with pytest.raises(ValueError, match="non-empty and finite"):
            LineRenderer().html(bad)


def test_long_line_thumbnail_keeps_its_extremes():
    """A 924-value state at 150 px: few points, its highest and lowest still drawn where they are."""
    values = np.zeros(924)
    values[[100, 101]] = [0.5, 1.0]
    values[700] = -1.0
    points = svg_line(LineRenderer().html(values))
    assert len(points) <= 2 * 150 + 2
    assert (np.diff(points[:, 0]) > 0).all()
    column = lambda i: round(i * LINE_GRID / 923)  # noqa: E731
    assert [column(101), 0] in points.tolist()  # the maximum, at the top
    assert [column(700), LINE_GRID] in points.tolist()  # the minimum, at the bottom
    assert points[0].tolist() == [0, 500] and points[-1].tolist() == [LINE_GRID, 500]  # zero: half-way


def test_long_line_keeps_the_first_lowest_and_highest_point_of_each_run():
    rng = np.random.default_rng(0)
    for values in (rng.normal(size=924), rng.integers(0, 4, 500).astype(float)):
        edges = np.linspace(0, values.size, 151).astype(int)
        kept = {0, values.size - 1}
        for start, stop in zip(edges[:-1], edges[1:], strict=True):  # brute force, run by run
            kept |= {start + int(np.argmin(values[start:stop])), start + int(np.argmax(values[start:stop]))}
        full = line_points(values)
        np.testing.assert_array_equal(line_points(values, buckets=150), full[sorted(kept)])


def test_html_renderers_as_widgets():
    """The built-in renderers also work as widget renderers (create, then update)."""
    view = LineRenderer().create()
    LineRenderer().update(view, np.array([3.0, 3.0, 3.0]))
    np.testing.assert_array_equal(svg_line(view.value), [[0, 500], [500, 500], [1000, 500]])
    view = LatticeRenderer(vmin=0, vmax=2).create()
    LatticeRenderer(vmin=0, vmax=2).update(view, np.array([[0.0, 1.0], [2.0, 0.0]]))
    pixels = png_of(view.value)
    np.testing.assert_array_equal(pixels[0, 0], LOW_COLOUR)
    np.testing.assert_array_equal(pixels[1, 0], HIGH_COLOUR)
    np.testing.assert_array_equal(pixels[0, 1], np.round((np.array(LOW_COLOUR) + HIGH_COLOUR) / 2))


def test_influence_view_uses_the_main_views_log_scale(problem):
    import bqplot as bq

    # a control parameter over three decades for the test points, training points down to 0
    test_x = np.geomspace(0.01, 40, 12)
    train_x = np.concatenate([[0.0], np.geomspace(0.02, 39, 35)])
    ex = make_explorer(problem, x=test_x, train_x=train_x)
    assert isinstance(ex.main.x_scale, bq.LogScale) and isinstance(ex.influence.x_scale, bq.LogScale)
    x, y, _ = drawn_dots(ex.influence)
    np.testing.assert_array_equal(x[1:], train_x[1:])
    assert x[0] == pytest.approx(0.005)  # half the smallest positive value, at the left edge
    assert "1 training point at V1/J &le; 0 is drawn at the left edge" in ex.influence.caption.value
    assert "log scale" in ex.influence.figure.axes[0].label
    np.testing.assert_allclose(y, problem["truth"]["influence"][0], rtol=1e-12)
    helpful, harmful = expected_top(problem["truth"]["influence"][0].tolist(), 3)
    assert list(ex.influence.top.names) == [f"#{j} (V1/J = {train_x[j]:.4g})" for j in helpful + harmful]

    # a linear main view keeps the influence view linear, even over many decades
    ex = make_explorer(problem, train_x=np.geomspace(0.01, 40, 36))
    assert isinstance(ex.main.x_scale, bq.LinearScale) and isinstance(ex.influence.x_scale, bq.LinearScale)


def test_panels_say_what_their_numbers_mean(explorer, problem):
    i = 2
    explorer.select(i)
    row = problem["truth"]["influence"][i]
    j = int(np.argmax(np.abs(row)))
    example = explorer.influence.example.value
    assert attrs(example, "train-index") == [str(j)]
    verb = "raise" if row[j] > 0 else "lower"
    assert (
        f"Removing training point #{j} (V1/J = {problem['train_x'][j]:.4g}) would {verb} the test loss by "
        in (example)
    )
    assert f"by {abs(row[j]):.2g}:" in example
    assert "cross-entropy in nats" in explorer.influence.caption.value
    assert "above zero (blue) the point is helpful, removing it would raise the test loss" in (
        explorer.influence.caption.value
    )
    headings = {role: explorer.gallery.headings[role].value for role in ("helpful", "harmful")}
    assert "removing one would raise the test loss by the number under it" in headings["helpful"]
    assert "removing one would lower the test loss by the number under it" in headings["harmful"]
    unc = problem["truth"]["uncertainty"]
    c = int(np.argmax(problem["truth"]["prediction"][i]))
    words_ = explorer.detail.uncertainty_words.value
    assert f"[{unc.lower[i, c]:.3g}, {unc.upper[i, c]:.3g}] 95% of the time" in words_
    assert "99% of the training inputs stay below" in explorer.detail.badge.value
    assert "loss per squared weight" in explorer.spectrum.note.value
    assert "probability P(CDW) (0 to 1)" in explorer.main.caption.value
    how_to = explorer.how_to.children[0].value
    assert how_to.count("<li>") == 5 and "removing one would raise the test loss" in how_to
    assert explorer.how_to.get_title(0) == "How to read this"
    p = problem["truth"]["prediction"][i, c]
    assert (
        f"margin m = log p &minus; log(1 &minus; p) = {np.log(p / (1 - p)):.3g}"
        in explorer.detail.summary.value
    )
    explorer.kind_toggle.value = "relatif"
    assert "RelatIF" in explorer.influence.example.value and "no unit" in explorer.influence.caption.value


def test_results_round_trip_keeps_measurement(explorer, tmp_path):
    explorer.results.save(tmp_path / "r.npz")
    again = ExplorerResults.load(tmp_path / "r.npz")
    assert again.measurement == "loss" and again.extrapolation_quantile == pytest.approx(0.99)
    with pytest.raises(ValueError, match="measurement must be one of"):
        ExplorerResults.from_toolbox(explorer.results, None, measurement="logit")


@pytest.fixture(scope="module")
def chain():
    from hessview.datasets import fermi_hubbard_chain

    # a staggered field h1 = 0.01 pins the CDW on 8 sites (with the default 1e-7 the two CDW patterns
    # of a finite chain mix, and the density stays near 1/2)
    return fermi_hubbard_chain(np.linspace(0.0, 10.0, 36), L=8, N=4, h1=0.01, progress=False)


def test_fock_renderer_draws_the_density_profile_of_exact_ground_states(chain):
    from hessview.widgets.renderers import FockRenderer

    low, high = chain.X.min(), chain.X.max()
    scaled = (chain.X - low) / (high - low)  # the demos' global min-max scaling
    renderer = FockRenderer(8, 4, offset=low, scale=high - low)
    for state, density, order in zip(scaled, chain.density, chain.order_parameter, strict=True):
        thumbnail = renderer.html(state)
        drawn = np.array([float(v) for v in attrs(thumbnail, "density")[0].split()])
        np.testing.assert_allclose(drawn, density, rtol=1e-10, atol=1e-13)
        assert float(attrs(thumbnail, "order")[0]) == pytest.approx(order, rel=1e-9, abs=1e-14)
        assert f"O<sub>CDW</sub> = {order:.2g}" in thumbnail
        assert drawn.sum() == pytest.approx(4.0)  # N fermions
    # physics: V1 = 0 is a (nearly) uniform Luttinger liquid, V1/J = 10 a charge-density wave
    uniform = np.array([float(v) for v in attrs(renderer.html(scaled[0]), "density")[0].split()])
    np.testing.assert_allclose(uniform, 0.5, atol=0.05)
    cdw = np.array([float(v) for v in attrs(renderer.html(scaled[-1]), "density")[0].split()])
    assert np.abs(np.diff(cdw)).min() > 0.5
    with pytest.raises(ValueError, match="has 70 amplitudes, got 924"):
        renderer.html(np.zeros(924))
    with pytest.raises(ValueError, match="mode must be one of"):
        FockRenderer(8, 4, mode="spins")


def test_fermi_hubbard_gallery_shows_densities_and_amplitudes_on_demand(explorer, problem, chain):
    order = np.argsort(chain.V1)
    ex = Explorer(
        None,
        None,
        results=explorer.results,
        X_train=chain.X[order],
        render={"kind": "fock", "L": 8, "N": 4},
        x=problem["test_x"],
        train_x=problem["train_x"],
        x_label="V1/J",
        class_names=["LL", "CDW-I"],
        k=3,
    )
    ex.select(5)
    assert ex.thumbnail_toggle.options == ("density", "amplitudes") and ex.state.thumbnail == "density"
    assert "density profile" in ex.gallery.intro.value
    cards = gallery_cards(ex)
    shown = 0
    for role in ("helpful", "harmful"):
        for caption, thumbnail in cards[role]:
            j = int(attrs(caption, "train-index")[0])
            density = [float(v) for v in attrs(thumbnail, "density")[0].split()]
            np.testing.assert_allclose(density, chain.density[order][j], rtol=1e-10, atol=1e-13)
            label = "CDW-I" if problem["y"][j] == 1 else "LL"
            assert f"{label}<br>V1/J = {problem['train_x'][j]:.4g}<br>influence" in caption
            shown += 1
    assert shown > 0
    ex.thumbnail_toggle.value = "amplitudes"
    cards = gallery_cards(ex)
    for caption, thumbnail in cards["helpful"]:
        j = int(attrs(caption, "train-index")[0])
        assert "hv-density" not in thumbnail
        points = svg_line(thumbnail)
        values = chain.X[order][j]
        np.testing.assert_array_equal(points[[0, -1], 0], [0, LINE_GRID])
        top = np.argmax(values)
        assert [round(top * LINE_GRID / (values.size - 1)), 0] in points.tolist()
    assert "Fock-basis amplitudes" in ex.gallery.intro.value
    assert "Could not" not in ex.state.status


def test_default_measurement_is_the_margin_of_the_predicted_label(problem):
    ex = make_explorer(problem, measurement=None, index=None)
    tb, X_test = problem["tb"], problem["X_test"]
    truth = tb.influence(X_test, measurement="margin")  # predicted labels
    assert ex.results.measurement == "margin"
    i = ex.state.index
    assert_influence_view_shows(ex.influence, problem["train_x"], truth[i])
    np.testing.assert_allclose(ex.results.relatif, tb.relatif(X_test, measurement="margin"), rtol=1e-12)
    j = int(np.argmax(np.abs(truth[i])))
    predicted = ["LL", "CDW"][int(np.argmax(problem["truth"]["prediction"][i]))]
    verb = "lower" if truth[i, j] > 0 else "raise"
    assert (
        f"would {verb} the margin of the predicted label ({predicted}) by {abs(truth[i, j]):.2g}"
        in ex.influence.example.value
    )
    assert "m = log p &minus; log(1 &minus; p) in nats" in ex.influence.caption.value
    helpful = ex.gallery.headings["helpful"].value
    assert (
        f"removing one would lower the margin of the predicted label ({predicted}) by the number" in helpful
    )
