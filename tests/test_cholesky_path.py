"""The exact inverse from a Cholesky factor, and the eigendecomposition computed only when first needed.

Oracles: numpy's dense inverse and ``eigvalsh`` of the Hessian from tests/oracle.py (plain torch), never
hessview's own helpers.
"""

import warnings

import numpy as np
import pytest
import torch
from oracle import as_function, blobs, hessian, per_sample_gradients, train
from torch import nn

import hessview
from hessview import HessianToolbox
from hessview.engine.inverse import CholeskyInverse


def test_cholesky_inverse_equals_the_dense_inverse_and_refuses_an_indefinite_matrix():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(12, 12))
    C = torch.from_numpy(A @ A.T + 0.5 * np.eye(12))
    M = torch.from_numpy(rng.normal(size=(12, 3)))
    for delta in (0.0, 0.3):
        expected = np.linalg.inv(C.numpy() + delta * np.eye(12)) @ M.numpy()
        inverse = CholeskyInverse(C, delta)
        np.testing.assert_allclose(inverse.apply(M).numpy(), expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            CholeskyInverse(C, 0.0).with_damping(delta).apply(M).numpy(), expected, rtol=1e-10, atol=1e-12
        )
    indefinite = torch.from_numpy(np.diag([1.0, -0.5, 2.0]))
    with pytest.raises(ValueError, match="not positive definite"):
        CholeskyInverse(indefinite, 0.0)
    lifted = CholeskyInverse(indefinite, 1.0).apply(torch.eye(3, dtype=torch.float64)).diagonal().numpy()
    np.testing.assert_allclose(lifted, [0.5, 2.0, 1 / 3], rtol=1e-14)


def test_a_minimum_is_fitted_and_queried_without_an_eigendecomposition_and_agrees_with_the_oracle():
    """L2 logistic regression at its minimum: damping 0 by the Cholesky certificate, influence exact."""
    X, y = blobs(50, 3, seed=4)
    wd = 1e-2
    torch.manual_seed(0)
    model = train(nn.Linear(3, 2), X, y, wd)
    f, theta = as_function(model)
    H = hessian(f, theta, X, y, wd).numpy()
    G = per_sample_gradients(f, theta, X, y).numpy()
    calls = []
    original = torch.linalg.eigh

    def counting_eigh(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("error", hessview.HessviewWarning)
        torch.linalg.eigh = counting_eigh
        try:
            tb = HessianToolbox(model, X, y, weight_decay=wd, progress=False).fit()
            X_test, y_test = blobs(3, 3, seed=5)
            influence = tb.influence(X_test, y_test)
            before = len(calls)
            lam_min = tb.lambda_min_  # computed on first use
        finally:
            torch.linalg.eigh = original
    assert before == 0 and len(calls) == 1
    assert tb.damping_ == 0.0 and tb.n_damped_ == 0 and "positive definite" in tb.damping_reason_
    lam = np.linalg.eigvalsh(H)
    assert lam_min == pytest.approx(lam[0], rel=1e-8) and tb.lambda_max_ == pytest.approx(lam[-1], rel=1e-8)
    floor = float(tb.damping_reason_.split("lambda_min > P eps ||C||_F = ")[1].split(",")[0])
    assert 0 < floor < lam[0] and floor == pytest.approx(
        len(H) * np.finfo(float).eps * np.linalg.norm(H), rel=0.05
    )
    assert tb.n_negative_ == 0
    g_test = per_sample_gradients(f, theta, X_test, y_test).numpy()
    expected = g_test @ np.linalg.solve(H, G.T) / len(y)
    np.testing.assert_allclose(influence, expected, rtol=1e-8, atol=1e-12)


def test_a_saddle_still_gets_twice_lambda_min_from_the_eigenvalues():
    X, y = blobs(40, 3, seed=2)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    f, theta = as_function(model)
    H = hessian(f, theta, X, y, 0.0).numpy()
    lam = np.linalg.eigvalsh(H)
    assert lam[0] < 0
    with pytest.warns(hessview.DampingWarning), pytest.warns(hessview.NotStationaryWarning):
        tb = HessianToolbox(model, X, y, progress=False).fit()
    assert tb.damping_ == pytest.approx(2 * abs(lam[0]), rel=1e-8)
    assert tb.n_negative_ == int((lam < -1e-12 * abs(lam).max()).sum())
    X_test = X[:2]
    y_test = y[:2]
    G = per_sample_gradients(f, theta, X, y).numpy()
    g_test = per_sample_gradients(f, theta, X_test, y_test).numpy()
    expected = g_test @ np.linalg.solve(H + tb.damping_ * np.eye(len(lam)), G.T) / len(y)
    np.testing.assert_allclose(tb.influence(X_test, y_test), expected, rtol=1e-7, atol=1e-12)
