"""Ising Monte Carlo against exact enumeration, Onsager's solution and the Z2 symmetry."""

import itertools

import numpy as np
import pytest

from hessview.datasets import (
    CRITICAL_TEMPERATURE,
    ising_2d,
    onsager_energy,
    onsager_magnetisation,
)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def exact_small_lattice(L, T):
    """<e> and <|m|> per spin by summing over all 2^(L*L) configurations."""
    spins = np.array(list(itertools.product([-1.0, 1.0], repeat=L * L))).reshape(-1, L, L)
    energy = -(spins * (np.roll(spins, 1, 1) + np.roll(spins, 1, 2))).sum(axis=(1, 2))
    weights = np.exp(-(energy - energy.min()) / T)
    weights /= weights.sum()
    return weights @ energy / L**2, weights @ np.abs(spins.mean(axis=(1, 2)))


def test_matches_exact_enumeration_on_a_4x4_lattice(cache):
    T = 2.5
    data = ising_2d(
        [T],
        L=4,
        n_per_T=4000,
        n_chains=400,
        n_equilibration=200,
        n_decorrelation=5,
        seed=1,
        cache_dir=cache,
        progress=False,
    )
    energy, abs_m = exact_small_lattice(4, T)
    # independent chains, so the standard errors are sd/sqrt(n)
    assert abs(data.energy.mean() - energy) < 4 * data.energy.std() / np.sqrt(len(data)) + 5e-3
    abs_mc = np.abs(data.magnetisation)
    assert abs(abs_mc.mean() - abs_m) < 4 * abs_mc.std() / np.sqrt(len(data)) + 5e-3


@pytest.mark.parametrize("T", [1.5, 1.9])
def test_low_temperature_matches_onsager(T, cache):
    data = ising_2d([T], L=16, n_per_T=100, n_chains=50, n_equilibration=300, cache_dir=cache, progress=False)
    np.testing.assert_allclose(np.abs(data.magnetisation).mean(), onsager_magnetisation(T), atol=0.01)
    np.testing.assert_allclose(data.energy.mean(), onsager_energy(T), atol=0.01)
    assert np.all(data.y == 1)


def test_high_temperature_energy_matches_onsager_and_order_is_lost(cache):
    T = 4.0
    data = ising_2d(
        [T], L=16, n_per_T=200, n_chains=100, n_equilibration=300, cache_dir=cache, progress=False
    )
    np.testing.assert_allclose(data.energy.mean(), onsager_energy(T), atol=0.02)
    assert np.abs(data.magnetisation).mean() < 0.2
    assert np.all(data.y == 0)


def test_both_magnetisation_signs_appear_in_the_ordered_phase(cache):
    data = ising_2d([1.2], L=8, n_per_T=200, n_chains=20, n_equilibration=50, cache_dir=cache, progress=False)
    assert np.all(np.abs(data.magnetisation) > 0.9)
    assert 0.35 < np.mean(data.magnetisation > 0) < 0.65


def test_onsager_closed_forms():
    assert onsager_magnetisation(CRITICAL_TEMPERATURE + 1e-9) == 0.0
    assert 0.999 < onsager_magnetisation(1.0) < 1.0
    np.testing.assert_allclose(onsager_energy(CRITICAL_TEMPERATURE), -np.sqrt(2), atol=1e-9)
    # high-temperature series ln Z / N = ln 2 + 2 ln cosh(beta) + t^4 + O(t^6), t = tanh(beta)
    t = np.tanh(1 / 50)
    np.testing.assert_allclose(onsager_energy(50.0), -2 * t - 4 * t**3 * (1 - t**2), rtol=1e-6)
    np.testing.assert_allclose(onsager_energy(0.2), -2.0, atol=1e-6)


def test_shapes_labels_and_seeds(cache):
    T = [1.0, CRITICAL_TEMPERATURE, 3.0]
    kw = dict(
        L=6, n_per_T=6, n_chains=3, n_equilibration=10, n_decorrelation=2, cache_dir=cache, progress=False
    )
    data = ising_2d(T, seed=3, **kw)
    assert data.X.shape == (18, 6, 6) and data.X.dtype == np.float64
    assert set(np.unique(data.X)) <= {-1.0, 1.0}
    np.testing.assert_array_equal(data.y, np.repeat([1, 0, 0], 6))
    np.testing.assert_array_equal(data.x, np.repeat(T, 6))
    assert data.x_label == "T"
    np.testing.assert_allclose(data.magnetisation, data.X.mean(axis=(1, 2)))
    again = ising_2d(T, seed=3, **kw)
    np.testing.assert_array_equal(again.X, data.X)
    other = ising_2d(T, seed=4, **kw)
    assert not np.array_equal(other.X, data.X)
    assert len(list(cache.glob("ising_2d-*.npz"))) == 2


def test_numpy_integer_seeds_are_the_same_seed(cache):
    kw = dict(L=4, n_per_T=4, n_chains=2, n_equilibration=5, cache_dir=cache, progress=False)
    plain = ising_2d([2.0], seed=7, **kw)
    for seed in (np.int64(7), np.uint8(7), np.int32(7)):
        np.testing.assert_array_equal(ising_2d([2.0], seed=seed, **kw).X, plain.X)


def test_cache_round_trip_does_not_simulate_again(cache, monkeypatch):
    kw = dict(L=4, n_per_T=4, n_chains=2, n_equilibration=5, cache_dir=cache, progress=False)
    first = ising_2d([2.0], **kw)

    def fail(*args, **kwargs):
        raise AssertionError("simulated although cached")

    monkeypatch.setattr("hessview.datasets.ising._simulate", fail)
    second = ising_2d([2.0], **kw)
    np.testing.assert_array_equal(first.X, second.X)
    np.testing.assert_array_equal(first.energy, second.energy)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"temperatures": [1.0], "L": 7}, ValueError, "L must be even"),
        ({"temperatures": [1.0], "L": 8.0}, TypeError, "L must be an integer"),
        ({"temperatures": [1.0], "n_per_T": 0}, ValueError, "n_per_T"),
        ({"temperatures": [0.0]}, ValueError, "positive"),
        ({"temperatures": [np.nan]}, ValueError, "finite"),
        ({"temperatures": []}, ValueError, "non-empty"),
        ({"temperatures": [[1.0, 2.0]]}, ValueError, "1-D"),
        ({"temperatures": [1.0], "seed": 1.5}, TypeError, "seed must be an integer"),
        ({"temperatures": [1.0], "seed": 1.0}, TypeError, "seed must be an integer"),
        ({"temperatures": [1.0], "seed": "1"}, TypeError, "seed must be an integer"),
        ({"temperatures": [1.0], "seed": True}, TypeError, "seed must be an integer"),
        ({"temperatures": [1.0], "seed": None}, TypeError, "seed must be an integer"),
        ({"temperatures": [1.0], "seed": -1}, ValueError, "non-negative"),
    ],
)
def test_bad_arguments_raise(kwargs, error, message, cache):
    with pytest.raises(error, match=message):
        ising_2d(cache_dir=cache, progress=False, **kwargs)
