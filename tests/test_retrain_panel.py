"""The explorer's "retrain without the top-k" action, headless: values from retraining, app responsive."""

import threading
import time

import numpy as np
import pytest
import torch
from support import train_model
from torch import nn

from hessview import HessianToolbox
from hessview.widgets import Explorer

WD = 1e-2


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 2, generator=g, dtype=torch.float64)
    y = ((X[:, 0] + 0.7 * torch.randn(60, generator=g, dtype=torch.float64)) > 0).long()
    X_test = torch.randn(8, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = train_model(nn.Linear(2, 2), X, y, weight_decay=WD)
    tb = HessianToolbox(model, X, y, weight_decay=WD, progress=False).fit()
    return tb, X, y, X_test


def test_retrain_action_shows_actual_and_predicted_and_clicks_are_answered_meanwhile(setup):
    tb, X, y, X_test = setup
    release, called = threading.Event(), []

    def source():  # blocks until the test has clicked around: the action is surely still running then
        called.append(True)
        assert release.wait(30)
        return tb, X_test, None

    explorer = Explorer(None, None, results=explorer_results(tb, X_test), X_train=X, retrain=source, k=3)
    assert not called  # nothing loaded or computed before the first click
    first = explorer.state.index
    explorer.retrain_panel.button.click()
    other = (first + 1) % 8
    explorer.select(other)  # a click while the retraining runs is answered at once
    assert explorer.state.index == other and explorer.retrain_panel.running
    assert f'data-test-index="{other}"' not in explorer.retrain_panel.table.value
    assert "Test point #" + str(other) in explorer.status.value or "Retraining" in explorer.status.value
    explorer.select(first)
    assert "Loading the model and its toolbox" in explorer.retrain_panel.table.value  # this point's progress
    release.set()
    assert explorer.retrain_panel.wait(60)
    assert called == [True]
    values = explorer.retrain_panel.values[(first, 3, "influence")]
    helpful, harmful = explorer.results.top_k(first, 3)
    x = X_test[first : first + 1]
    for role, removed in (("helpful", helpful), ("harmful", harmful)):
        v = values[role]
        np.testing.assert_array_equal(v["removed"], removed)
        assert v["actual"] == pytest.approx(tb.actual_effect(x, remove=removed, measurement="margin")[0])
        newton = tb.group_influence(x, remove=removed, measurement="margin")[0]
        assert v["newton_step"] == pytest.approx(newton)
        first_order = explorer.results.influence[first, removed].sum()  # what the explorer shows, summed
        assert v["sum_of_influences"] == pytest.approx(first_order, rel=1e-9)
    # independent check of the sign convention: the helpful set's removal lowers the margin
    assert values["helpful"]["actual"] > 0 > values["harmful"]["actual"]
    table = explorer.retrain_panel.table.value
    assert f'data-test-index="{first}"' in table
    for role in ("helpful", "harmful"):
        assert f"{values[role]['actual']:+.4g}" in table and f"{values[role]['newton_step']:+.4g}" in table
    assert "Retrained for test point" in explorer.status.value
    # cached: a second click computes nothing
    before = time.perf_counter()
    explorer.retrain_panel.button.click()
    assert not explorer.retrain_panel.running and time.perf_counter() - before < 1.0
    assert explorer.retrain_panel.table.value == table


def test_retrain_action_is_hidden_without_a_toolbox_and_reports_errors(setup):
    tb, X, y, X_test = setup
    results = explorer_results(tb, X_test)
    hidden = Explorer(None, None, results=results, X_train=X)
    assert hidden.retrain_panel.widget.layout.display == "none"

    def broken():
        raise OSError("cache missing")

    explorer = Explorer(None, None, results=results, X_train=X, retrain=broken)
    explorer.retrain_panel.button.click()
    assert explorer.retrain_panel.wait(30)
    assert "Could not retrain: OSError: cache missing" in explorer.status.value
    assert not explorer.retrain_panel.button.disabled


def explorer_results(tb, X_test):
    from hessview.widgets import ExplorerResults

    return ExplorerResults.from_toolbox(tb, X_test, n_resamples=10)


def test_a_tuned_damping_and_its_lds_are_shown_next_to_the_spectrum(setup, tmp_path):
    from hessview.widgets import ExplorerResults

    tb, X, y, X_test = setup
    plain = explorer_results(tb, X_test)
    assert plain.damping_lds is None
    assert "hold-out LDS" not in Explorer(None, None, results=plain, X_train=X).spectrum.note.value
    tuned = HessianToolbox(tb.flat.module, X, y, weight_decay=WD, progress=False).fit()
    tuned.tune_damping(n_subsets=5, seed=0)
    results = explorer_results(tuned, X_test)
    assert results.damping_lds == tuned.tuned_lds_ and results.damping == tuned.damping_
    results.save(tmp_path / "r.npz")
    loaded = ExplorerResults.load(tmp_path / "r.npz")
    assert loaded.damping_lds == tuned.tuned_lds_
    note = Explorer(None, None, results=loaded, X_train=X).spectrum.note.value
    assert f"hold-out LDS {tuned.tuned_lds_:.3f}" in note
