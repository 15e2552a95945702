"""Leaving saturated samples out of the exact Hessian changes nothing beyond float64 rounding."""

import numpy as np
import pytest
import torch
from support import objective, train_model
from torch import nn

import hessview.engine.toolbox
from hessview import HessianToolbox
from hessview.engine.params import FlatModel
from hessview.engine.screening import frobenius_estimate, saturated

WEIGHT_DECAY = 1e-2


@pytest.fixture(scope="module")
def confident():
    """A network trained on inputs spread far beyond its decision boundary: most samples are saturated."""
    g = torch.Generator().manual_seed(0)
    X = torch.cat([torch.rand(60, 2, generator=g) * 60 - 30, torch.randn(20, 2, generator=g)]).double()
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).long()
    torch.manual_seed(0)
    network = nn.Sequential(nn.Linear(2, 3), nn.Softplus(), nn.Linear(3, 2))  # smooth, unbounded logits
    model = train_model(network, X, y, weight_decay=WEIGHT_DECAY)
    return model, X, y


def autograd_hessian(model, X, y):
    flat = FlatModel(model, torch.float64)
    return torch.autograd.functional.hessian(objective(flat, X, y, "cross_entropy", WEIGHT_DECAY), flat.theta)


def test_screened_hessian_equals_autograd(confident, tmp_path):
    model, X, y = confident
    tb = HessianToolbox(model, X, y, weight_decay=WEIGHT_DECAY, progress=False).fit()
    probabilities = torch.softmax(model(X), dim=1).detach()
    assert tb.n_screened_ == int(((1 - probabilities[torch.arange(len(y)), y]) < 2.0**-53).sum()) >= 20
    truth = autograd_hessian(model, X, y)
    torch.testing.assert_close(tb.hessian, truth, rtol=0, atol=1e-12 * float(truth.abs().max()))
    assert tb.screening_residual_ < 1e-12 and "curvature samples" in tb.summary()
    loaded = HessianToolbox.load(tb.save(tmp_path / "tb.safetensors"), model, progress=False)
    assert (loaded.n_screened_, loaded.screening_residual_) == (tb.n_screened_, tb.screening_residual_)


def test_samples_that_matter_are_added_after_all(confident, monkeypatch):
    model, X, y = confident
    # pretend every other sample were saturated: the check must notice their curvature and add it
    monkeypatch.setattr(hessview.engine.toolbox, "saturated", lambda p, y: torch.arange(len(y)) % 2 == 0)
    tb = HessianToolbox(model, X, y, weight_decay=WEIGHT_DECAY, progress=False).fit()
    assert tb.n_screened_ == 0 and tb.screening_residual_ > 1e-3
    truth = autograd_hessian(model, X, y)
    torch.testing.assert_close(tb.hessian, truth, rtol=0, atol=1e-12 * float(truth.abs().max()))


def test_screening_off_or_for_regression_uses_every_sample(confident):
    model, X, y = confident
    tb = HessianToolbox(model, X, y, weight_decay=WEIGHT_DECAY, progress=False, screen=False).fit()
    assert tb.n_screened_ == 0 and tb.screening_residual_ is None
    with pytest.raises(TypeError, match="screen"):
        HessianToolbox(model, X, y, screen="yes")


def test_saturated_mask_and_frobenius_estimate_against_brute_force():
    p = torch.tensor([[1 - 1e-17, 1e-17], [0.5, 0.5], [1e-20, 1 - 1e-20]], dtype=torch.float64)
    assert saturated(p, torch.tensor([0, 0, 0])).tolist() == [True, False, False]
    g = torch.Generator().manual_seed(1)
    A = torch.randn(30, 30, generator=g, dtype=torch.float64)
    C = A + A.T
    estimate = frobenius_estimate(lambda V: V @ C, 30, n_probes=400)
    assert np.isclose(estimate, float(C.norm()), rtol=0.1)
