"""LandscapeExplorer, headless: selecting a minimum shows that minimum's basin numbers."""

import numpy as np
import pytest
import torch

from hessview.landscape import Landscape, LandscapeSummary
from hessview.widgets.landscape_explorer import LandscapeExplorer


@pytest.fixture(scope="module")
def landscape():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    land = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=0).explore(25, progress=False)
    land.connect(progress=False)
    assert len(land.minima) >= 2 and land.transition_states
    return land


@pytest.fixture(scope="module")
def test_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(int)


def independent_accuracy(land, coords, X, y):
    """The network on inputs standardised with the training set's mean and standard deviation."""
    mean, std = land.X_raw.mean(0), land.X_raw.std(0)
    w1, b1, w2, b2 = land.network.unpack(torch.tensor(coords))
    logits = torch.tanh(torch.tensor((X - mean) / std) @ w1.T + b1) @ w2.T + b2
    return float((logits.argmax(1).numpy() == y).mean())


def test_selecting_a_minimum_updates_every_panel(landscape, test_data):
    explorer = LandscapeExplorer(
        landscape, X_test=test_data[0], y_test=test_data[1], feature_names=["a", "b"], lattice_shape=(2,)
    )
    assert len(landscape.minima) >= 2
    basins = landscape.basins()
    ids = explorer.minimum_ids.tolist()
    for position in (len(ids) - 1, 0):
        minimum = ids[position]
        explorer.points.selected = [position]
        assert explorer.state.selected == minimum
        bottom = basins[minimum]
        members = sorted(m for m, b in basins.items() if b == bottom)
        np.testing.assert_allclose(explorer.bars.y, landscape.feature_relevance(bottom))
        np.testing.assert_allclose(np.ravel(explorer.lattice.color), landscape.feature_relevance(bottom))
        conserved = landscape.conserved_weights(members)
        np.testing.assert_allclose(explorer.conserved_map.color, conserved.conservation)
        record = landscape.db.minimum(minimum)
        assert f"{record.loss:.6g}" in explorer.stats.value
        accuracy = independent_accuracy(landscape, record.coords, *test_data)
        assert f"{accuracy:.3f}" in explorer.stats.value
        assert f"minimum {minimum} selected" in explorer.status.value
    explorer.view_toggle.value = "lattice"
    assert explorer.lattice_figure.layout.display is None
    assert explorer.relevance_figure.layout.display == "none"


def test_picking_a_basin_selects_its_bottom(landscape):
    explorer = LandscapeExplorer(landscape)
    basins = landscape.basins()
    for bottom in set(basins.values()):
        explorer.basin_picker.value = bottom
        assert explorer.state.selected == bottom
        position = explorer.minimum_ids.tolist().index(bottom)
        assert list(explorer.points.selected) == [position]
        np.testing.assert_allclose(explorer.bars.y, landscape.feature_relevance(bottom))
    # selecting a minimum that is not a bottom shows its basin in the list
    member = next(m for m, b in basins.items() if b != m)
    explorer.points.selected = [explorer.minimum_ids.tolist().index(member)]
    assert explorer.basin_picker.value == basins[member] and explorer.state.selected == member


def test_square_lattice_heat_map(landscape):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(50, 4))
    land = Landscape(X, (X[:, 0] > 0).astype(int), hidden=2, weight_decay=1e-2).explore(2, progress=False)
    explorer = LandscapeExplorer(land, lattice_shape=(2, 2))
    expected = land.feature_relevance(land.global_minimum.id).reshape(2, 2)
    np.testing.assert_allclose(explorer.lattice.color, expected)


def test_colouring_by_basin_and_by_accuracy(landscape, test_data):
    explorer = LandscapeExplorer(landscape, X_test=test_data[0], y_test=test_data[1])
    basins = landscape.basins()
    colours = explorer.points.color
    for a, ma in zip(colours, explorer.minimum_ids, strict=True):
        for b, mb in zip(colours, explorer.minimum_ids, strict=True):
            assert (a == b) == (basins[int(ma)] == basins[int(mb)])
    explorer.colour_toggle.value = "accuracy"
    expected = [
        independent_accuracy(landscape, landscape.db.minimum(int(m)).coords, *test_data)
        for m in explorer.minimum_ids
    ]
    np.testing.assert_allclose(explorer.points.color, expected)


