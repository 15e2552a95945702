"""method="lowrank" and "auto" against the exact mode, and the low-rank inverse against closed forms."""

import numpy as np
import pytest
import torch
from support import fit_checked, pearson, train_model
from torch import nn

import hessview
import hessview.engine.hessian
import hessview.engine.toolbox
from hessview import HessianToolbox
from hessview.engine.lowrank import LowRankInverse, top_eigenpairs

WD = 0.05


def xor_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = ((X[:, 0] * X[:, 1] + 0.5 * X[:, 2]) > 0).long()
    return X, y


@pytest.fixture(scope="module")
def trained():
    X, y = xor_data(200, seed=0)
    torch.manual_seed(0)
    model = train_model(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), X, y, weight_decay=WD)
    exact = HessianToolbox(model, X, y, weight_decay=WD, progress=False).fit()
    return model, X, y, exact


def lowrank(model, X, y, rank, **kw):
    kw.setdefault("weight_decay", WD)
    return fit_checked(HessianToolbox(model, X, y, method="lowrank", rank=rank, progress=False, **kw))


def top_by_magnitude(eigenvalues, rank):
    return eigenvalues[torch.argsort(eigenvalues.abs(), descending=True)[:rank]].sort().values


def test_top_eigenpairs_match_the_exact_decomposition(trained):
    model, X, y, exact = trained
    tb = lowrank(model, X, y, rank=12)
    expected = top_by_magnitude(exact.eigenvalues, 12)
    assert tb.eigenvalues.shape == (12,) and tb.eigenvectors.shape == (tb.n_params, 12)
    np.testing.assert_allclose(tb.eigenvalues.numpy(), expected.numpy(), rtol=1e-4)
    # each Ritz vector is an eigenvector of the exact Hessian
    residual = exact.hessian @ tb.eigenvectors - tb.eigenvectors * tb.eigenvalues
    assert float(residual.norm(dim=0).max()) < 1e-4 * float(tb.eigenvalues.abs().max())
    assert tb.lambda_max_ == pytest.approx(float(exact.eigenvalues[-1]), rel=1e-4)


def test_influence_and_extrapolation_agree_with_exact(trained):
    model, X, y, exact = trained
    tb = lowrank(model, X, y, rank=30)
    X_test, _ = xor_data(40, seed=1)
    ours, truth = tb.influence(X_test), exact.influence(X_test)
    assert min(pearson(ours[i], truth[i]) for i in range(len(X_test))) >= 0.95
    m = 10
    a, b = tb.extrapolation(X_test, m=m), exact.extrapolation(X_test, m=m)
    assert (a.flag == b.flag).mean() >= 0.9
    far = 4 * X_test  # outside the training cloud, so that some points are flagged
    assert (tb.extrapolation(far, m=m).flag == exact.extrapolation(far, m=m).flag).mean() >= 0.9
    assert exact.extrapolation(far, m=m).flag.any()


def subspace_problem():
    """Inputs in a 2-D subspace of R^5: the data Hessian of a 2-class linear softmax has rank <= 3."""
    g = torch.Generator().manual_seed(3)
    basis = torch.randn(2, 5, generator=g, dtype=torch.float64)
    Z = torch.randn(150, 2, generator=g, dtype=torch.float64)
    y = (torch.rand(150, generator=g, dtype=torch.float64) < torch.sigmoid(2 * Z[:, 0] - Z[:, 1])).long()
    X = Z @ basis
    torch.manual_seed(0)
    model = train_model(nn.Linear(5, 2), X, y, weight_decay=0.1)
    return model, X, y, Z @ basis + 0.3


