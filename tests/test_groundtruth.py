"""Retraining, group effects, the LDS and tuned damping against retraining written in plain torch/SciPy."""

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch
import torch.nn.functional as F
from support import newton, train_model
from torch import nn

from hessview import ApproximationWarning, HessianToolbox
from hessview.evaluation import lds

WD = 1e-2
WD_MLP = 3e-2  # strong enough that the retrained subsets stay in theta's basin


# ---------------------------------------------------------------- oracles (plain torch and SciPy)
def linear_logits(theta, X, d):
    W, b = theta[: 2 * d].view(2, d), theta[2 * d : 2 * d + 2]
    return X @ W.T + b


def mlp_logits(theta, X, hidden=6):
    d = X.shape[1]
    sizes = [hidden * d, hidden, 2 * hidden, 2]
    W1, b1, W2, b2 = torch.split(theta, sizes)
    return torch.tanh(X @ W1.view(hidden, d).T + b1) @ W2.view(2, hidden).T + b2


def scipy_minimise(logits, X, y, wd, theta0):
    """Full-batch L-BFGS-B (SciPy) on mean cross-entropy + wd/2 ||theta||^2, to a tight gradient."""

    def fun(x):
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = F.cross_entropy(logits(t, X), y) + wd / 2 * t @ t
        value.backward()
        return float(value.detach()), t.grad.numpy()

    res = scipy.optimize.minimize(
        fun,
        np.asarray(theta0, dtype=np.float64),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-13, "ftol": 0.0, "maxiter": 20000, "maxcor": 30},
    )
    return torch.tensor(res.x, dtype=torch.float64)


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loss_and_margin(logits, y):
    loss = F.cross_entropy(logits, y, reduction="none")
    margin = logits[torch.arange(len(y)), y] - logits[torch.arange(len(y)), 1 - y]  # two classes
    return loss.numpy(), margin.numpy()


# ---------------------------------------------------------------- problems
@pytest.fixture(scope="module")
def logistic():
    """L2 logistic regression on 150 noisy points in 4 dimensions (convex: one minimum)."""
    g = torch.Generator().manual_seed(0)
    n, d = 150, 4
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.tensor([1.5, -1.0, 0.5, 0.0], dtype=torch.float64)
    y = ((X @ w + 0.8 * torch.randn(n, generator=g, dtype=torch.float64)) > 0).long()
    X_test = torch.randn(20, d, generator=g, dtype=torch.float64)
    y_test = ((X_test @ w) > 0).long()
    torch.manual_seed(0)
    model = train_model(nn.Linear(d, 2), X, y, weight_decay=WD)
    tb = HessianToolbox(model, X, y, weight_decay=WD, progress=False).fit()
    return tb, model, X, y, X_test, y_test


def mlp_problem(seed=3, n=80):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n + 30, 2, generator=g, dtype=torch.float64)
    noise = 0.5 * torch.randn(n + 30, generator=g, dtype=torch.float64)
    y = (X[:, 0] * X[:, 1] + 0.7 * X[:, 0] + noise > 0).long()
    torch.manual_seed(seed)
    model = train_model(
        nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2)), X[:n], y[:n], weight_decay=WD_MLP
    )
    return model, X[:n], y[:n], X[n:], y[n:]


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=40
    )
    with distributed.Client(cluster) as c:
        c.run(torch.set_num_threads, 1)
        yield c
    cluster.close()


