"""The Gauss-Newton curvature against a dense J^T H_out J from torch.autograd; positive semi-definite."""

import numpy as np
import pytest
import torch
from support import DAMPED, LOW_RANK, NOT_STATIONARY, expect_warnings
from torch import nn

from hessview import HessianToolbox
from hessview.engine.losses import per_sample_loss


def problem(loss, seed=0, n=30):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    out = 3 if loss == "cross_entropy" else 2
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, out))
    if loss == "cross_entropy":
        y = torch.randint(0, 3, (n,), generator=g)
    else:
        y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    return model, X, y


def autograd_ggn(tb, weight_decay):
    """(1/n) sum_j J_j^T H_j J_j + w I with J_j and H_j = d^2 L / d f^2 from torch.autograd.functional."""
    P = tb.n_params
    total = weight_decay * torch.eye(P, dtype=torch.float64)
    for x, y in zip(tb.X_train, tb.y_train, strict=True):
        J = torch.autograd.functional.jacobian(lambda t, x=x: tb.flat(t, x[None])[0], tb.theta)  # (K, P)
        f = tb.flat(tb.theta, x[None])[0].detach()
        H = torch.autograd.functional.hessian(
            lambda out, y=y: per_sample_loss(tb.loss, out[None], y[None])[0], f
        )  # (K, K)
        total += J.T @ H @ J / tb.n_train
    return total


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_exact_ggn_matches_autograd(loss):
    model, X, y = problem(loss)  # a random initialisation: the curvature is compared, not at a minimum
    with expect_warnings(NOT_STATIONARY):
        tb = HessianToolbox(model, X, y, loss=loss, weight_decay=0.02, curvature="ggn", progress=False).fit()
    torch.testing.assert_close(tb.hessian, autograd_ggn(tb, 0.02), atol=1e-10, rtol=0)
    assert "curvature           ggn" in tb.summary()


def test_ggn_is_positive_semi_definite_where_the_hessian_is_not():
    model, X, y = problem("cross_entropy", seed=4)
    with expect_warnings(NOT_STATIONARY, DAMPED):
        hessian = HessianToolbox(model, X, y, progress=False).fit()
    with expect_warnings(NOT_STATIONARY):
        ggn = HessianToolbox(model, X, y, curvature="ggn", progress=False).fit()
    assert hessian.n_negative_ > 0  # an untrained network: a saddle
    lam = torch.linalg.eigvalsh(ggn.hessian)
    assert float(lam.min()) >= -1e-12 * float(lam.max())
    assert ggn.n_negative_ == 0


def test_ggn_equals_hessian_for_a_model_linear_in_its_parameters():
    """f = X theta, squared error: the dropped term sum_k dL/df_k d^2 f_k vanishes: G = H = 2 X^T X / n."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randn(40, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    with expect_warnings(NOT_STATIONARY):
        tb = HessianToolbox(model, X, y, loss="mse", curvature="ggn", progress=False).fit()
    torch.testing.assert_close(tb.hessian, 2 * X.T @ X / 40, atol=1e-12, rtol=0)


def test_lowrank_ggn_matches_exact_ggn():
    model, X, y = problem("cross_entropy", seed=2, n=60)
    with expect_warnings(NOT_STATIONARY):
        exact = HessianToolbox(model, X, y, weight_decay=0.01, curvature="ggn", progress=False).fit()
    with expect_warnings(NOT_STATIONARY, LOW_RANK):  # rank 6: the complement is misrepresented
        tb = HessianToolbox(
            model, X, y, weight_decay=0.01, curvature="ggn", method="lowrank", rank=6, progress=False
        ).fit()
    np.testing.assert_allclose(tb.eigenvalues.numpy(), exact.eigenvalues[-6:].numpy(), rtol=1e-4)
    M = torch.randn(tb.n_params, 3, dtype=torch.float64)
    torch.testing.assert_close(tb.curvature_matmat(M), exact.hessian @ M, atol=1e-12, rtol=1e-10)
