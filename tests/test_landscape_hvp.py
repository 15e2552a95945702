"""Landscapes of larger networks with Hessian-vector products only, against plain-torch ground truth."""

import numpy as np
import pytest
import torch

from hessview.engine.errors import ApproximationWarning
from hessview.landscape import Landscape
from hessview.landscape.database import DatabaseError
from hessview.landscape.network import RegularisedLoss, TanhNetwork


def torch_loss(land):
    """An independent torch implementation of the documented loss (ground truth)."""
    net = land.network
    x, y = torch.tensor(land.X), torch.tensor(land.y)

    def loss(theta):
        w1, b1, w2, b2 = net.unpack(theta)
        out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return torch.nn.functional.cross_entropy(out, y) + 0.5 * land.weight_decay * theta.pow(2).sum()

    return loss


def oracle(land, coords):
    """Gradient norm and ascending eigenvalues of the full autograd Hessian."""
    f = torch_loss(land)
    theta = torch.tensor(coords, requires_grad=True)
    (grad,) = torch.autograd.grad(f(theta), theta)
    hessian = torch.autograd.functional.hessian(f, torch.tensor(coords)).numpy()
    return float(grad.norm()), np.linalg.eigvalsh(0.5 * (hessian + hessian.T))


def test_hessian_vector_products_match_autograd():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(15, 3)), rng.integers(0, 3, 15)
    net = TanhNetwork(3, 4, 3)
    loss = RegularisedLoss(net, X, y, 0.1, hessian="hvp")
    theta = rng.normal(size=net.n_params)
    f = lambda t: RegularisedLoss(net, X, y, 0.1)(t)  # noqa: E731
    hessian = torch.autograd.functional.hessian(f, torch.tensor(theta)).numpy()
    vectors = rng.normal(size=(net.n_params, 5))
    np.testing.assert_allclose(loss.hvp(theta, vectors), hessian @ vectors, atol=1e-12)
    np.testing.assert_allclose(loss.hvp(theta, vectors[:, 0]), hessian @ vectors[:, 0], atol=1e-12)


def test_hessian_mode_is_chosen_by_size_and_can_be_forced():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 30))
    y = (X[:, 0] > 0).astype(int)
    assert Landscape(X, y, hidden=2).hessian_mode == "dense"  # 66 weights
    assert Landscape(X, y, hidden=40).hessian_mode == "dense"  # 1322 weights
    assert Landscape(X, y, hidden=60).hessian_mode == "hvp"  # 1982 weights
    assert Landscape(X, y, hidden=60, hessian="dense").hessian_mode == "dense"
    assert Landscape(X, y, hidden=2, hessian="hvp").hessian_mode == "hvp"
    with pytest.raises(ValueError, match="hessian must be one of"):
        Landscape(X, y, hidden=2, hessian="lanczos")


def xor(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X[:, 0] * X[:, 1] > 0).astype(int)


def test_hvp_and_dense_paths_agree_on_a_small_network():
    X, y = xor(30, 4)
    found = {}
    for mode in ("dense", "hvp"):
        land = Landscape(X, y, hidden=4, weight_decay=1e-2, seed=1, hessian=mode)
        land.explore(n_steps=6, progress=False)
        land.connect(max_attempts=3, progress=False)
        found[mode] = land
    dense, hvp = found["dense"], found["hvp"]
    assert len(dense.minima) == len(hvp.minima) >= 2
    assert len(dense.transition_states) == len(hvp.transition_states) >= 1
    for a, b in zip(dense.minima, hvp.minima, strict=True):
        assert abs(a.loss - b.loss) < 1e-10
        assert np.isfinite(a.log_product) and np.isnan(b.log_product)
        np.testing.assert_allclose(b.eigenvalues, a.eigenvalues[: b.eigenvalues.size], atol=1e-8)
    for a, b in zip(dense.transition_states, hvp.transition_states, strict=True):
        assert abs(a.loss - b.loss) < 1e-10 and {a.minimum1, a.minimum2} == {b.minimum1, b.minimum2}
        np.testing.assert_allclose(b.eigenvalues, a.eigenvalues[: b.eigenvalues.size], atol=1e-8)
    with pytest.raises(ValueError, match="hessian='dense'"):
        hvp.rates(0.01)
    with pytest.raises(ValueError, match="hessian='dense'"):
        hvp.heat_capacity([0.01])
    assert set(hvp.harmonic_validity(0.01)) == {m.id for m in hvp.minima}