# ---------------------------------------------------------------- retrain
def test_retrain_equals_independent_lbfgs(logistic):
    tb, model, X, y, _, _ = logistic
    before = flat_params(model).clone()
    remove = [0, 5, 7, 100]
    retrained = tb.retrain(remove, tol=1e-9)  # float64 L-BFGS stalls near 1e-9 here
    keep = torch.tensor([i for i in range(len(y)) if i not in remove])
    d = X.shape[1]
    # cold start from zero: the convex objective has one minimum
    oracle = scipy_minimise(lambda t, Z: linear_logits(t, Z, d), X[keep], y[keep], WD, np.zeros(2 * d + 2))
    np.testing.assert_allclose(flat_params(retrained).numpy(), oracle.numpy(), rtol=0, atol=1e-6)
    assert isinstance(retrained, nn.Linear) and retrained is not model and not retrained.training
    assert retrained.weight.dtype == torch.float64
    torch.testing.assert_close(flat_params(model), before, rtol=0, atol=0)  # the caller's model untouched
    # the retrained model really moved: the removal matters at this tolerance
    assert float((flat_params(retrained) - before).abs().max()) > 1e-4


def test_retrain_reaches_a_tolerance_below_where_its_line_search_stalls(logistic, monkeypatch):
    """L-BFGS stalls near 1e-11 of the per-sample scale here; the Newton polish goes on to the tolerance."""
    tb, model, X, y, _, _ = logistic
    remove = np.arange(0, 150, 4)  # 38 points
    keep = torch.tensor(np.setdiff1d(np.arange(len(y)), remove))
    tol = 1e-13 * tb.median_sample_gradient_norm_
    d = X.shape[1]

    def gradient_norm(module):  # of the retrained objective, in plain torch
        theta = flat_params(module).clone().requires_grad_(True)
        objective = F.cross_entropy(linear_logits(theta, X[keep], d), y[keep]) + WD / 2 * theta @ theta
        (gradient,) = torch.autograd.grad(objective, theta)
        return float(gradient.norm())

    assert gradient_norm(tb.retrain(remove, tol=tol)) <= 1.5 * tol  # no warning: converged (rounding aside)
    # without the polish, the same retraining stops above the tolerance and says so
    import hessview.engine.retrain as retrain_module

    def no_polish(problem, keep, theta, tol, budget):
        return theta, math.inf, 1  # nothing better than L-BFGS's best point

    monkeypatch.setattr(retrain_module, "newton_polish", no_polish)
    with pytest.warns(ApproximationWarning, match="largest gradient norm reached"):
        stalled = tb.retrain(remove, tol=tol / 1.0000001)  # another tolerance: not a cached retraining
    assert gradient_norm(stalled) > 10 * tol


@pytest.mark.parametrize("integer", [np.int64, np.int32])
def test_retrain_with_a_numpy_integer_maxiter_is_polished_like_an_int(logistic, integer):
    """maxiter=np.int64(1000) passes the check; the Newton polish must run as for 1000, not stop silently."""
    tb, model, X, y, _, _ = logistic
    remove = np.arange(1, 150, 4)
    keep = torch.tensor(np.setdiff1d(np.arange(len(y)), remove))
    tol = 1e-13 * tb.median_sample_gradient_norm_
    d = X.shape[1]
    theta = flat_params(tb.retrain(remove, tol=tol, maxiter=integer(1000))).requires_grad_(True)
    objective = F.cross_entropy(linear_logits(theta, X[keep], d), y[keep]) + WD / 2 * theta @ theta
    (gradient,) = torch.autograd.grad(objective, theta)  # of the retrained objective, in plain torch
    assert float(gradient.norm()) <= 1.5 * tol  # (L-BFGS alone stalls near 1e-11 of the scale here)


