"""RUE against a real bootstrap, and local-ensemble extrapolation against known out-of-range inputs."""

import numpy as np
import pytest
import torch
from support import DAMPED, NOT_STATIONARY, auroc, expect_warnings, newton, objective, train_model
from torch import nn

from hessview import HessianToolbox


def logistic_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g, dtype=torch.float64)
    p = torch.sigmoid(1.5 * X[:, 0] - X[:, 1])
    y = (torch.rand(n, generator=g, dtype=torch.float64) < p).long()
    return X, y


def test_rue_matches_real_bootstrap_for_logistic_regression():
    X, y = logistic_data(150, seed=0)
    torch.manual_seed(0)
    model = train_model(nn.Linear(2, 2), X, y, weight_decay=0.02)
    tb = HessianToolbox(model, X, y, weight_decay=0.02, progress=False).fit()
    X_test = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-1.0, 0.5], [2.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    rue = tb.uncertainty(X_test, n_resamples=300, seed=1)

    # ground truth: retrain on 300 independent bootstrap resamples
    rng = np.random.default_rng(123)
    probs = []
    for _ in range(300):
        counts = rng.multinomial(len(X), np.full(len(X), 1 / len(X)))
        theta_b = newton(objective(tb.flat, X, y, "cross_entropy", 0.02, weights=counts), tb.theta)
        with torch.no_grad():
            probs.append(torch.softmax(tb.flat(theta_b, X_test), dim=1)[:, 1].numpy())
    true_std = np.std(probs, axis=0, ddof=1)
    relative = np.abs(rue.std[:, 1] - true_std) / true_std
    assert relative.mean() <= 0.30
    # the summary is consistent: intervals contain the mean, probabilities sum to one
    assert np.all(rue.lower <= rue.mean) and np.all(rue.mean <= rue.upper)
    np.testing.assert_allclose(rue.samples.sum(axis=-1), 1.0, atol=1e-12)
    assert rue.samples.shape == (300, 5, 2) and rue.loss_var.shape == (5,)


def test_rue_uses_every_resample_and_is_seeded():
    X, y = logistic_data(80, seed=2)
    model = train_model(nn.Linear(2, 2), X, y, weight_decay=0.05)
    tb = HessianToolbox(model, X, y, weight_decay=0.05, progress=False).fit()
    a = tb.uncertainty(X[:4], n_resamples=50, seed=7)
    b = tb.uncertainty(X[:4], n_resamples=50, seed=7)
    c = tb.uncertainty(X[:4], n_resamples=50, seed=8)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    # 50 distinct resampled models (the published code kept only the first)
    assert len(np.unique(a.samples[:, 0, 1].round(14))) == 50


def test_regression_uncertainty_has_value_shape():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 1, generator=g, dtype=torch.float64)
    y = 2 * X[:, 0] + 0.1 * torch.randn(60, generator=g, dtype=torch.float64)
    model = train_model(nn.Linear(1, 1), X, y[:, None], loss="mse", weight_decay=0.01)
    tb = HessianToolbox(model, X, y[:, None], loss="mse", weight_decay=0.01, progress=False).fit()
    rue = tb.uncertainty(X[:3], y[:3, None], n_resamples=40)
    assert rue.mean.shape == (3, 1) and np.all(rue.std > 0) and np.all(np.isfinite(rue.loss_var))
    # without targets the spread of the predictions is the same; only the loss variance is undefined
    blind = tb.uncertainty(X[:3], n_resamples=np.int64(40))
    np.testing.assert_array_equal(blind.std, rue.std)
    assert np.all(np.isnan(blind.loss_var))


def test_extrapolation_flags_inputs_outside_the_training_range():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(120, 1, generator=g, dtype=torch.float64) * 2 - 1  # x in [-1, 1]
    y = torch.sin(2 * X) + 0.05 * torch.randn(120, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 1))
    model = train_model(net, X, y, loss="mse", weight_decay=1e-3)
    tb = HessianToolbox(model, X, y, loss="mse", weight_decay=1e-3, progress=False).fit()
    inside = torch.linspace(-0.95, 0.95, 40, dtype=torch.float64)[:, None]
    outside = torch.cat([torch.linspace(-5, -2.5, 20), torch.linspace(2.5, 5, 20)]).double()[:, None]
    ext_in = tb.extrapolation(inside)
    ext_out = tb.extrapolation(outside)
    assert auroc(ext_out.score, ext_in.score) >= 0.9
    assert ext_in.flag.mean() <= 0.1
    assert ext_out.flag.mean() >= 0.5
    assert ext_in.threshold == ext_out.threshold and 0 < ext_in.m < tb.n_params


def test_extrapolation_score_is_the_projected_gradient_norm():
    """Brute force: project each output gradient by an explicit projector built from eigh."""
    X, y = logistic_data(40, seed=3)
    with expect_warnings(NOT_STATIONARY, DAMPED):  # a random initialisation: the formula holds at any theta
        tb = HessianToolbox(
            nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)), X, y, progress=False
        ).fit()
    lam, V = torch.linalg.eigh(tb.hessian)
    U = V[:, torch.argsort(lam.abs(), descending=True)[:4]]
    P = torch.eye(tb.n_params, dtype=torch.float64) - U @ U.T
    expected = []
    for x in X[:5]:
        J = torch.autograd.functional.jacobian(lambda t, x=x: tb.flat(t, x[None])[0], tb.theta)
        J = J - J.mean(dim=0)  # centred logits
        expected.append(float((J @ P).norm()))
    result = tb.extrapolation(X[:5], m=4, prediction="logits")
    np.testing.assert_allclose(result.score, expected, rtol=1e-8)
    assert result.threshold == pytest.approx(np.quantile(result.train_score, 0.99))
