"""Resampling Uncertainty Estimation (RUE), Schulam & Saria, AISTATS 2019.

Each bootstrap resample reweights the training points with :math:`w_b \\sim \\mathrm{Multinomial}(n,
1/n)`; instead of retraining, the model moves by one Newton step of the reweighted objective,

.. math:: \\theta_b = \\theta - (H + \\delta I)^{-1} G^T (w_b - 1) / n,

where the rows of :math:`G` are the per-sample training gradients. The spread of the resampled models'
predictions is the uncertainty. Every resample counts (the code published with Dawid et al. 2022 kept
only the first one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Uncertainty:
    """Predictions of the resampled models, summarised per test point.

    Attributes:
        mean, std: mean and standard deviation over resamples of the predicted class probabilities
            ``(n_test, n_classes)`` (classification) or predicted values (regression).
        lower, upper: the central ``level`` interval (empirical quantiles over resamples).
        loss_var: variance over resamples of each test point's loss ``(n_test,)``.
        samples: every resample's predictions, ``(n_resamples, n_test, ...)``.
        level, n_resamples, seed: the settings used.
    """

    mean: np.ndarray
    std: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    loss_var: np.ndarray
    samples: np.ndarray
    level: float
    n_resamples: int
    seed: int


def bootstrap_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Multinomial bootstrap counts ``(n_resamples, n)``; each row sums to ``n``.

    >>> bootstrap_weights(5, 3, seed=0).sum(axis=1)
    array([5, 5, 5])
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples)


def summarise(samples: np.ndarray, losses: np.ndarray, level: float, seed: int) -> Uncertainty:
    """Collect the statistics over the first axis (resamples)."""
    tail = (1.0 - level) / 2.0
    return Uncertainty(
        mean=samples.mean(axis=0),
        std=samples.std(axis=0, ddof=1),
        lower=np.quantile(samples, tail, axis=0),
        upper=np.quantile(samples, 1.0 - tail, axis=0),
        loss_var=losses.var(axis=0, ddof=1),
        samples=samples,
        level=level,
        n_resamples=samples.shape[0],
        seed=seed,
    )