def test_retrain_that_is_slow_rather_than_stalled_keeps_a_budget_for_the_newton_polish(monkeypatch):
    """Convex, condition 1e10, L-BFGS without its preconditioner: it crawls; the reserved polish finishes it.

    Logistic regression with one input scaled 3000x has one minimum on every platform. Plain L-BFGS
    needs about 490 iterations to the tolerance; with maxiter=300 it keeps 60 for the Newton polish
    (whose first step raises the gradient norm while it lowers the objective, and is kept for that).
    """
    import dataclasses

    import hessview.engine.retrain as retrain_module

    g = torch.Generator().manual_seed(0)
    n, wd = 100, 1e-4
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] - X[:, 1] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long()
    X[:, 2] *= 3000
    torch.manual_seed(0)
    model = train_model(nn.Linear(3, 2), X, y, weight_decay=wd)
    tb = HessianToolbox(model, X, y, weight_decay=wd, progress=False).fit()
    problem = dataclasses.replace(tb._gt_problem(), preconditioner=None)  # slow L-BFGS
    keep = retrain_module.keep_indices(np.arange(0, n, 2), n)
    tol = 1e-7 * tb.median_sample_gradient_norm_

    def gradient_norm(theta):  # of the retrained objective, in plain torch
        theta = theta.clone().requires_grad_(True)
        objective = F.cross_entropy(linear_logits(theta, X[keep], 3), y[keep]) + wd / 2 * theta @ theta
        return float(torch.autograd.grad(objective, theta)[0].norm())

    polished = retrain_module.retrain_theta(problem, keep, tb.theta, tol, 300)
    assert polished.converged and polished.n_iter <= 300 and gradient_norm(polished.theta) <= 1.5 * tol
    monkeypatch.setattr(retrain_module, "POLISH_RESERVE", 0)  # L-BFGS may use every iteration
    crawled = retrain_module.retrain_theta(problem, keep, tb.theta, tol, 300)
    assert not crawled.converged and gradient_norm(crawled.theta) > 3 * tol


def test_retrain_of_an_ill_conditioned_model_equals_independent_lbfgs(logistic):
    """A feature in other units (x30): condition number above 1e3, L-BFGS preconditioned by the curvature."""
    _, _, X, y, _, _ = logistic
    Xs = X.clone()
    Xs[:, 3] *= 30.0
    d = X.shape[1]
    logits = lambda t, Z: linear_logits(t, Z, d)  # noqa: E731
    theta = scipy_minimise(logits, Xs, y, WD, np.zeros(2 * d + 2))
    model = nn.Linear(d, 2).double()
    with torch.no_grad():
        model.weight.copy_(theta[: 2 * d].view(2, d))
        model.bias.copy_(theta[2 * d :])
    tb = HessianToolbox(model, Xs, y, weight_decay=WD, progress=False).fit()
    assert tb.lambda_max_ > 1e3 * tb.lambda_min_ and tb._gt_problem().preconditioner is not None
    remove = np.arange(0, 150, 3)
    keep = torch.from_numpy(np.setdiff1d(np.arange(150), remove))
    oracle = scipy_minimise(logits, Xs[keep], y[keep], WD, np.zeros(2 * d + 2))
    retrained = tb.retrain(remove, tol=1e-9)
    np.testing.assert_allclose(flat_params(retrained).numpy(), oracle.numpy(), rtol=0, atol=1e-6)


def test_retrain_warns_with_the_gradient_norm_when_not_converged(logistic):
    tb = logistic[0]
    with pytest.warns(ApproximationWarning, match="largest gradient norm reached"):
        tb.retrain(np.arange(40), tol=1e-14, maxiter=2)
    # the explorer's background thread asks for no warning (filters are process-wide) and reads the flags
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, runs = tb._gt_actual_effect(logistic[4][:1], None, np.arange(41), "loss", 1e-14, 2, warn=False)
    assert not runs[1].converged and runs[1].gradient_norm > 1e-14


@pytest.mark.parametrize(
    ("remove", "error", "match"),
    [
        ([150], ValueError, "outside"),
        ([-1], ValueError, "outside"),
        ([3, 3], ValueError, "repeated"),
        (np.ones(150, dtype=bool), ValueError, "no training point"),
        (np.ones(10, dtype=bool), ValueError, "length"),
        ([0.5], TypeError, "integer"),
        (np.zeros((2, 2), dtype=int), ValueError, "one-dimensional"),
    ],
)
def test_retrain_refuses_bad_removals(logistic, remove, error, match):
    with pytest.raises(error, match=match):
        logistic[0].retrain(remove)


