"""Numbers a physicist can trust: damping, stationarity, measurement, low-rank accuracy, calibration.

Every oracle comes from tests/oracle.py (plain torch and SciPy), never from hessview's helpers.
"""

import warnings

import numpy as np
import pytest
import torch
from oracle import (
    as_function,
    blobs,
    hessian,
    margin,
    margin_gradients,
    minimise,
    objective,
    pearson,
    per_sample_gradients,
    train,
)
from support import DAMPED, NOT_STATIONARY, expect_warnings, fit_checked
from torch import nn

import hessview
from hessview import HessianToolbox


def rowwise_pearson(a, b) -> float:
    """Smallest Pearson correlation over test points (rows): the ranking of training points per test point.

    Retraining on the mean over the n - 1 remaining points also shifts every retrained model by the
    same amount (the weight decay weighs 1/(n-1) instead of 1/n against the data); that shift is common to
    all training points of one test point, so it leaves each row's correlation unchanged.
    """
    return min(pearson(x, z) for x, z in zip(a, b, strict=True))


def loo_loss_changes(model, X, y, wd, X_test, y_test, indices):
    """L_i(theta_-j) - L_i(theta) by retraining without each j (plain torch)."""
    f, theta = as_function(model)
    base = torch.nn.functional.cross_entropy(f(theta, X_test), y_test, reduction="none")
    out = []
    for j in indices:
        keep = torch.arange(len(X)) != j
        theta_j = minimise(objective(f, X[keep], y[keep], wd), theta)
        with torch.no_grad():
            out.append(torch.nn.functional.cross_entropy(f(theta_j, X_test), y_test, reduction="none") - base)
    return torch.stack(out, dim=1).numpy()


# ------------------------------------------------------------------ damping
def test_default_damping_is_invariant_to_feature_units():
    """L2 logistic regression, one feature x100: influence still matches leave-one-out (was 0.64)."""
    X, y = blobs(60, 4, seed=0)
    X[:, 0] *= 100.0
    wd = 1e-2
    torch.manual_seed(0)
    model = train(nn.Linear(4, 2), X, y, wd)
    with warnings.catch_warnings():
        warnings.simplefilter("error", hessview.HessviewWarning)
        tb = HessianToolbox(model, X, y, weight_decay=wd, progress=False).fit()
    assert tb.damping_ == 0.0 and "positive definite" in tb.damping_reason_
    X_test, y_test = blobs(4, 4, seed=1)
    X_test[:, 0] *= 100.0
    indices = list(range(0, 60, 3))
    actual = loo_loss_changes(model, X, y, wd, X_test, y_test, indices)
    predicted = tb.influence(X_test, y_test)[:, indices]
    assert rowwise_pearson(predicted, actual) >= 0.99


def test_automatic_damping_on_a_saddle_is_twice_lambda_min_and_warns_when_dominant():
    X, y = blobs(40, 3, seed=2)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    f, theta = as_function(model)
    lam = torch.linalg.eigvalsh(hessian(f, theta, X, y, 0.0))
    assert float(lam[0]) < 0
    dominated = int((lam.abs() < 2 * abs(float(lam[0]))).sum())
    # a random initialisation: not stationary; DampingWarning exactly when most directions are dominated
    with expect_warnings(NOT_STATIONARY, *([DAMPED] if dominated > len(lam) / 2 else [])):
        tb = HessianToolbox(model, X, y, progress=False).fit()
    assert tb.damping_ == pytest.approx(2 * abs(float(lam[0])), rel=1e-8)
    assert tb.n_damped_ == dominated
    # a damping chosen deliberately raises no DampingWarning, and the summary still reports it
    with warnings.catch_warnings():
        warnings.simplefilter("error", hessview.DampingWarning)
        tb.set_damping(10.0)
    assert "chosen by the user" in tb.summary()


def test_damping_warning_fires_for_auto_when_most_directions_are_damped():
    """A random network with one dominant negative eigenvalue: 2|lambda_min| exceeds most |lambda|."""
    X, y = blobs(30, 2, seed=3)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    f, theta = as_function(model)
    lam = torch.linalg.eigvalsh(hessian(f, theta, X, y, 0.0))
    if int((lam.abs() < 2 * abs(float(lam[0]))).sum()) <= len(lam) / 2:
        pytest.fail("the fixture no longer has a dominated spectrum; choose another seed")
    with expect_warnings(NOT_STATIONARY, DAMPED):
        HessianToolbox(model, X, y, progress=False).fit()


# ------------------------------------------------------------------ stationarity
WD_SATURATING = 1e-7


def saturating_data():
    X, y = blobs(80, 2, seed=4, separation=5.0, noise=0.5)
    return X, y


