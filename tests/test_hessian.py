"""The exact Hessian and per-sample gradients against torch.autograd ground truth."""

import pytest
import torch
from support import DAMPED, NOT_STATIONARY, expect_warnings
from torch import nn

import hessview.engine.toolbox
from hessview import HessianToolbox
from hessview.engine.hessian import flat_hessian
from hessview.engine.losses import per_sample_loss


def mlp(out=2):
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, out))


class SmallCNN(nn.Module):
    """Conv, max-pool, ReLU, avg-pool, dropout and a linear head: every layer type of the paper's CNN."""

    def __init__(self, out=2):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, 3, 5, padding=1),
            nn.MaxPool1d(2),
            nn.ReLU(),
            nn.Conv1d(3, 4, 3),
            nn.AvgPool1d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Dropout(0.5),
        )
        self.head = nn.Linear(4 * 3, out)

    def forward(self, x):
        return self.head(self.body(x))


CASES = {
    "mlp-classification": (mlp, (30, 4), "cross_entropy"),
    "mlp-regression": (lambda: mlp(1), (30, 4), "mse"),
    "cnn-classification": (SmallCNN, (25, 1, 20), "cross_entropy"),
    "cnn-regression": (lambda: SmallCNN(3), (25, 1, 20), "mse"),
}


def make_case(name, seed=0):
    factory, shape, loss = CASES[name]
    torch.manual_seed(seed)
    model = factory()
    X = torch.randn(*shape, dtype=torch.float64)
    if loss == "cross_entropy":
        y = torch.randint(0, 2, (shape[0],))
    else:
        y = torch.randn(shape[0], *model(X.float()[:1]).shape[1:], dtype=torch.float64)
    return model, X, y, loss


def autograd_hessian(toolbox, weight_decay):
    X, y, flat = toolbox.X_train, toolbox.y_train, toolbox.flat

    def objective(theta):
        return per_sample_loss(toolbox.loss, flat(theta, X), y).mean() + weight_decay / 2 * theta @ theta

    return torch.autograd.functional.hessian(objective, toolbox.theta)


@pytest.mark.parametrize("name", CASES)
def test_hessian_matches_autograd(name):
    model, X, y, loss = make_case(name)  # random initialisations: saddles, mostly damped
    with expect_warnings(NOT_STATIONARY, DAMPED):
        tb = HessianToolbox(model, X, y, loss=loss, weight_decay=0.03, progress=False).fit()
    expected = autograd_hessian(tb, 0.03)
    assert torch.allclose(tb.hessian, expected, atol=1e-8, rtol=0)
    # the eigendecomposition reconstructs it
    V, lam = tb.eigenvectors, tb.eigenvalues
    assert torch.allclose(V @ torch.diag(lam) @ V.T, expected, atol=1e-8)


def test_hessian_in_eval_mode_ignores_dropout():
    model, X, y, loss = make_case("cnn-classification")
    model.train()
    with expect_warnings(NOT_STATIONARY, DAMPED):
        tb = HessianToolbox(model, X, y, loss=loss, progress=False).fit()
    with expect_warnings(NOT_STATIONARY, DAMPED):
        again = HessianToolbox(model, X, y, loss=loss, progress=False).fit()
    assert torch.equal(tb.hessian, again.hessian)  # dropout would make these random
    assert model.training  # the caller's model is left as it was


def test_chunked_hessian_equals_one_pass(monkeypatch):
    model, X, y, loss = make_case("cnn-classification")
    with expect_warnings(NOT_STATIONARY, DAMPED):
        whole = HessianToolbox(model, X, y, loss=loss, progress=False).fit().hessian
    monkeypatch.setattr(hessview.engine.toolbox, "default_chunks", lambda *a, **k: (7, 3))
    with expect_warnings(NOT_STATIONARY, DAMPED):
        chunked = HessianToolbox(model, X, y, loss=loss, progress=False).fit().hessian
    assert torch.allclose(whole, chunked, atol=1e-12)


def test_flat_hessian_closed_form():
    torch.manual_seed(1)
    A = torch.randn(6, 6, dtype=torch.float64)
    A = A @ A.T
    b = torch.randn(6, dtype=torch.float64)
    theta = torch.randn(6, dtype=torch.float64)
    # f = 1/2 t^T A t + (b.t)^2  ->  H = A + 2 b b^T
    H = flat_hessian(lambda t: 0.5 * t @ A @ t + (b @ t) ** 2, theta, chunk_size=4)
    assert torch.allclose(H, A + 2 * torch.outer(b, b), atol=1e-12)


@pytest.mark.parametrize("name", ["mlp-classification", "cnn-regression"])
def test_per_sample_gradients_match_loop(name):
    model, X, y, loss = make_case(name)
    with expect_warnings(NOT_STATIONARY, DAMPED):
        tb = HessianToolbox(model, X, y, loss=loss, progress=False).fit()
    for j in (0, 7, len(X) - 1):
        theta = tb.theta.clone().requires_grad_(True)
        value = per_sample_loss(loss, tb.flat(theta, X[j : j + 1]), y[j : j + 1])[0]
        (g,) = torch.autograd.grad(value, theta)
        assert torch.allclose(tb.train_gradients[j], g, atol=1e-12)
