"""The Ising findings: accuracy, T_c from the p = 0.5 crossing, uncertainty largest near T_c."""

import warnings

import numpy as np
import pytest

from hessview import HessianToolbox
from hessview.datasets import CRITICAL_TEMPERATURE, ising_2d
from hessview.models import IsingCNN, train


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ising")
    train_set = ising_2d(np.linspace(1.2, 3.4, 12), L=16, n_per_T=30, seed=0, cache_dir=cache, progress=False)
    test_set = ising_2d(
        np.linspace(1.25, 3.35, 22), L=16, n_per_T=10, seed=1, cache_dir=cache, progress=False
    )
    result = train(
        IsingCNN(L=16), train_set.X, train_set.y, weight_decay=1e-3, epochs=200, seed=0, progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a non-stationary fit would invalidate the uncertainty
        toolbox = HessianToolbox(
            result.model, train_set.X, train_set.y, weight_decay=1e-3, progress=False
        ).fit()
    return toolbox, test_set


def per_temperature(values, temperature):
    T = np.unique(temperature)
    return T, np.array([values[temperature == t].mean() for t in T])


@pytest.mark.slow
def test_accuracy_on_unseen_temperatures(fitted):
    toolbox, test = fitted
    predicted = toolbox.predict(test.X).argmax(1)
    assert np.mean(predicted == test.y) >= 0.9


@pytest.mark.slow
def test_critical_temperature_from_the_half_probability_crossing(fitted):
    toolbox, test = fitted
    T, p_ordered = per_temperature(toolbox.predict(test.X)[:, 1], test.temperature)
    below = np.flatnonzero((p_ordered[:-1] >= 0.5) & (p_ordered[1:] < 0.5))
    assert len(below) >= 1
    i = below[0]
    crossing = T[i] + (p_ordered[i] - 0.5) / (p_ordered[i] - p_ordered[i + 1]) * (T[i + 1] - T[i])
    assert abs(crossing - CRITICAL_TEMPERATURE) < 0.1


@pytest.mark.slow
def test_uncertainty_is_largest_near_the_transition(fitted):
    toolbox, test = fitted
    std = toolbox.uncertainty(test.X, n_resamples=100, seed=0).std[:, 1]
    T, mean_std = per_temperature(std, test.temperature)
    assert abs(T[np.argmax(mean_std)] - CRITICAL_TEMPERATURE) < 0.3
    near = mean_std[np.abs(T - CRITICAL_TEMPERATURE) < 0.3].max()
    deep = mean_std[np.abs(T - CRITICAL_TEMPERATURE) > 0.8]
    assert near > 3 * deep.max()
