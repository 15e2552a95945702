"""The energy-landscape app: cached landscapes, what the app shows, and ``hessview app landscape``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hessview.app.cli as cli
from hessview.app import landscape_demo
from hessview.landscape import Landscape


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("landscape-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HESSVIEW_CACHE_DIR", str(folder))
        landscape_demo.build(quick=True, progress=False)
        yield folder


@pytest.fixture
def in_cache(cache, monkeypatch):
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(cache))
    return cache


def test_app_shows_every_landscape_under_hv_landscape(in_cache):
    from hessview.widgets.landscape_explorer import LandscapeExplorer

    app = landscape_demo.landscape_app(quick=True)
    assert "hv-landscape" in app._dom_classes
    explorers = [child for child in app.children if isinstance(child, LandscapeExplorer)]
    assert [e.summary.n_inputs for e in explorers] == [6, 12, 16]
    assert all(e.landscape is None for e in explorers)  # drawn from the cached summaries
    assert "hv-landscape-synthetic" in explorers[0]._dom_classes
    how_to = next(child for child in app.children if "hv-howto" in child._dom_classes)
    assert how_to.children[0].value.count("<li>") == len(landscape_demo.HOW_TO_READ)


def test_synthetic_landscape_finds_the_deciding_features(in_cache):
    landscape, data = landscape_demo.load_landscape("synthetic", quick=True, progress=False)
    # ground truth by construction: the class is x1^2 + x4^2 < 1.4
    np.testing.assert_array_equal(data["y"], (data["X"][:, 1] ** 2 + data["X"][:, 4] ** 2 < 1.4).astype(int))
    assert set(np.argsort(landscape.feature_relevance())[::-1][:2]) == {1, 4}
    for ts in landscape.transition_states:
        assert int((ts.eigenvalues < 0).sum()) == 1


def test_fermi_hubbard_landscape_reads_densities(in_cache):
    landscape, data = landscape_demo.load_landscape("fermi-hubbard", quick=True, progress=False)
    assert data["X"].shape == (60, 12) and data["lattice_shape"] == (12,)
    assert set(np.unique(data["y"])) == {0, 1}
    best = landscape.global_minimum
    assert landscape.accuracy(data["X"], data["y"], best) > 0.9


def test_cached_landscapes_are_read_not_rebuilt(in_cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the landscape was explored although it is cached")

    monkeypatch.setattr(Landscape, "explore", refuse)
    before = {
        m.id: m.loss for m in landscape_demo.load_landscape("synthetic", quick=True, progress=False)[0].minima
    }
    again = landscape_demo.load_landscape("synthetic", quick=True, progress=False)[0]
    assert {m.id: m.loss for m in again.minima} == before and before


def test_changed_settings_or_an_interrupted_build_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path))
    first = landscape_demo.load_landscape("synthetic", quick=True, progress=False)[0]
    n_first = len(first.minima)
    first.close()
    folder = tmp_path / "landscape" / "synthetic-quick"
    meta = json.loads((folder / "meta.json").read_text())
    chosen = meta["settings"]
    assert (chosen["n_steps"], chosen["max_attempts"]) == landscape_demo.QUICK["synthetic"]
    (folder / "meta.json").unlink()  # as if the build had been killed before finishing
    calls = []
    original = Landscape.explore
    monkeypatch.setattr(
        Landscape, "explore", lambda self, *a, **k: calls.append(a) or original(self, *a, **k)
    )
    again = landscape_demo.load_landscape("synthetic", quick=True, progress=False)[0]
    assert len(calls) == 1 and len(again.minima) == n_first  # rebuilt from scratch, same seed
    monkeypatch.setitem(landscape_demo.QUICK, "synthetic", (2, 1))
    landscape_demo.load_landscape("synthetic", quick=True, progress=False)
    assert len(calls) == 2


def test_unknown_landscape_and_cli_choice():
    with pytest.raises(ValueError, match="unknown landscape"):
        landscape_demo.settings("mnist")
    assert "landscape" in cli.APPS and "landscape" not in cli.DEMOS
    args = cli.parser().parse_args(["app", "landscape", "--quick", "--no-browser"])
    assert args.name == "landscape" and args.quick


def test_concurrent_builders_make_one_build(tmp_path, monkeypatch):
    """Two builders of one landscape at once: one builds, the other waits and reuses its build."""
    import threading
    import time

    import hessview.landscape

    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path))
    builds = []
    real = hessview.landscape.Landscape

    class Counting(real):
        def explore(self, *args, **kwargs):
            builds.append(threading.get_ident())
            time.sleep(1.0)  # long enough for the other builder to arrive while this one builds
            return super().explore(*args, **kwargs)

    monkeypatch.setattr(hessview.landscape, "Landscape", Counting)
    results, errors = [], []

    def load():
        try:
            landscape, _ = landscape_demo.load_landscape("synthetic", quick=True, progress=False)
            results.append([m.id for m in landscape.minima])  # SQLite objects stay in their thread
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len(builds) == 1
    assert results[0] == results[1] and len(results[0]) > 1


def test_a_cached_app_starts_without_torch_or_scipy(in_cache):
    """``hessview app landscape`` with its caches in place: the command and the kernel compute nothing."""
    import os
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from hessview.app import cli\n"
        "cli.build(['landscape'], quick=True)\n"
        "from hessview.app.landscape_demo import landscape_app\n"
        "app = landscape_app(quick=True)\n"
        "print(len(app.children), sorted(m for m in ('torch', 'scipy') if m in sys.modules))\n"
    )
    env = dict(os.environ, HESSVIEW_CACHE_DIR=str(in_cache))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith(" []"), result.stdout
    assert "precomputing" not in result.stdout  # nothing was computed again


def test_a_damaged_or_stale_summary_is_computed_again(cache, tmp_path, monkeypatch):
    import shutil

    from hessview._io import file_sha256

    shutil.copytree(cache / "landscape" / "synthetic-quick", tmp_path / "landscape" / "synthetic-quick")
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "landscape" / "synthetic-quick"
    original = file_sha256(folder / "explorer.json")
    summary, display = landscape_demo.load_summary("synthetic", quick=True)
    assert display["feature_names"] == [f"x{i}" for i in range(6)] and display["lattice_shape"] is None
    text = (folder / "explorer.json").read_text()
    (folder / "explorer.json").write_text(text.replace('"k":10', '"k":11'))  # valid JSON, wrong bytes
    again, _ = landscape_demo.load_summary("synthetic", quick=True)
    assert file_sha256(folder / "explorer.json") == original and again.k == 10  # recomputed, identical
    (folder / "explorer.json").unlink()
    landscape_demo.load_summary("synthetic", quick=True)
    assert file_sha256(folder / "explorer.json") == original
    # the database changed (explored further): the summary follows it
    landscape, _ = landscape_demo.load_landscape("synthetic", quick=True, progress=False)
    landscape.explore(3, progress=False)
    ids = sorted(m.id for m in landscape.minima)
    landscape.close()
    fresh, _ = landscape_demo.load_summary("synthetic", quick=True)
    assert sorted(fresh.minima) == ids
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["summary"]["sha256"]["landscape.sqlite"] == file_sha256(folder / "landscape.sqlite")
