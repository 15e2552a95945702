"""Influence and RelatIF against actual leave-one-out retraining."""

import numpy as np
import pytest
import torch
from support import NOT_STATIONARY, expect_warnings, newton, objective, pearson, train_model
from torch import nn

from hessview import HessianToolbox


def blobs(n, d, seed, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * noise + (2.0 * y[:, None] - 1.0)
    return X, y


def leave_one_out_changes(tb, X_test, y_test, train_indices):
    """L_i(theta_-j) - L_i(theta) for every test point i, by retraining without each training point j."""
    X, y, flat = tb.X_train, tb.y_train, tb.flat
    base = torch.nn.functional.cross_entropy(flat(tb.theta, X_test), y_test, reduction="none")
    changes = []
    for j in train_indices:
        keep = torch.arange(len(X)) != j
        theta_j = newton(objective(flat, X[keep], y[keep], tb.loss, tb.weight_decay), tb.theta)
        with torch.no_grad():
            loss_j = torch.nn.functional.cross_entropy(flat(theta_j, X_test), y_test, reduction="none")
        changes.append((loss_j - base).numpy())
    return np.stack(changes, axis=1)  # (n_test, n_train)


def test_influence_matches_leave_one_out_logistic_regression():
    X, y = blobs(200, 3, seed=0)
    torch.manual_seed(0)
    model = train_model(nn.Linear(3, 2), X, y, weight_decay=0.05)
    tb = HessianToolbox(model, X, y, weight_decay=0.05, progress=False).fit()
    assert tb.is_stationary_ and tb.damping_ == 0.0
    X_test, y_test = blobs(6, 3, seed=1)
    X_test[0] = torch.tensor([0.1, -0.2, 0.05])  # near the boundary
    predicted = tb.influence(X_test, y_test)
    actual = leave_one_out_changes(tb, X_test, y_test, range(len(X)))
    for i in range(len(X_test)):
        assert pearson(predicted[i], actual[i]) >= 0.99
        big = np.abs(actual[i]) > 0.2 * np.abs(actual[i]).max()
        assert np.all(np.sign(predicted[i][big]) == np.sign(actual[i][big]))
    # magnitude too, not only the ranking (the removal convention's 1/n)
    np.testing.assert_allclose(predicted.ravel() @ actual.ravel() / (actual**2).sum(), 1.0, atol=0.1)


def test_influence_matches_leave_one_out_tanh_mlp():
    X, y = blobs(40, 2, seed=2, noise=1.2)
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    model = train_model(net, X, y, weight_decay=0.02)
    tb = HessianToolbox(model, X, y, weight_decay=0.02, progress=False).fit()
    assert tb.is_stationary_
    X_test, y_test = blobs(4, 2, seed=5, noise=1.2)
    predicted = tb.influence(X_test, y_test)
    actual = leave_one_out_changes(tb, X_test, y_test, range(len(X)))
    for i in range(len(X_test)):
        assert pearson(predicted[i], actual[i]) >= 0.9


def test_relatif_is_influence_over_parameter_change_norm():
    """RelatIF (Barshan et al. 2020) divides by ||H^-1 g_j||, computed here by a dense solve."""
    X, y = blobs(30, 3, seed=4)
    torch.manual_seed(0)
    with expect_warnings(NOT_STATIONARY):  # a random initialisation: the formula holds at any theta
        tb = HessianToolbox(nn.Linear(3, 2).double(), X, y, weight_decay=0.1, progress=False).fit()
    X_test = X[:5]
    labels = tb.predict(X_test).argmax(axis=1)
    H = tb.hessian + tb.damping_ * torch.eye(tb.n_params, dtype=torch.float64)
    G = tb.train_gradients
    test_g = []
    for x, lab in zip(X_test, labels, strict=True):
        t = tb.theta.clone().requires_grad_(True)
        value = torch.nn.functional.cross_entropy(tb.flat(t, x[None]), torch.tensor([lab]))
        test_g.append(torch.autograd.grad(value, t)[0])
    test_g = torch.stack(test_g)
    solved = torch.linalg.solve(H, G.T)  # (P, n)
    expected = (test_g @ solved / solved.norm(dim=0)).numpy()
    np.testing.assert_allclose(tb.relatif(X_test), expected, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(
        tb.influence(X_test), (test_g @ solved).numpy() / len(X), rtol=1e-8, atol=1e-14
    )


def test_queries_before_fit_are_refused():
    X, y = blobs(10, 3, seed=0)
    tb = HessianToolbox(nn.Linear(3, 2), X, y, progress=False)
    with pytest.raises(RuntimeError, match="fit"):
        tb.influence(X)