def test_graph_draws_the_disconnectivity_segments(landscape):
    explorer = LandscapeExplorer(landscape)
    graph = landscape.disconnectivity_graph(20)
    np.testing.assert_allclose(explorer.branches.x, graph.segments[:, :, 0])
    np.testing.assert_allclose(explorer.branches.y, graph.segments[:, :, 1])
    assert "hv-landscape-graph" in explorer.graph_figure._dom_classes
    assert "hv-relevance" in explorer.relevance_figure._dom_classes
    assert explorer.state.selected == landscape.global_minimum.id


def test_unavailable_views_report_in_the_status_line(landscape):
    explorer = LandscapeExplorer(landscape)
    explorer.state.colour_by = "accuracy"
    assert explorer.state.colour_by == "basin" and "X_test" in explorer.status.value
    explorer.state.relevance_view = "lattice"
    assert explorer.state.relevance_view == "bars" and "lattice_shape" in explorer.status.value


def test_bad_arguments_are_refused(landscape, test_data):
    with pytest.raises(TypeError, match="Landscape"):
        LandscapeExplorer(object())
    with pytest.raises(ValueError, match="feature_names"):
        LandscapeExplorer(landscape, feature_names=["a"])
    with pytest.raises(ValueError, match="lattice_shape"):
        LandscapeExplorer(landscape, lattice_shape=(3, 3))
    with pytest.raises(ValueError, match="lattice_shape"):
        LandscapeExplorer(landscape, lattice_shape=(1, 1, 2))
    with pytest.raises(ValueError, match="feature_names"):
        LandscapeExplorer(landscape, feature_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="both"):
        LandscapeExplorer(landscape, X_test=test_data[0])
    X, y = test_data
    with pytest.raises(ValueError, match="explore"):
        LandscapeExplorer(Landscape(X, y, hidden=2))


INJECTION = "<img src=x onerror=alert(1)>"


def html_values(widget):
    """Every HTML string in the widget tree."""
    import ipywidgets as widgets

    out = []
    if isinstance(widget, widgets.HTML | widgets.HTMLMath):
        out.append(widget.value)
    for child in getattr(widget, "children", ()):
        out += html_values(child)
    return out


def test_text_arguments_and_exception_text_are_escaped(landscape, test_data, monkeypatch):
    names = [INJECTION, f"b{INJECTION}"]
    explorer = LandscapeExplorer(
        landscape, X_test=test_data[0], y_test=test_data[1], feature_names=names, title=INJECTION
    )
    values = html_values(explorer)
    assert values and all("<img" not in v for v in values)
    assert any("&lt;img src=x onerror=alert(1)&gt;" in v for v in values)  # shown, as text
    # the status line names the most relevant feature: escaped too
    assert "&lt;img" in explorer.status.value and "<img" not in explorer.status.value

    def broken(*args, **kwargs):
        raise ValueError(INJECTION)

    monkeypatch.setattr(landscape, "conserved_weights", broken)
    other = next(m for m in explorer.minimum_ids.tolist() if m != explorer.state.selected)
    explorer._cache.clear()
    explorer.state.selected = other
    assert "could not analyse" in explorer.status.value
    assert "<img" not in explorer.status.value and "&lt;img" in explorer.status.value
    assert all("<img" not in v for v in html_values(explorer))


def test_explanation_stability_shown_for_the_clicked_basin(landscape, test_data):
    explorer = LandscapeExplorer(landscape, X_test=test_data[0], y_test=test_data[1], k=5)
    minimum = explorer.state.selected
    bottom = landscape.basins()[minimum]
    expected = landscape.explanation_stability(*test_data, group=bottom, k=5).mean()
    assert f"{expected:.3f}" in explorer.stats.value and "explanation stability" in explorer.stats.value
    with pytest.raises(ValueError, match="k must be"):
        LandscapeExplorer(landscape, k=0)
    with pytest.raises(TypeError, match="title"):
        LandscapeExplorer(landscape, title=3)


