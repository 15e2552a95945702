"""Relevance does not depend on feature units; its bootstrap spread; adaptive basin-hopping steps."""

import numpy as np
import pytest

from hessview.landscape import Landscape
from hessview.landscape.symmetry import align


def linear_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(150, 6))
    return X, (X[:, 1] - 0.8 * X[:, 4] > 0).astype(int)


@pytest.mark.parametrize("factor", [8.0, 1 / 8.0, 3.0])
def test_deciding_features_rank_first_before_and_after_rescaling_any_feature(factor):
    X, y = linear_data()
    base = Landscape(X, y, hidden=2, weight_decay=1e-2, seed=1).explore(4, progress=False).feature_relevance()
    assert set(np.argsort(base)[::-1][:2]) == {1, 4}
    for feature in range(X.shape[1]):
        scaled = X.copy()
        scaled[:, feature] = factor * scaled[:, feature] + 5.0  # other units and origin
        land = Landscape(scaled, y, hidden=2, weight_decay=1e-2, seed=1).explore(4, progress=False)
        relevance = land.feature_relevance()
        assert set(np.argsort(relevance)[::-1][:2]) == {1, 4}, (feature, relevance)
        np.testing.assert_allclose(relevance, base, atol=1e-6)


def test_standardisation_is_applied_to_training_and_new_inputs():
    X, y = linear_data()
    X = X * np.array([1.0, 100.0, 1e-3, 1.0, 7.0, 1.0]) + 3.0
    land = Landscape(X, y, hidden=2, weight_decay=1e-2).explore(1, progress=False)
    np.testing.assert_allclose(land.X, (X - X.mean(0)) / X.std(0))
    np.testing.assert_allclose(land.X.mean(0), 0, atol=1e-12)
    m = land.global_minimum
    w1, b1, w2, b2 = land.network.unpack(m.coords)
    X_new = X[:7] * 1.1
    logits = np.tanh(((X_new - X.mean(0)) / X.std(0)) @ w1.T + b1) @ w2.T + b2
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(land.predict_proba(X_new, m.id), p / p.sum(1, keepdims=True), rtol=1e-12)


def relevance_formula(network, aligned):
    """The documented score written again: sum_j ||mean W2[:, j]|| |mu_ji| |mu_ji| / (|mu_ji| + sigma_ji)."""
    h, d = network.hidden, network.n_inputs
    w1 = aligned[:, : h * d].reshape(-1, h, d)
    w2 = aligned[:, h * d + h : h * d + h + network.n_classes * h].reshape(-1, network.n_classes, h)
    mu, sigma = w1.mean(0), w1.std(0)
    with np.errstate(invalid="ignore"):
        c = np.where(np.abs(mu) + sigma > 0, np.abs(mu) / (np.abs(mu) + sigma), 0.0)
    score = (np.linalg.norm(w2.mean(0), axis=0)[:, None] * np.abs(mu) * c).sum(0)
    return score / score.sum()


def test_relevance_spread_is_the_bootstrap_standard_deviation():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    land = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=0).explore(
        15, temperature=1.0, step_size=3.0, progress=False
    )
    minima = sorted(land.minima, key=lambda m: m.loss)
    assert len(minima) >= 3
    reference = minima[0].coords
    aligned = np.stack([reference] + [align(land.network, reference, m.coords)[0] for m in minima[1:]])
    np.testing.assert_allclose(land.feature_relevance(), relevance_formula(land.network, aligned), rtol=1e-10)
    draws = np.random.default_rng(7)
    samples = [
        relevance_formula(land.network, aligned[draws.integers(0, len(aligned), len(aligned))])
        for _ in range(50)
    ]
    np.testing.assert_allclose(
        land.feature_relevance_spread(n_resamples=50, seed=7), np.std(samples, axis=0), rtol=1e-10
    )
    np.testing.assert_allclose(land.feature_relevance_spread([minima[0].id]), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="n_resamples"):
        land.feature_relevance_spread(n_resamples=1)


def test_groups_by_basin_rule_and_superbasin():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    land = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=0).explore(25, progress=False)
    land.connect(progress=False)
    for rule in ("lowest_energy", "lowest_barrier"):
        basins = land.basins(rule=rule)
        for bottom in set(basins.values()):
            members = sorted(m for m, b in basins.items() if b == bottom)
            np.testing.assert_allclose(
                land.feature_relevance(bottom, rule=rule), land.feature_relevance(members), rtol=1e-12
            )
    with pytest.raises(ValueError, match="rule"):
        land.basins(rule="steepest")
    top = max(t.loss for t in land.transition_states) + 1.0
    assert sorted(land.superbasin(land.global_minimum.id, top)) == sorted(m.id for m in land.minima)


def test_adaptive_step_follows_the_acceptance_ratio_and_resumes(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2))
    y = (X[:, 0] > 0).astype(int)
    # a huge temperature accepts every step: the step grows by 1.1 per window
    hot = Landscape(X, y, hidden=2, weight_decay=1e-2, seed=0)
    hot.explore(20, temperature=1e9, step_size=0.5, target_acceptance=0.5, adjust_every=5, progress=False)
    assert hot.step_size_ == pytest.approx(0.5 * 1.1**4)
    # a tiny temperature and big steps into worse minima: acceptance falls and the step shrinks
    counts = []
    X_xor = rng.normal(size=(60, 2))
    y_xor = (X_xor[:, 0] * X_xor[:, 1] > 0).astype(int)
    cold = Landscape(X_xor, y_xor, hidden=3, weight_decay=1e-3, seed=0)
    cold.explore(
        20,
        temperature=1e-12,
        step_size=5.0,
        target_acceptance=0.9,
        adjust_every=5,
        callback=lambda step, m, accepted: counts.append(accepted),
        progress=False,
    )
    windows = [np.mean(counts[1:][i : i + 5]) for i in range(0, 20, 5)]
    expected = 5.0
    for ratio in windows:
        expected *= 1.1 if ratio > 0.9 else 1 / 1.1
    assert cold.step_size_ == pytest.approx(expected) and cold.step_size_ < 5.0
    # interrupted after 7 steps and resumed: the same chain and step size as one run of 12
    whole = Landscape(X, y, hidden=2, weight_decay=1e-2, seed=3)
    whole.explore(12, temperature=1.0, step_size=1.0, target_acceptance=0.3, adjust_every=4, progress=False)
    path = tmp_path / "adaptive.sqlite"
    with Landscape(X, y, hidden=2, weight_decay=1e-2, seed=3, db=path) as part:
        part.explore(7, temperature=1.0, step_size=1.0, target_acceptance=0.3, adjust_every=4, progress=False)
    with Landscape(X, y, hidden=2, weight_decay=1e-2, seed=3, db=path) as rest:
        rest.explore(5, temperature=1.0, step_size=1.0, target_acceptance=0.3, adjust_every=4, progress=False)
        assert rest.step_size_ == pytest.approx(whole.step_size_)
        assert [m.loss for m in rest.minima] == pytest.approx([m.loss for m in whole.minima])
        assert [m.hits for m in rest.minima] == [m.hits for m in whole.minima]
    with pytest.raises(ValueError, match="target_acceptance"):
        whole.explore(1, target_acceptance=1.5)
