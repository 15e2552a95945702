"""The Voila app helper: demo choice, and the cache of precomputed explorer results."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from support import train_model
from torch import nn

from hessview import HessianToolbox, demos
from hessview.widgets import app


@pytest.fixture(scope="module")
def small_demo():
    torch.manual_seed(3)
    x = torch.linspace(0.1, 3, 30, dtype=torch.float64)
    X = torch.stack([x, 0.2 * torch.randn(30, dtype=torch.float64)], 1)
    y = (x > 1.5).long()
    y[[12, 17]] = 1 - y[[12, 17]]
    model = train_model(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)), X, y, weight_decay=0.01)
    tb = HessianToolbox(model, X, y, weight_decay=0.01, progress=False).fit()  # at a minimum: no warning
    x_test = torch.linspace(0.05, 4, 9, dtype=torch.float64)
    X_test = torch.stack([x_test, torch.zeros(9, dtype=torch.float64)], 1)
    return types.SimpleNamespace(
        toolbox=tb,
        model=model,
        X_test=X_test,
        y_test=(x_test > 1.5).long(),
        x=x_test.numpy(),
        x_label="g",
        train_x=x.numpy(),
        name="small",
        title="Small demo",
        render="1d",
        class_names=["A", "B"],
    )


@pytest.fixture
def served(small_demo, monkeypatch, tmp_path):
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path))
    requested = []

    def load_demo(name, *, progress=True, rebuild=False):
        requested.append(name)
        return small_demo

    monkeypatch.setattr(demos, "load_demo", load_demo)
    return requested


def write_demo_files(small_demo, tmp_path, name="small"):
    """A built demo's folder as the app sees it: files ending with meta.json (their bytes are hashed)."""
    folder = tmp_path / "demos" / name
    folder.mkdir(parents=True, exist_ok=True)
    small_demo.toolbox.save(folder / "toolbox.safetensors")
    (folder / "meta.json").write_text(json.dumps({"title": small_demo.title}))
    return folder


def test_demo_explorer_shows_the_demo(served, small_demo, monkeypatch):
    monkeypatch.setenv("HESSVIEW_DEMO", "ising")
    monkeypatch.delenv("QUERY_STRING", raising=False)
    explorer = app.demo_explorer(n_resamples=20, k=2)
    assert served == ["ising"]
    explorer.select(4)
    drawn = np.nansum(np.asarray(explorer.influence.dots.y)[:, 0::3], axis=0)  # one curve per point
    np.testing.assert_allclose(
        drawn, small_demo.toolbox.influence(small_demo.X_test, measurement="margin")[4], rtol=1e-12
    )
    assert explorer.k_slider.value == 2
    assert "Small demo" in explorer.header.children[0].value
    assert explorer.x_label == "g" and explorer.train_x_label == "g"


def test_url_query_wins_over_environment(served, monkeypatch):
    monkeypatch.setenv("HESSVIEW_DEMO", "ising")
    monkeypatch.setenv("QUERY_STRING", "demo=fermi-hubbard")
    app.demo_explorer(n_resamples=20)
    assert served == ["fermi-hubbard"]


def test_results_are_cached_and_reused_without_loading_the_demo(served, small_demo, tmp_path, monkeypatch):
    write_demo_files(small_demo, tmp_path)
    first = app.demo_explorer("small", n_resamples=20)
    assert served == ["small"]
    path = app.results_path("small", 20, 0)
    assert path.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("the demo was loaded although its explorer results are cached")

    monkeypatch.setattr(demos, "load_demo", refuse)
    again = app.demo_explorer("small", n_resamples=20)
    for field in (
        "influence",
        "relatif",
        "uncertainty_mean",
        "uncertainty_upper",
        "extrapolation_score",
        "extrapolation_flag",
        "eigenvalues",
        "x",
        "train_x",
        "y_train",
    ):
        np.testing.assert_array_equal(getattr(again.results, field), getattr(first.results, field))
    assert again.results.extrapolation_threshold == first.results.extrapolation_threshold
    assert again.results.damping == first.results.damping
    # the gallery draws the demo's own training inputs, with its labels and title
    np.testing.assert_array_equal(again.gallery.X_train, small_demo.toolbox.X_train.numpy())
    assert again.class_names == ["A", "B"] and again.x_label == "g"
    assert "Small demo" in again.header.children[0].value
    again.select(3)
    truth = small_demo.toolbox.influence(small_demo.X_test, measurement="margin")[3]
    np.testing.assert_allclose(np.nansum(np.asarray(again.influence.dots.y)[:, 0::3], axis=0), truth)


def test_cache_key_follows_settings_and_demo_files(served, small_demo, tmp_path):
    assert app.results_path("small", 20, 0) is None  # not built: nothing to key on
    folder = write_demo_files(small_demo, tmp_path)
    base = app.results_path("small", 20, 0)
    assert app.results_path("small", 20, 0) == base
    assert app.results_path("small", 21, 0) != base
    assert app.results_path("small", 20, 1) != base
    (folder / ".toolbox.safetensors.123.tmp").write_bytes(b"unfinished write")
    assert app.results_path("small", 20, 0) == base
    (folder / "meta.json").write_text(json.dumps({"title": "rebuilt"}))
    assert app.results_path("small", 20, 0) != base


def test_unreadable_cache_is_recomputed(served, small_demo, tmp_path):
    write_demo_files(small_demo, tmp_path)
    path = app.results_path("small", 20, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an npz file")
    explorer = app.demo_explorer("small", n_resamples=20)
    assert served == ["small"]
    truth = small_demo.toolbox.relatif(small_demo.X_test, measurement="margin")
    np.testing.assert_allclose(explorer.results.relatif, truth, rtol=1e-12)
    assert app.ExplorerResults.load(path).relatif.shape == truth.shape


def test_explorer_without_toolbox_needs_results(small_demo, tmp_path):
    with pytest.raises(ValueError, match="needs a toolbox and X_test"):
        app.Explorer(None, None, X_train=small_demo.toolbox.X_train)
    results = app.ExplorerResults.from_toolbox(small_demo.toolbox, small_demo.X_test, n_resamples=4)
    with pytest.raises(ValueError, match="extra arrays may not use the field names"):
        results.save(tmp_path / "results.npz", influence=np.zeros(1))
    assert not (tmp_path / "results.npz").exists()
