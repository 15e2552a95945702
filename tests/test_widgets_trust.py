"""The explorer says whether a ranking depends on the damping and when a prediction's loss is saturated."""

import re
import warnings

import numpy as np
import torch
from oracle import blobs, train
from torch import nn

import hessview
from hessview import HessianToolbox
from hessview.widgets import Explorer


def test_detail_panel_shows_the_ranking_stability_and_saturation():
    X, y = blobs(40, 2, seed=0, separation=2.5, noise=0.6)
    torch.manual_seed(0)
    model = train(nn.Linear(2, 2), X, y, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", hessview.HessviewWarning)
        tb = HessianToolbox(model, X, y, weight_decay=1e-3, progress=False).fit()
    X_test = torch.tensor([[0.05, -0.05], [40.0, 40.0], [-0.3, 0.2]], dtype=torch.float64)
    explorer = Explorer(tb, X_test, n_resamples=10)
    stability = explorer.results.stability
    # the engine's stability of the margin ranking (checked against brute force in tests/test_trust.py)
    np.testing.assert_allclose(stability, tb.influence_stability(X_test, k=5, measurement="margin"))
    for index in range(3):
        explorer.state.index = index
        detail = explorer.detail.summary.value
        shown = float(re.search(r'data-stability="([^"]+)"', detail).group(1))
        assert shown == stability[index]
        assert ("stable</b>" in detail) == (stability[index] >= 0.8)
        assert ("depends on damping" in detail) == (stability[index] < 0.8)
        p = tb.predict(X_test[index : index + 1]).max()
        assert ("is saturated" in detail) == (1 - p < 1e-13)
    explorer.state.index = 1  # deep inside one class
    assert "is saturated" in explorer.detail.summary.value
    assert "on the margin, which does not saturate" in explorer.detail.summary.value