def test_pathsample_export_of_an_hvp_landscape_writes_zero_log_products_and_round_trips(tmp_path):
    X, y = xor(30, 4)
    land = Landscape(X, y, hidden=4, weight_decay=1e-2, seed=1, hessian="hvp")
    land.explore(n_steps=4, progress=False)
    land.connect(max_attempts=2, progress=False)
    with pytest.warns(ApproximationWarning, match="written as 0.0"):
        land.export_pathsample(tmp_path)
    rows = np.loadtxt(tmp_path / "min.data", ndmin=2)
    assert len(rows) == len(land.minima) and np.all(rows[:, 1] == 0.0)
    back = Landscape.from_pathsample(tmp_path, X, y, hidden=4, weight_decay=1e-2, hessian="hvp")
    assert [m.loss for m in back.minima] == [m.loss for m in land.minima]
    assert len(back.transition_states) == len(land.transition_states)


def test_hvp_transition_states_of_a_network_with_a_thousand_weights(monkeypatch):
    """Found without any P x P matrix; checked with the full autograd Hessian."""
    X, y = xor(20, 20)
    land = Landscape(X, y, hidden=44, weight_decay=1e-2, seed=1, hessian="hvp")
    assert land.network.n_params == 1014 and land.hessian_mode == "hvp"

    def refuse(*args, **kwargs):
        raise AssertionError("a dense P x P Hessian was formed")

    with monkeypatch.context() as patch:
        patch.setattr(RegularisedLoss, "hessian", refuse)
        patch.setattr(np.linalg, "eigh", refuse)
        patch.setattr(np.linalg, "eigvalsh", refuse)
        land.explore(n_steps=4, progress=False)
        land.connect(max_attempts=2, progress=False)
    assert len(land.minima) >= 2 and land.transition_states
    minima = {m.id: m for m in land.minima}
    for ts in land.transition_states:
        gradient_norm, eigenvalues = oracle(land, ts.coords)
        assert gradient_norm < 1e-8
        assert (eigenvalues < -1e-8).sum() == 1 and eigenvalues[1] > 0
        assert abs(eigenvalues[0] - ts.eigenvalues[0]) < 1e-7
        assert ts.minimum1 != ts.minimum2
        for m in (minima[ts.minimum1], minima[ts.minimum2]):
            gradient_norm, eigenvalues = oracle(land, m.coords)
            assert gradient_norm < 1e-8 and eigenvalues[0] > 0
            assert m.loss < ts.loss
        assert land.distance(ts.minimum1, ts.minimum2) > 1e-3


def test_explorer_shows_an_hvp_landscape_without_harmonic_occupations():
    from hessview.widgets.landscape_explorer import LandscapeExplorer

    X, y = xor(30, 4)
    land = Landscape(X, y, hidden=4, weight_decay=1e-2, seed=1, hessian="hvp")
    land.explore(n_steps=4, progress=False)
    land.connect(max_attempts=2, progress=False)
    explorer = LandscapeExplorer(land, X_test=X, y_test=y)
    assert "n/a (landscape built with hessian=&#x27;hvp&#x27;" in explorer.stats.value  # escaped text
    assert f"{land.global_minimum.loss:.6g}" in explorer.stats.value


def test_a_database_is_not_reopened_in_the_other_hessian_mode(tmp_path):
    """HVP points hold only the lowest eigenvalues: mixing them with dense ones would mix spectra."""
    X, y = xor(30, 4)
    for made, other in (("hvp", "dense"), ("dense", "hvp")):
        path = tmp_path / f"{made}.sqlite"
        land = Landscape(X, y, hidden=4, weight_decay=1e-2, seed=1, hessian=made, db=path)
        land.explore(n_steps=2, progress=False)
        stored = len(land.minima)
        land.db.close()
        with pytest.raises(DatabaseError, match="Hessian mode"):
            Landscape(X, y, hidden=4, weight_decay=1e-2, seed=1, hessian=other, db=path)
        again = Landscape(X, y, hidden=4, weight_decay=1e-2, seed=1, hessian=made, db=path)
        assert len(again.minima) == stored >= 1
        again.db.close()