def test_a_smooth_classifier_at_machine_precision_is_stationary_despite_saturation():
    X, y = saturating_data()
    torch.manual_seed(4)
    model = train(nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2)), X, y, WD_SATURATING)
    f, theta = as_function(model)
    with torch.no_grad():
        p = torch.softmax(f(theta, X), dim=1).gather(1, y[:, None])[:, 0]
    grads = per_sample_gradients(f, theta, X, y)
    full = torch.autograd.grad(objective(f, X, y, WD_SATURATING)(theta.requires_grad_(True)), theta)[0]
    theta = theta.detach()
    assert float((1 - p < 1e-6).float().mean()) > 0.5  # saturated: most samples fit to 1 - p < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error", hessview.HessviewWarning)
        tb = HessianToolbox(model, X, y, weight_decay=WD_SATURATING, progress=False).fit()
    assert tb.is_stationary_ and tb.stationarity_ratio_ < 0.1
    # the ratio is what the docstring says, recomputed from plain torch
    H = hessian(f, theta, X, y, WD_SATURATING)
    assert float(torch.linalg.eigvalsh(H)[0]) > 0
    newton = float(torch.linalg.solve(H, full).norm())
    typical = float(torch.linalg.solve(H, grads.T).norm(dim=0).square().mean().sqrt()) / len(X)
    assert tb.stationarity_ratio_ == pytest.approx(newton / typical, rel=1e-6)


def test_a_random_initialisation_is_not_stationary():
    X, y = saturating_data()
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2))
    with expect_warnings((hessview.NotStationaryWarning, "Newton step"), DAMPED):
        tb = HessianToolbox(model, X, y, weight_decay=1e-4, progress=False).fit()
    assert not tb.is_stationary_ and tb.stationarity_ratio_ > 1


def test_batchnorm_trained_in_train_mode_is_not_stationary_and_the_warning_says_why():
    X, y = blobs(60, 3, seed=6)
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2)).double()
    model.train()
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = torch.nn.functional.cross_entropy(model(X), y) + 5e-3 / 2 * sum(
            (p**2).sum() for p in model.parameters()
        )
        value.backward()
        return value

    for _ in range(5):
        optimiser.step(closure)
    with expect_warnings((hessview.NotStationaryWarning, "BatchNorm1d layers.*eval mode"), DAMPED):
        HessianToolbox(model, X, y, weight_decay=5e-3, progress=False).fit()


# ------------------------------------------------------------------ measurement
def test_margin_influence_matches_leave_one_out_change_of_the_margin():
    X, y = blobs(150, 3, seed=7)
    wd = 0.1
    torch.manual_seed(7)
    model = train(nn.Linear(3, 2), X, y, wd)
    f, theta = as_function(model)
    tb = HessianToolbox(model, X, y, weight_decay=wd, progress=False).fit()
    X_test, y_test = blobs(5, 3, seed=8)
    base = margin(f, theta, X_test, y_test).detach()
    indices = list(range(0, 150, 6))
    actual = []
    for j in indices:
        keep = torch.arange(len(X)) != j
        theta_j = minimise(objective(f, X[keep], y[keep], wd), theta)
        actual.append((base - margin(f, theta_j, X_test, y_test)).detach().numpy())  # + = helpful
    actual = np.stack(actual, axis=1)
    predicted = tb.influence(X_test, y_test, measurement="margin")[:, indices]
    assert rowwise_pearson(predicted, actual) >= 0.99
    # and the formula: (1/n) (-grad m)^T H^-1 g_j from plain torch
    H = hessian(f, theta, X, y, wd)
    G = per_sample_gradients(f, theta, X, y)
    expected = -margin_gradients(f, theta, X_test, y_test) @ torch.linalg.solve(H, G.T) / len(X)
    np.testing.assert_allclose(
        tb.influence(X_test, y_test, measurement="margin"), expected.numpy(), rtol=1e-7
    )
    np.testing.assert_allclose(tb.measure(X_test, y_test, "margin"), base.numpy(), rtol=1e-12)


def test_unknown_measurement_is_refused_with_the_choices():
    X, y = blobs(20, 2, seed=9)
    with expect_warnings(NOT_STATIONARY):  # untrained on purpose: the argument check is the subject
        tb = HessianToolbox(nn.Linear(2, 2).double(), X, y, weight_decay=0.1, progress=False).fit()
    with pytest.raises(ValueError, match=r"measurement must be one of \('loss', 'margin'\)"):
        tb.influence(X[:2], measurement="probability")
    with pytest.raises(ValueError, match="measurement must be one of"):
        tb.relatif(X[:2], measurement="logit")


# ------------------------------------------------------------------ low rank
@pytest.fixture(scope="module")
def mlp():
    X, y = blobs(80, 4, seed=10, separation=0.7)
    torch.manual_seed(10)
    model = train(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), X, y, 1e-3)
    return model, X, y


