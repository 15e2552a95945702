"""Conjugate-gradient inverse-curvature products against dense solves."""

import warnings

import numpy as np
import pytest
import torch
from support import fit_checked, train_model
from torch import nn

from hessview import HessianToolbox
from hessview.engine.cg import ConjugateGradientWarning, conjugate_gradient


def spd(n, seed=0, condition=100.0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.logspace(0, np.log10(condition), n, dtype=torch.float64)) @ Q.T


def test_cg_solves_several_right_hand_sides():
    A = spd(40)
    B = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    B[:, 2] = 0.0  # a zero column converges at once
    result = conjugate_gradient(lambda M: A @ M, B, tol=1e-12)
    torch.testing.assert_close(result.solution, torch.linalg.solve(A, B), atol=1e-9, rtol=1e-9)
    assert result.converged and result.iterations <= 2 * 40  # n steps in exact arithmetic
    assert float(result.relative_residuals.max()) <= 1e-12


def test_cg_warns_at_maxiter_and_refuses_bad_input():
    A = spd(30, condition=1e4)
    B = torch.ones(30, 1, dtype=torch.float64)
    with pytest.warns(ConjugateGradientWarning, match="did not reach tol"):
        result = conjugate_gradient(lambda M: A @ M, B, tol=1e-12, maxiter=3)
    assert result.iterations == 3 and not result.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn=False: the caller reads converged instead
        quiet = conjugate_gradient(lambda M: A @ M, B, tol=1e-12, maxiter=3, warn=False)
    assert not quiet.converged and torch.equal(quiet.solution, result.solution)
    with pytest.raises(ValueError, match="tol must be > 0"):
        conjugate_gradient(lambda M: A @ M, B, tol=0.0)
    with pytest.raises(ValueError, match="maxiter"):
        conjugate_gradient(lambda M: A @ M, B, maxiter=0)
    with pytest.raises(ValueError, match=r"\(P, k\) matrix"):
        conjugate_gradient(lambda M: A @ M, B[:, 0])
    with pytest.raises(ValueError, match="not positive definite"):
        conjugate_gradient(lambda M: -A @ M, B)


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(80, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] - X[:, 2] > 0).long()
    torch.manual_seed(0)
    model = train_model(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)), X, y, weight_decay=0.05)
    return model, X, y


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_cg_influence_matches_the_dense_solve(trained, curvature):
    model, X, y = trained
    tb = HessianToolbox(
        model, X, y, weight_decay=0.05, damping=0.01, curvature=curvature, progress=False
    ).fit()
    X_test = X[:4] + 0.1
    g_test = tb.test_gradients(X_test)
    dense = tb.hessian + 0.01 * torch.eye(tb.n_params, dtype=torch.float64)
    expected = (g_test @ torch.linalg.solve(dense, tb.train_gradients.T)).numpy() / len(X)
    np.testing.assert_allclose(tb.influence(X_test, solver="cg", tol=1e-10), expected, rtol=1e-6, atol=1e-12)


def test_cg_in_lowrank_mode_is_exact_not_low_rank(trained):
    """CG uses matrix-free products of the full curvature, so it matches the exact mode whatever the rank."""
    model, X, y = trained
    exact = HessianToolbox(model, X, y, weight_decay=0.05, progress=False).fit()
    tb = fit_checked(HessianToolbox(model, X, y, weight_decay=0.05, method="lowrank", rank=3, progress=False))
    assert tb.damping_ == exact.damping_ == 0.0
    X_test = X[:3] - 0.2
    np.testing.assert_allclose(
        tb.influence(X_test, solver="cg", tol=1e-10), exact.influence(X_test), rtol=1e-6, atol=1e-12
    )
    with pytest.warns(ConjugateGradientWarning):
        tb.influence(X_test, solver="cg", tol=1e-12, maxiter=2)


def test_inverse_hvp_solvers_agree_and_refuse_bad_input(trained):
    model, X, y = trained
    tb = HessianToolbox(model, X, y, weight_decay=0.05, progress=False).fit()
    M = torch.randn(tb.n_params, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dense = torch.linalg.solve(tb.hessian + tb.damping_ * torch.eye(tb.n_params, dtype=torch.float64), M)
    torch.testing.assert_close(tb.inverse_hvp(M), dense, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tb.inverse_hvp(M, solver="cg", tol=1e-12), dense, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match=r"M must be a \(32, k\) tensor"):
        tb.inverse_hvp(M[:5])
    with pytest.raises(ValueError, match="M must be"):
        tb.inverse_hvp(M.numpy())
    with pytest.raises(ValueError, match="solver must be one of"):
        tb.inverse_hvp(M, solver="lu")
