"""Occupation probabilities of minima in the harmonic superposition approximation (Wales 2003, ch. 7).

Each minimum :math:`a` contributes a harmonic partition function
:math:`Z_a \\propto e^{-L_a/T} / \\sqrt{\\prod_i \\lambda_{a,i}}` (the factor
:math:`(2\\pi T)^{P/2}` and the symmetry count :math:`2^h h!` are the same for every minimum and cancel), so

.. math:: p_a(T) = \\frac{\\exp(-L_a/T - \\tfrac12 \\log\\prod_i\\lambda_{a,i})}
                       {\\sum_b \\exp(-L_b/T - \\tfrac12 \\log\\prod_i\\lambda_{b,i})}.
"""

from __future__ import annotations

import numpy as np


def occupation_probabilities(
    energies: np.ndarray, log_products: np.ndarray, temperature: float
) -> np.ndarray:
    """Harmonic-superposition occupation probabilities (computed stably in log space).

    >>> p = occupation_probabilities(np.array([0.0, 0.0]), np.log(np.array([1.0, 4.0])), 1.0)
    >>> p.round(4).tolist()  # weights 1 and 1/sqrt(4)
    [0.6667, 0.3333]
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    log_weights = -np.asarray(energies, float) / temperature - 0.5 * np.asarray(log_products, float)
    log_weights -= log_weights.max()
    weights = np.exp(log_weights)
    return weights / weights.sum()