def test_lowrank_is_accurate_or_says_so_and_pcg_is_exact(mlp):
    model, X, y = mlp
    exact = HessianToolbox(model, X, y, weight_decay=1e-3, progress=False).fit()
    X_test = X[:8]
    # fit_checked asserts that ApproximationWarning fires exactly when the complement factor exceeds 2
    low = fit_checked(
        HessianToolbox(model, X, y, weight_decay=1e-3, method="lowrank", rank=10, progress=False)
    )
    warned = low.complement_factor_ > 2
    correlations = [
        pearson(a, b) for a, b in zip(low.influence(X_test), exact.influence(X_test), strict=True)
    ]
    assert warned or np.median(correlations) >= 0.95
    f, theta = as_function(model)
    H = hessian(f, theta, X, y, 1e-3)
    G = per_sample_gradients(f, theta, X, y)
    truth = per_sample_gradients(f, theta, X_test, low._labels(X_test, None)) @ torch.linalg.solve(H, G.T)
    pcg = low.influence(X_test, solver="pcg", tol=1e-10)
    assert pearson(pcg, truth.numpy() / len(X)) >= 0.999
    np.testing.assert_allclose(pcg, truth.numpy() / len(X), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["exact", "lowrank"])
@pytest.mark.parametrize("solver", ["eig", "cg", "pcg"])
def test_every_query_after_set_damping_equals_a_fresh_fit(mlp, method, solver):
    model, X, y = mlp
    kw = dict(weight_decay=1e-3, method=method, rank=10)
    tb = HessianToolbox(model, X, y, damping=0.5, progress=False, **kw).fit()
    tb.relatif(X[:3])  # fill every cache at the old damping
    tb.influence_stability(X[:3], k=3)
    tb.set_damping(0.05)
    fresh = HessianToolbox(model, X, y, damping=0.05, progress=False, **kw).fit()
    np.testing.assert_allclose(
        tb.influence(X[:3], solver=solver, tol=1e-12), fresh.influence(X[:3], solver=solver, tol=1e-12)
    )
    np.testing.assert_allclose(tb.relatif(X[:3]), fresh.relatif(X[:3]))
    np.testing.assert_allclose(tb.influence_stability(X[:3], k=3), fresh.influence_stability(X[:3], k=3))
    a, b = tb.uncertainty(X[:3], n_resamples=10), fresh.uncertainty(X[:3], n_resamples=10)
    np.testing.assert_allclose(a.samples, b.samples)


# ------------------------------------------------------------------ ranking stability
def test_influence_stability_is_the_top_k_overlap_across_the_damping_grid(mlp):
    model, X, y = mlp
    tb = HessianToolbox(model, X, y, weight_decay=1e-3, progress=False).fit()
    assert tb.damping_ == 0.0
    X_test = X[:5]
    stability = tb.influence_stability(X_test, k=5)
    f, theta = as_function(model)
    H = hessian(f, theta, X, y, 1e-3)
    G = per_sample_gradients(f, theta, X, y)
    g = per_sample_gradients(f, theta, X_test, y[:5])
    lam_min = float(torch.linalg.eigvalsh(H)[0])
    eye = torch.eye(H.shape[0], dtype=torch.float64)

    def top(delta):
        scores = (g @ torch.linalg.solve(H + delta * eye, G.T)).numpy()
        order = np.argsort(scores, axis=1)
        return [(set(o[-5:]), set(o[:5])) for o in order]

    reference = top(0.0)
    expected = np.zeros(5)
    grid = [lam_min / 10, lam_min, 10 * lam_min]
    for delta in grid:
        for i, (helpful, harmful) in enumerate(top(delta)):
            expected[i] += (len(helpful & reference[i][0]) + len(harmful & reference[i][1])) / 10
    np.testing.assert_allclose(stability, expected / len(grid))
    assert ((stability >= 0) & (stability <= 1)).all()


# ------------------------------------------------------------------ extrapolation
def test_calibrated_extrapolation_flags_new_in_distribution_points_at_the_nominal_rate():
    rates = []
    for seed in range(4):
        X, y = blobs(60, 2, seed=20 + seed, separation=0.8)
        torch.manual_seed(seed)
        model = train(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)), X, y, 1e-2)
        tb = HessianToolbox(model, X, y, weight_decay=1e-2, progress=False).fit()
        X_cal, _ = blobs(300, 2, seed=100 + seed, separation=0.8)
        X_new, _ = blobs(1000, 2, seed=200 + seed, separation=0.8)
        result = tb.extrapolation(X_new, quantile=0.9, calibration=X_cal)
        assert "split-conformal" in result.calibration and 0 < result.m < tb.n_params
        rates.append(result.flag.mean())
    assert 0.1 / 1.5 <= np.mean(rates) <= 0.1 * 1.5
    uncalibrated = tb.extrapolation(X_new, quantile=0.9)
    assert "training" in uncalibrated.calibration


def test_extrapolation_refuses_m_equal_to_p_and_bad_levels():
    X, y = blobs(20, 2, seed=11)
    with expect_warnings(NOT_STATIONARY):  # untrained on purpose: the argument checks are the subject
        tb = HessianToolbox(nn.Linear(2, 2).double(), X, y, weight_decay=0.1, progress=False).fit()
    with pytest.raises(ValueError, match="rounding noise"):
        tb.extrapolation(X[:2], m=tb.n_params)
    with pytest.raises(TypeError, match="quantile must be a number"):
        tb.extrapolation(X[:2], quantile="0.9")
    with pytest.raises(TypeError, match="level must be a number"):
        tb.uncertainty(X[:2], level="0.95")
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        tb.uncertainty(X[:2], seed=-1)
