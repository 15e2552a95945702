"""Plain-torch oracles for the engine's tests: nothing here imports hessview.

A model becomes a function of one flat parameter vector through ``torch.func.functional_call``; the
objective is ``mean cross-entropy + wd/2 ||theta||^2``; Hessians come from
``torch.autograd.functional.hessian``; retraining is SciPy's L-BFGS followed by Newton polishing.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap


def as_function(model: torch.nn.Module):
    """``(f, theta0)``: ``f(theta, X)`` evaluates ``model`` at the flat parameters ``theta``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).to(torch.float64)

    def f(theta, X):
        params, start = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            size = int(np.prod(shape)) if len(shape) else 1
            params[name] = theta[start : start + size].view(shape)
            start += size
        return functional_call(model, params, (X,))

    return f, theta0


def objective(f, X, y, wd, weights=None):
    """``theta -> (1/n) sum_j w_j CE_j + wd/2 ||theta||^2`` (weights default to 1)."""
    n = X.shape[0]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights

    def value(theta):
        return (w * F.cross_entropy(f(theta, X), y, reduction="none")).sum() / n + wd / 2 * theta @ theta

    return value


def minimise(value, theta0, gtol=1e-12, polish=True):
    """L-BFGS to ``gtol``, then Newton steps (with step halving) to machine precision."""

    def fun(x):
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        v = value(t)
        (g,) = torch.autograd.grad(v, t)
        return float(v.detach()), g.detach().numpy()

    res = scipy.optimize.minimize(
        fun,
        theta0.detach().numpy().astype(np.float64),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": gtol, "ftol": 1e-16, "maxiter": 20000, "maxcor": 30},
    )
    theta = torch.tensor(res.x, dtype=torch.float64)
    if not polish:
        return theta
    for _ in range(20):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(value(t), t)
        H = torch.autograd.functional.hessian(value, theta)
        if float(torch.linalg.eigvalsh(H)[0]) <= 0:
            break
        step = torch.linalg.solve(H, g)
        rate, current = 1.0, float(value(theta))
        while float(value(theta - rate * step)) > current and rate > 1e-6:
            rate /= 2
        new = theta - rate * step
        if float(value(new)) > current:
            break
        theta = new
        if float(g.norm()) < 1e-15:
            break
    return theta


def write(model: torch.nn.Module, theta: torch.Tensor) -> torch.nn.Module:
    """Copy the flat ``theta`` into ``model``'s trainable parameters (in place); returns the model."""
    torch.nn.utils.vector_to_parameters(theta, [p for p in model.parameters() if p.requires_grad])
    return model


def train(model, X, y, wd):
    """``model`` (float64) trained to machine precision on the objective."""
    model = model.double()
    f, theta0 = as_function(model)
    return write(model, minimise(objective(f, X, y, wd), theta0))


def hessian(f, theta, X, y, wd):
    """The exact ``P x P`` Hessian of the objective."""
    return torch.autograd.functional.hessian(objective(f, X, y, wd), theta)


def ggn(f, theta, X, y, wd):
    """``(1/n) sum_j J_j^T (diag p - p p^T) J_j + wd I`` from per-sample Jacobians of the logits."""
    J = vmap(jacrev(lambda t, x: f(t, x[None])[0]), in_dims=(None, 0))(theta, X)  # (n, K, P)
    with torch.no_grad():
        p = torch.softmax(f(theta, X), dim=1)
    H_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    G = torch.einsum("nkp,nkl,nlq->pq", J, H_out, J) / X.shape[0]
    return G + wd * torch.eye(theta.numel(), dtype=torch.float64)


def per_sample_gradients(f, theta, X, y):
    """Rows ``grad_theta CE(f(x_j), y_j)`` by a plain loop of autograd calls."""
    rows = []
    for x, label in zip(X, y, strict=True):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(f(t, x[None]), label[None]), t)
        rows.append(g)
    return torch.stack(rows)


def margin(f, theta, X, y):
    """``log p_y - log(1 - p_y)`` per sample."""
    logits = f(theta, X)
    label = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return label - torch.logsumexp(others, dim=1)


def margin_gradients(f, theta, X, y):
    """Rows ``grad_theta margin(x_j, y_j)``."""
    rows = []
    for x, label in zip(X, y, strict=True):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(margin(f, t, x[None], label[None])[0], t)
        rows.append(g)
    return torch.stack(rows)


def pearson(a, b) -> float:
    """Pearson correlation of two arrays, flattened."""
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def blobs(n, d, seed, separation=1.0, noise=1.0):
    """Two Gaussian blobs at +-separation along every axis, labels alternating 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * noise + separation * (2.0 * y[:, None] - 1.0)
    return X, y