# ---------------------------------------------------------------- group effects
def test_actual_effect_and_group_influence_against_independent_retraining(logistic):
    """Top-10 helpful points: the Newton-step estimate has the sign and, within 30%, the size of the truth."""
    tb, _, X, y, X_test, y_test = logistic
    d = X.shape[1]
    logits = lambda t, Z: linear_logits(t, Z, d)  # noqa: E731
    full = scipy_minimise(logits, X, y, WD, np.zeros(2 * d + 2))
    base_loss, base_margin = loss_and_margin(logits(full, X_test), y_test)
    influence = tb.influence(X_test, y_test)
    errors, ratios = [], []
    for i in range(len(y_test)):
        top = np.argsort(-influence[i])[:10]
        keep = torch.from_numpy(np.setdiff1d(np.arange(len(y)), top))
        theta = scipy_minimise(logits, X[keep], y[keep], WD, full.numpy())
        loss, margin = loss_and_margin(logits(theta, X_test[i : i + 1]), y_test[i : i + 1])
        truth = {"loss": loss[0] - base_loss[i], "margin": -(margin[0] - base_margin[i])}
        for measurement, actual in truth.items():
            args = (X_test[i : i + 1], y_test[i : i + 1])
            measured = tb.actual_effect(*args, remove=top, measurement=measurement, tol=1e-9)[0]
            assert measured == pytest.approx(actual, rel=1e-4, abs=1e-8)
            predicted = tb.group_influence(*args, remove=top, measurement=measurement)[0]
            assert actual > 0 and predicted > 0  # helpful points: removing them raises loss, lowers margin
            errors.append(abs(predicted - actual) / actual)
            first = tb.group_influence(*args, remove=top, measurement=measurement, order=1)[0]
            ratios.append(first / actual)
        assert tb.group_influence(*args, remove=top, order=1)[0] == pytest.approx(influence[i, top].sum())
    # the loss of a confidently classified point is exponential in its margin: there a 15% error of the
    # Newton step in the margin's change (within 30% above) grows larger, so the loss's size is checked on
    # the points not deep in saturation (loss >= 0.01; 16 of the 20); the sign above on all
    saturated = np.repeat(base_loss < 0.01, 2) & np.tile([True, False], len(y_test))
    assert max(np.array(errors)[~saturated]) <= 0.3, errors
    assert np.median(ratios) < 0.7  # the first-order sum underestimates the group effect (Koh et al. 2019)


def test_group_influence_refuses_bad_order(logistic):
    tb, *_ = logistic
    with pytest.raises(ValueError, match="order"):
        tb.group_influence(logistic[4][:1], remove=[0], order=3)
    assert tb.group_influence(logistic[4][:2], remove=[]).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- LDS
def test_lds_on_logistic_regression_against_independent_pieces(logistic):
    tb, _, X, y, X_test, y_test = logistic
    result = lds(tb, X_test, y_test, n_subsets=12, alpha=0.5, seed=1)
    assert result.score >= 0.9
    assert result.actual.shape == result.predicted.shape == (12, 20)
    assert result.subsets.shape == (12, 150) and (result.subsets.sum(axis=1) == 75).all()
    # predicted: first-order influences from an autograd Hessian, summed over the removed points
    d, n = X.shape[1], len(y)
    theta = tb.theta.clone()

    def objective(t):
        return F.cross_entropy(linear_logits(t, X, d), y) + WD / 2 * t @ t

    H = torch.autograd.functional.hessian(objective, theta)
    G = torch.stack(
        [
            torch.func.grad(lambda t, i=i: F.cross_entropy(linear_logits(t, X[i : i + 1], d), y[i : i + 1]))(
                theta
            )
            for i in range(n)
        ]
    )
    G_test = torch.stack(
        [
            torch.func.grad(
                lambda t, i=i: F.cross_entropy(linear_logits(t, X_test[i : i + 1], d), y_test[i : i + 1])
            )(theta)
            for i in range(len(y_test))
        ]
    )
    change = torch.linalg.solve(H, G.T).T / n  # theta_-j - theta to first order
    removed = torch.from_numpy((~result.subsets).astype(np.float64))
    np.testing.assert_allclose(result.predicted, (removed @ change @ G_test.T).numpy(), rtol=1e-8, atol=1e-14)
    # actual: subset 0 retrained by SciPy
    keep = torch.from_numpy(np.flatnonzero(result.subsets[0]))
    retrained = scipy_minimise(lambda t, Z: linear_logits(t, Z, d), X[keep], y[keep], WD, theta.numpy())
    after, _ = loss_and_margin(linear_logits(retrained, X_test, d), y_test)
    before, _ = loss_and_margin(linear_logits(theta, X_test, d), y_test)
    np.testing.assert_allclose(result.actual[0], after - before, rtol=1e-4, atol=1e-9)
    # the score: SciPy's Spearman per test point, then the mean
    spearman = [scipy.stats.spearmanr(result.predicted[:, i], result.actual[:, i])[0] for i in range(20)]
    np.testing.assert_allclose(result.per_test, spearman, rtol=1e-12)
    assert result.score == pytest.approx(np.mean(spearman))