def test_unconnected_sets_are_listed_not_drawn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    land = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=0).explore(25, progress=False)
    assert len(land.minima) >= 2 and not land.transition_states  # nothing connected yet
    explorer = LandscapeExplorer(land)
    assert explorer.minimum_ids.tolist() == [land.global_minimum.id]
    others = sorted(m.id for m in land.minima if m.id != land.global_minimum.id)
    assert sorted(m for s in explorer.graph.unconnected for m in s) == others
    assert "not drawn" in explorer.unconnected.value
    for m in others:
        assert str(m) in explorer.unconnected.value


def test_a_saved_summary_draws_what_the_landscape_says(landscape, test_data, tmp_path):
    """Every basin precomputed, written to JSON and read back: the explorer needs no landscape."""
    X, y = test_data
    path = LandscapeSummary.compute(landscape, X, y, k=5).save(tmp_path / "explorer.json")
    summary = LandscapeSummary.load(path)
    assert summary.landscape is None and summary.k == 5
    explorer = LandscapeExplorer(summary, feature_names=["a", "b"], lattice_shape=(2,))
    assert explorer.landscape is None and explorer.state.selected == landscape.global_minimum.id
    graph = landscape.disconnectivity_graph(20)
    np.testing.assert_array_equal(explorer.branches.x, graph.segments[:, :, 0])  # bit for bit from JSON
    np.testing.assert_array_equal(explorer.branches.y, graph.segments[:, :, 1])
    np.testing.assert_array_equal(explorer.minimum_ids, graph.minimum_ids)
    basins = landscape.basins()
    for position, minimum in enumerate(explorer.minimum_ids.tolist()):
        explorer.points.selected = [position]
        bottom = basins[minimum]
        members = sorted(m for m, b in basins.items() if b == bottom)
        np.testing.assert_allclose(explorer.bars.y, landscape.feature_relevance(bottom), rtol=1e-12)
        np.testing.assert_allclose(
            explorer.conserved_map.color, landscape.conserved_weights(members).conservation, rtol=1e-12
        )
        record = landscape.db.minimum(minimum)
        assert f"{record.loss:.6g}" in explorer.stats.value
        assert f"{independent_accuracy(landscape, record.coords, X, y):.3f}" in explorer.stats.value
        stability = landscape.explanation_stability(X, y, group=bottom, k=5).mean()
        assert f"{stability:.3f}" in explorer.stats.value
    explorer.colour_toggle.value = "accuracy"
    expected = [
        independent_accuracy(landscape, landscape.db.minimum(int(m)).coords, X, y) for m in graph.minimum_ids
    ]
    np.testing.assert_allclose(explorer.points.color, expected)


def test_a_summary_brings_its_own_settings_and_a_damaged_one_is_refused(landscape, test_data, tmp_path):
    import json

    X, y = test_data
    path = LandscapeSummary.compute(landscape).save(tmp_path / "explorer.json")
    summary = LandscapeSummary.load(path)
    assert summary.accuracy is None
    explorer = LandscapeExplorer(summary)
    explorer.state.colour_by = "accuracy"  # no test data in this summary: said in the status line
    assert explorer.state.colour_by == "basin" and "X_test" in explorer.status.value
    for extra in (dict(X_test=X, y_test=y), dict(levels=5), dict(k=3)):
        with pytest.raises(ValueError, match="brings its own"):
            LandscapeExplorer(summary, **extra)
    data = json.loads(path.read_text())
    (tmp_path / "other.json").write_text(json.dumps(dict(data, format=99)))
    with pytest.raises(ValueError, match="not a landscape summary of format"):
        LandscapeSummary.load(tmp_path / "other.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:-40])
    with pytest.raises(ValueError, match="no valid JSON"):
        LandscapeSummary.load(tmp_path / "cut.json")
    (tmp_path / "basinless.json").write_text(json.dumps(dict(data, basin_summaries=[])))
    with pytest.raises(ValueError, match="damaged landscape summary.*basin of drawn minimum"):
        LandscapeSummary.load(tmp_path / "basinless.json")