def test_lowrank_inverse_is_exact_when_the_data_curvature_has_rank_r(monkeypatch):
    """Complement curvature weight_decay is then exact: influence, RelatIF and RUE equal the exact mode."""
    model, X, y, X_test = subspace_problem()
    exact = HessianToolbox(model, X, y, weight_decay=0.1, progress=False).fit()
    data_rank = int(((exact.eigenvalues - 0.1).abs() > 1e-9).sum())
    assert data_rank == 3
    tb = lowrank(model, X, y, rank=3, weight_decay=0.1, lanczos_tol=0)
    np.testing.assert_allclose(tb.influence(X_test[:6]), exact.influence(X_test[:6]), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(tb.relatif(X_test[:6]), exact.relatif(X_test[:6]), rtol=1e-7, atol=1e-12)
    a, b = tb.uncertainty(X_test[:6], n_resamples=30), exact.uncertainty(X_test[:6], n_resamples=30)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-7, atol=1e-12)
    # the same when the training gradients are not kept but recomputed shard by shard
    monkeypatch.setattr(hessview.engine.toolbox, "available_memory", lambda: 1_000)
    streamed = lowrank(model, X, y, rank=3, weight_decay=0.1, lanczos_tol=0)
    assert not streamed.keeps_train_gradients
    with pytest.raises(AttributeError, match="not kept"):
        streamed.train_gradients  # noqa: B018
    np.testing.assert_allclose(
        streamed.influence(X_test[:6]), exact.influence(X_test[:6]), rtol=1e-7, atol=1e-12
    )
    np.testing.assert_allclose(streamed.relatif(X_test[:6]), exact.relatif(X_test[:6]), rtol=1e-7, atol=1e-12)
    c = streamed.uncertainty(X_test[:6], n_resamples=30)
    np.testing.assert_allclose(c.samples, b.samples, rtol=1e-7, atol=1e-12)
    assert streamed.gradient_norm_ == pytest.approx(exact.gradient_norm_, rel=1e-6, abs=1e-12)
    assert streamed.median_sample_gradient_norm_ == pytest.approx(exact.median_sample_gradient_norm_)