def test_lds_refuses_bad_arguments(logistic):
    tb, *_, X_test, y_test = logistic
    for kwargs, match in [
        ({"n_subsets": 2}, "n_subsets"),
        ({"alpha": 1.0}, "alpha"),
        ({"measurement": "accuracy"}, "measurement"),
        ({"tol": -1.0}, "tol"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(ValueError, match=match):
            lds(tb, X_test, y_test, **kwargs)


def test_lds_on_dask_equals_in_process(logistic, client):
    _, model, X, y, X_test, y_test = logistic
    results = []
    for c in (None, client):  # fresh toolboxes: retrainings are cached per toolbox
        tb = HessianToolbox(model, X, y, weight_decay=WD, progress=False).fit()
        results.append(lds(tb, X_test, y_test, n_subsets=8, measurement="margin", client=c))
    local, remote = results
    assert remote.score == pytest.approx(local.score, abs=1e-10)
    np.testing.assert_allclose(remote.actual, local.actual, rtol=0, atol=1e-10)
    np.testing.assert_allclose(remote.predicted, local.predicted, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- tune_damping
def brute_force_holdout_lds(model_logits, X, y, theta, subsets, holdout, dampings):
    """Hold-out LDS per damping from an autograd Hessian, per-sample gradients and SciPy retraining."""
    n = len(y)

    def objective(t):
        return F.cross_entropy(model_logits(t, X), y) + WD_MLP / 2 * t @ t

    H = torch.autograd.functional.hessian(objective, theta)
    G = torch.stack(
        [
            torch.func.grad(lambda t, i=i: F.cross_entropy(model_logits(t, X[i : i + 1]), y[i : i + 1]))(
                theta
            )
            for i in range(n)
        ]
    )
    Xh, yh = X[holdout], y[holdout]
    before = F.cross_entropy(model_logits(theta, Xh), yh, reduction="none")
    actual = []
    for mask in subsets:
        keep = torch.from_numpy(np.flatnonzero(mask))
        retrained = scipy_minimise(model_logits, X[keep], y[keep], WD_MLP, theta.numpy())
        actual.append((F.cross_entropy(model_logits(retrained, Xh), yh, reduction="none") - before).numpy())
    actual = np.array(actual)
    removed = torch.from_numpy((~subsets).astype(np.float64))
    scores = {}
    eye = torch.eye(len(theta), dtype=torch.float64)
    for delta in dampings:
        change = torch.linalg.solve(H + delta * eye, G.T).T / n
        predicted = (removed @ change @ G[holdout].T).numpy()
        rho = [scipy.stats.spearmanr(predicted[:, i], actual[:, i])[0] for i in range(len(holdout))]
        scores[delta] = float(np.nanmean(rho))
    return scores


@pytest.fixture(scope="module")
def mlp():
    return mlp_problem()


def test_tune_damping_picks_the_brute_force_best_and_beats_the_automatic_rule(mlp, capsys):
    model, X, y, X_test, y_test = mlp
    tb = HessianToolbox(model, X, y, weight_decay=WD_MLP, progress=False).fit()
    auto_delta = tb.damping_
    auto_test = lds(tb, X_test, y_test, n_subsets=8, seed=5, alpha=0.8).score
    tb.tune_damping(n_subsets=10, holdout=0.25, seed=0, alpha=0.8)
    assert "tune_damping retrainings: 10 retrainings x" in capsys.readouterr().out  # the estimate, printed
    grid = sorted(tb.damping_scores_)
    assert 0.0 in grid or tb.lambda_min_ <= 0
    assert any(g == pytest.approx(auto_delta) for g in grid)
    brute = brute_force_holdout_lds(
        mlp_logits, X, y, tb.theta, tb.damping_subsets_, tb.damping_holdout_, grid
    )
    for delta in grid:  # the toolbox's hold-out scores are the brute-force ones
        assert tb.damping_scores_[delta] == pytest.approx(brute[delta], abs=0.005)
    assert brute[tb.damping_] >= max(brute.values()) - 0.01
    assert tb.tuned_lds_ == tb.damping_scores_[tb.damping_]
    assert "hold-out LDS" in tb.damping_reason_ and f"{tb.damping_:.3g}" in tb.damping_reason_
    tuned_test = lds(tb, X_test, y_test, n_subsets=8, seed=5, alpha=0.8).score
    assert tuned_test >= auto_test - 1e-12


def test_tune_damping_is_deterministic_and_the_same_on_dask(mlp, client):
    model, X, y, *_ = mlp
    runs = []
    for c in (None, None, client):
        tb = HessianToolbox(model, X, y, weight_decay=WD_MLP, progress=False).fit()
        runs.append(tb.tune_damping(n_subsets=6, holdout=20, seed=4, alpha=0.7, client=c))
    for other in runs[1:]:
        assert other.damping_ == runs[0].damping_
        assert list(other.damping_scores_) == list(runs[0].damping_scores_)
        np.testing.assert_allclose(
            list(other.damping_scores_.values()), list(runs[0].damping_scores_.values()), rtol=0, atol=1e-10
        )


class Logistic(nn.Module):
    """Binary logistic regression as two logits (0, w.x + b): no redundant parameter."""

    def __init__(self, d):
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, x):
        z = self.linear(x)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def test_tuned_damping_is_unaffected_by_the_units_of_a_feature():
    """Feature 2 in other units (x100): without weight decay the problem is the same up to the units."""
    g = torch.Generator().manual_seed(7)
    n = 120
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(n, generator=g, dtype=torch.float64)
    y = ((X @ torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64) + noise) > 0).long()

    def logits(t, Z):
        z = Z @ t[:3] + t[3]
        return torch.stack([torch.zeros_like(z), z], dim=1)

    theta = newton(lambda t: F.cross_entropy(logits(t, X), y), torch.zeros(4, dtype=torch.float64))
    scores = []
    for scale in (1.0, 100.0):
        Xs, model = X.clone(), Logistic(3).double()
        Xs[:, 2] *= scale
        with torch.no_grad():  # the same minimum in the new units
            model.linear.weight.copy_(theta[:3] / torch.tensor([1.0, 1.0, scale], dtype=torch.float64))
            model.linear.bias.fill_(float(theta[3]))
        tb = HessianToolbox(model, Xs, y, weight_decay=0.0, progress=False).fit()
        tb.tune_damping(n_subsets=10, seed=0)
        scores.append((tb.tuned_lds_, max(tb.damping_scores_)))
    (tuned, top), (tuned_scaled, top_scaled) = scores
    assert abs(tuned_scaled - tuned) <= 0.02
    assert top_scaled > 100 * top  # the grid follows the spectrum's scale, not fixed units


def test_tune_damping_refuses_over_its_time_budget_and_bad_arguments(mlp):
    model, X, y, *_ = mlp
    tb = HessianToolbox(model, X, y, weight_decay=WD_MLP, progress=False).fit()
    before = tb.damping_
    with pytest.raises(ValueError, match="max_seconds"):
        tb.tune_damping(n_subsets=5, max_seconds=1e-9)
    assert tb.damping_ == before
    for kwargs, match in [
        ({"holdout": 0}, "holdout"),
        ({"holdout": 1.5}, "holdout"),
        ({"grid": [-1.0]}, "grid"),
        ({"grid": []}, "grid"),
        ({"alpha": 0}, "alpha"),
        ({"max_seconds": 0}, "max_seconds"),
    ]:
        with pytest.raises(ValueError, match=match):
            tb.tune_damping(**kwargs)


def test_damping_tuned_in_fit_is_tune_damping_with_its_defaults(mlp):
    model, X, y, *_ = mlp
    tuned = HessianToolbox(model, X, y, weight_decay=WD_MLP, damping="tuned", progress=False).fit()
    by_hand = HessianToolbox(model, X, y, weight_decay=WD_MLP, progress=False).fit().tune_damping()
    assert tuned.damping_ == by_hand.damping_ and tuned.tuned_lds_ == by_hand.tuned_lds_
    assert tuned.damping_scores_ == by_hand.damping_scores_
    assert tuned.damping_reason_.startswith("tuned: delta")


def test_a_tuned_damping_is_saved_with_its_scores(mlp, tmp_path):
    model, X, y, *_ = mlp
    tuned = HessianToolbox(model, X, y, weight_decay=WD_MLP, progress=False).fit().tune_damping(n_subsets=6)
    loaded = HessianToolbox.load(tuned.save(tmp_path / "tuned.safetensors"), model, progress=False)
    assert loaded.damping_ == tuned.damping_ and loaded.tuned_lds_ == tuned.tuned_lds_
    assert loaded.damping_scores_ == tuned.damping_scores_
    assert loaded.damping_reason_ == tuned.damping_reason_


def test_set_damping_after_tuning_says_what_was_tuned_and_returns_to_it(mlp, tmp_path):
    """Another damping clears tuned_lds_ and names the tuned value; the tuned value restores everything."""
    model, X, y, X_test, y_test = mlp
    tb = HessianToolbox(model, X, y, weight_decay=WD_MLP, progress=False).fit().tune_damping(n_subsets=6)
    tuned = tb.damping_, tb.tuned_lds_, tb.damping_reason_, dict(tb.damping_scores_)
    influence = tb.influence(X_test, y_test)
    other = tuned[0] + 0.05
    tb.set_damping(other)
    assert tb.damping_ == other and tb.tuned_lds_ is None
    assert not tb.damping_reason_.startswith("tuned")
    assert f"tune_damping chose {tuned[0]:.3g}" in tb.damping_reason_
    assert tb.damping_scores_ == tuned[3]  # the tuning's record is still there
    # saved at the other damping, loaded, then back to the tuned value: all of it comes back
    loaded = HessianToolbox.load(tb.save(tmp_path / "other.safetensors"), model, progress=False)
    for toolbox in (tb, loaded):
        assert toolbox.damping_ == other and toolbox.tuned_lds_ is None
        toolbox.set_damping(tuned[0])
        assert (toolbox.damping_, toolbox.tuned_lds_, toolbox.damping_reason_) == tuned[:3]
        np.testing.assert_array_equal(toolbox.influence(X_test, y_test), influence)
    tb.fit()  # a new fit forgets the tuning: its damping is the constructor's again
    assert tb.tuned_lds_ is None and tb.damping_scores_ == {}
    assert not tb.damping_reason_.startswith("tuned")


def test_files_saved_before_the_tuning_record_load_with_what_was_tuned(mlp, tmp_path):
    """Files without the "tuning" field: hessview kept tuned_lds_ after set_damping and no tuned reason.

    Saved right after tuning, the file's damping is the tuned one; saved after set_damping(other), the tuned
    value is the grid value whose score is tuned_lds (tune_damping's choice), not the file's damping.
    """
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from hessview.engine.persistence import seal

    model, X, y, X_test, y_test = mlp
    tb = HessianToolbox(model, X, y, weight_decay=WD_MLP, progress=False).fit().tune_damping(n_subsets=6)
    tuned = tb.damping_, tb.tuned_lds_, tb.damping_reason_
    other = tuned[0] + 0.05

    def older(path, out, **fitted):
        with safe_open(str(path), framework="pt") as handle:
            document = json.loads(handle.metadata()["hessview"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        for key in ("checksum", "format"):
            document.pop(key)
        del document["fitted"]["tuning"]
        document["fitted"].update(fitted)
        save_file(tensors, str(out), metadata=seal(tensors, document))
        return out

    path = older(tb.save(tmp_path / "tuned.safetensors"), tmp_path / "old-tuned.safetensors")
    loaded = HessianToolbox.load(path, model, progress=False)
    assert (loaded.damping_, loaded.tuned_lds_, loaded.damping_reason_) == tuned
    loaded.set_damping(other)
    assert loaded.tuned_lds_ is None and f"tune_damping chose {tuned[0]:.3g}" in loaded.damping_reason_
    loaded.set_damping(tuned[0])
    assert (loaded.damping_, loaded.tuned_lds_, loaded.damping_reason_) == tuned
    # what the earlier set_damping(other) left in the file: the tuned LDS and the user's reason
    tb.set_damping(other)
    reason = f"damping {other:.3g} chosen by the user"
    path = older(
        tb.save(tmp_path / "other.safetensors"),
        tmp_path / "old-other.safetensors",
        tuned_lds=tuned[1],
        damping_reason=reason,
    )
    loaded = HessianToolbox.load(path, model, progress=False)
    assert loaded.damping_ == other and loaded.tuned_lds_ is None
    assert loaded.damping_reason_.startswith(reason)
    assert f"tune_damping chose {tuned[0]:.3g}, hold-out LDS {tuned[1]:.4f}" in loaded.damping_reason_
    loaded.set_damping(tuned[0])
    assert (loaded.damping_, loaded.tuned_lds_) == tuned[:2] and loaded.damping_reason_.startswith("tuned")


def test_lds_and_tune_damping_with_a_low_rank_toolbox(logistic):
    """A low-rank inverse (top 4 of 10 pairs; it warns that the complement is misrepresented): same path."""
    _, model, X, y, X_test, y_test = logistic
    with pytest.warns(ApproximationWarning, match="misrepresented"):
        tb = HessianToolbox(model, X, y, weight_decay=WD, progress=False, method="lowrank", rank=4).fit()
    exact = HessianToolbox(model, X, y, weight_decay=WD, progress=False).fit()
    low = lds(tb, X_test, y_test, n_subsets=6, seed=2)
    full = lds(exact, X_test, y_test, n_subsets=6, seed=2)
    np.testing.assert_allclose(low.actual, full.actual, rtol=1e-6, atol=1e-10)  # same retrainings
    expected = (~low.subsets).astype(float) @ tb.influence(X_test, y_test).T
    np.testing.assert_allclose(low.predicted, expected, rtol=1e-10, atol=1e-14)
    with pytest.warns(ApproximationWarning, match="misrepresented"):  # once, for the chosen damping
        tb.tune_damping(n_subsets=5, seed=0)
    assert tb.damping_ in tb.damping_scores_ and tb.tuned_lds_ == max(tb.damping_scores_.values())
    with pytest.raises(ValueError, match="method='exact'"):
        tb.group_influence(X_test[:1], remove=[0, 1])
    import hessview

    assert hessview.evaluation.lds is lds
