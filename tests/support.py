"""Ground-truth machinery for the engine's tests: training to a tight minimum with SciPy's L-BFGS."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch

from hessview.engine.errors import ApproximationWarning, DampingWarning, NotStationaryWarning
from hessview.engine.losses import per_sample_loss
from hessview.engine.params import FlatModel

# What fit() says about a model that is deliberately not at a minimum (a random initialisation) or
# deliberately approximated, as (category, regular expression) pairs for expect_warnings.
NOT_STATIONARY = (NotStationaryWarning, "is not a stationary point of the objective")
DAMPED = (DampingWarning, r"the automatic damping .* exceeds \|lambda\| along \d+ of \d+ eigenvectors")
LOW_RANK = (ApproximationWarning, r"the low-rank inverse treats the complement of its \d+ kept eigenpairs")


@contextlib.contextmanager
def expect_warnings(*expected: tuple[type[Warning], str]):
    """Assert that the block raises every ``(category, match)`` in ``expected``: nested ``pytest.warns``.

    A warning that is not expected escapes each ``pytest.warns`` (pytest re-emits it), so pytest's filter
    still turns an unexpected hessview warning into an error.
    """
    with contextlib.ExitStack() as stack:
        for category, match in expected:
            stack.enter_context(pytest.warns(category, match=match))
        yield


def objective(flat: FlatModel, X, y, loss: str, weight_decay: float, weights=None):
    """(1/n) sum_j w_j L_j(theta) + weight_decay/2 ||theta||^2 as a function of theta."""
    n = X.shape[0]
    w = torch.ones(n, dtype=X.dtype) if weights is None else torch.as_tensor(weights, dtype=X.dtype)

    def value(theta):
        return (w * per_sample_loss(loss, flat(theta, X), y)).sum() / n + weight_decay / 2 * theta @ theta

    return value


def minimise(value, theta0: torch.Tensor, gtol: float = 1e-11) -> torch.Tensor:
    """Minimise ``value`` from ``theta0`` with L-BFGS to a tight gradient tolerance (float64)."""

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
        options={"gtol": gtol, "ftol": 1e-15, "maxiter": 20000, "maxcor": 30},
    )
    return torch.tensor(res.x, dtype=torch.float64)


def newton(value, theta0: torch.Tensor, gtol: float = 1e-12, max_iter: int = 50) -> torch.Tensor:
    """Minimise a smooth ``value`` from a nearby ``theta0`` by Newton's method with a backtracking step.

    Meant for retraining from a warm start (leave-one-out, bootstrap), where it converges in a few steps;
    falls back to L-BFGS when the Hessian is not positive definite along the way.
    """
    theta = theta0.detach().clone()
    for _ in range(max_iter):
        t = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(value(t), t)
        if float(g.norm()) < gtol:
            return theta
        H = torch.autograd.functional.hessian(value, theta)
        try:
            step = torch.linalg.solve(H, g)
        except RuntimeError:
            return minimise(value, theta, gtol=gtol)
        if float(g @ step) <= 0:
            return minimise(value, theta, gtol=gtol)
        rate, current = 1.0, float(value(theta))
        while float(value(theta - rate * step)) > current and rate > 1e-8:
            rate /= 2
        theta = theta - rate * step
    return minimise(value, theta, gtol=gtol)


def load_flat(model: torch.nn.Module, flat: FlatModel, theta: torch.Tensor) -> torch.nn.Module:
    """Write the flat vector ``theta`` into ``model``'s trainable parameters (in place)."""
    with torch.no_grad():
        for p, t in zip(
            [p for p in model.parameters() if p.requires_grad], flat.unflatten(theta).values(), strict=True
        ):
            p.copy_(t)
    return model


def train_model(model, X, y, loss="cross_entropy", weight_decay=0.0):
    """Train ``model`` (float64) to a tight minimum of the toolbox's objective; returns it."""
    model = model.double()
    flat = FlatModel(model, torch.float64)
    theta = minimise(objective(flat, X, y, loss, weight_decay), flat.theta)
    return load_flat(model, flat, theta)


def pearson(a, b) -> float:
    """Pearson correlation coefficient of two 1-D arrays."""
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def auroc(positive_scores, negative_scores) -> float:
    """Area under the ROC curve: the probability that a positive outranks a negative (ties count half)."""
    pos = np.asarray(positive_scores)[:, None]
    neg = np.asarray(negative_scores)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def fit_checked(toolbox):
    """``toolbox.fit()``, asserting that ApproximationWarning fires exactly when the low-rank complement
    may be misrepresented by more than a factor 2 (the warning is the subject of tests/test_trust.py)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ApproximationWarning)
        toolbox.fit()
    warned = any(issubclass(w.category, ApproximationWarning) for w in caught)
    for w in caught:  # every other warning goes on to the caller (and to pytest's error filter)
        if not issubclass(w.category, ApproximationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    factor = toolbox.complement_factor_
    assert warned == (factor is not None and factor > 2), (warned, factor)
    return toolbox