def test_low_rank_inverse_closed_form():
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    lam = torch.tensor([5.0, 3.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)  # complement 0.5 exactly
    H = Q @ torch.diag(lam) @ Q.T
    inverse = LowRankInverse(lam[:2], Q[:, :2], delta=0.25, complement=0.5)
    M = torch.randn(6, 3, dtype=torch.float64)
    expected = torch.linalg.solve(H + 0.25 * torch.eye(6, dtype=torch.float64), M)
    torch.testing.assert_close(inverse.apply(M), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="not positive definite"):
        LowRankInverse(lam[:2], Q[:, :2], delta=0.0, complement=0.0)


def test_top_eigenpairs_of_an_indefinite_matrix_by_magnitude():
    torch.manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    lam = torch.linspace(-1, 1, 30, dtype=torch.float64) ** 3 * 10
    A = Q @ torch.diag(lam) @ Q.T
    values, vectors = top_eigenpairs(lambda v: A @ v, 30, 4, tol=0)
    expected = top_by_magnitude(lam, 4)
    np.testing.assert_allclose(values.numpy(), expected.numpy(), rtol=1e-10)
    torch.testing.assert_close(A @ vectors, vectors * values, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="rank must be"):
        top_eigenpairs(lambda v: A @ v, 30, 30)


@pytest.mark.parametrize("krylov_dim", [None, 9, 30])
def test_top_eigenpairs_for_any_krylov_dimension(krylov_dim):
    """ARPACK's ncv changes only the work: the pairs are those of eigh, to the tolerance."""
    torch.manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    lam = torch.cat([torch.tensor([9.0, -7.0, 5.0]), torch.linspace(-1, 1, 27)]).double()
    A = Q @ torch.diag(lam) @ Q.T
    values, vectors = top_eigenpairs(lambda v: A @ v, 30, 5, tol=0, krylov_dim=krylov_dim)
    np.testing.assert_allclose(values.numpy(), top_by_magnitude(lam, 5).numpy(), rtol=1e-10)
    torch.testing.assert_close(A @ vectors, vectors * values, atol=1e-9, rtol=0)


@pytest.mark.parametrize("krylov_dim", [5, 31, 2.5, True])
def test_bad_krylov_dimension_is_refused(krylov_dim):
    A = torch.eye(30, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"krylov_dim must be an integer in \[6, 30\]"):
        top_eigenpairs(lambda v: A @ v, 30, 5, krylov_dim=krylov_dim)


def test_hessian_is_unavailable_with_a_clear_error(trained):
    model, X, y, _ = trained
    tb = lowrank(model, X, y, rank=5)
    with pytest.raises(AttributeError, match="method='lowrank' never forms the P x P Hessian"):
        tb.hessian  # noqa: B018
    assert not hasattr(tb, "hessian")
    text = tb.summary()
    assert "lowrank" in text and "top 5 pairs" in text and "complement curvature" in text


def test_auto_picks_by_memory_and_says_so(trained, monkeypatch):
    model, X, y, exact = trained
    tb = fit_checked(HessianToolbox(model, X, y, weight_decay=WD, method="auto", rank=6, progress=False))
    assert tb.method_ == "exact" and "auto" in tb.method_reason_
    torch.testing.assert_close(tb.hessian, exact.hessian)
    assert "method              exact: auto" in tb.summary()
    monkeypatch.setattr(hessview.engine.hessian, "available_memory", lambda: 10_000)
    tb = fit_checked(HessianToolbox(model, X, y, weight_decay=WD, method="auto", rank=6, progress=False))
    assert tb.method_ == "lowrank" and "GB" in tb.method_reason_
    assert "method              lowrank: auto: top 6 eigenpairs by Lanczos" in tb.summary()
    np.testing.assert_allclose(
        tb.eigenvalues.numpy(), top_by_magnitude(exact.eigenvalues, 6).numpy(), rtol=1e-4
    )


def test_memory_guard_points_to_lowrank(trained, monkeypatch):
    model, X, y, _ = trained
    monkeypatch.setattr(hessview.engine.hessian, "available_memory", lambda: 1_000)
    with pytest.raises(hessview.engine.hessian.CurvatureTooLargeError, match="method='lowrank'"):
        HessianToolbox(model, X, y, progress=False).fit()


def test_lowrank_damping_counts_the_complement(trained):
    """With weight_decay 0 the complement has curvature 0: auto damping makes it invertible, and warns.

    (The model was trained with weight decay WD, so without it theta is not stationary either.)
    """
    model, X, y, _ = trained
    with pytest.warns(hessview.ApproximationWarning, match="misrepresented"):
        with pytest.warns(hessview.NotStationaryWarning):
            tb = HessianToolbox(model, X, y, method="lowrank", rank=5, weight_decay=0.0, progress=False).fit()
    assert tb.damping_ > 0 and float((tb.eigenvalues + tb.damping_).min()) > 0
    assert tb.complement_factor_ > 2
    with pytest.raises(ValueError, match="not positive definite"):
        HessianToolbox(
            model, X, y, method="lowrank", rank=5, weight_decay=0.0, damping=0.0, progress=False
        ).fit()


def test_save_load_round_trip_lowrank(trained, tmp_path):
    model, X, y, _ = trained
    tb = lowrank(model, X, y, rank=5)
    loaded = HessianToolbox.load(tb.save(tmp_path / "lr.safetensors"), model, progress=False)
    assert loaded.method_ == "lowrank" and loaded.rank == 5
    assert torch.equal(loaded.eigenvectors, tb.eigenvectors)
    np.testing.assert_array_equal(loaded.influence(X[:3]), tb.influence(X[:3]))
    assert loaded.summary() == tb.summary()


@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(method="svd"), ValueError, "method must be one of"),
        (dict(curvature="fisher"), ValueError, "curvature must be one of"),
        (dict(rank=0), ValueError, "rank must be an integer in"),
        (dict(rank=58), ValueError, r"rank must be an integer in \[1, 57\]"),
        (dict(rank=2.5), TypeError, "rank must be an integer"),
        (dict(lanczos_tol=-1.0), ValueError, "lanczos_tol"),
        (dict(client="localhost:8786"), TypeError, "dask.distributed.Client"),
    ],
)
def test_bad_options_are_refused(trained, kw, error, match):
    model, X, y, _ = trained
    with pytest.raises(error, match=match):
        HessianToolbox(model, X, y, progress=False, **kw)


def test_bad_queries_are_refused_in_lowrank(trained):
    model, X, y, _ = trained
    tb = lowrank(model, X, y, rank=5)
    with pytest.raises(ValueError, match=r"m must be an integer in \[0, 5\] \(method='lowrank' keeps 5"):
        tb.extrapolation(X[:3], m=6)
    with pytest.raises(ValueError, match="solver must be one of"):
        tb.influence(X[:3], solver="lu")
