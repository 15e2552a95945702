"""Harmonic thermodynamics and kinetics of a database of minima and transition states.

Classical harmonic superposition approximation with unit masses and :math:`k_B = 1` (Wales, *Energy
Landscapes*, 2003, ch. 7; Strodel & Wales, Chem. Phys. Lett. 466, 105 (2008)). A minimum :math:`a` with
loss :math:`L_a`, positive Hessian eigenvalues :math:`\\lambda_{a,i}` (:math:`P` of them) and point-group
order :math:`o_a` (the number of network symmetries that leave it unchanged) has the configurational
partition function

.. math:: Z_a(T) = \\frac{(2\\pi T)^{P/2}}{o_a \\sqrt{\\prod_i \\lambda_{a,i}}}\\, e^{-L_a/T}

(the common factor :math:`2^h h!`, the size of the symmetry group, cancels everywhere); a transition state
:math:`t` has the same form over its :math:`P - 1` positive eigenvalues. Occupation probabilities are
:math:`p_a = Z_a / \\sum_b Z_b`; the harmonic transition-state-theory rate from :math:`a` over :math:`t`
(Vineyard 1957) is

.. math:: k_{a\\to b} = \\sum_{t\\,\\text{joining}\\,a,b} \\frac{o_a}{o_t}\\,
          \\frac{\\prod_{i=1}^{P}\\nu_{a,i}}{2\\pi\\prod_{i=1}^{P-1}\\nu_{t,i}}\\, e^{-(L_t - L_a)/T},
          \\qquad \\nu = \\sqrt{\\lambda},

so that :math:`p_a k_{a\\to b} = p_b k_{b\\to a}` (detailed balance) holds exactly. The mean energy is
:math:`U = \\sum_a p_a L_a + P T / 2` and the heat capacity
:math:`C = dU/dT = P/2 + (\\langle L^2\\rangle - \\langle L\\rangle^2)/T^2`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not np.isscalar(temperature):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    return value


def log_partition_functions(energies, log_products, orders, n_modes, temperature: float) -> np.ndarray:
    """:math:`\\log Z` of each stationary point (``n_modes`` positive eigenvalues each)."""
    temperature = _check_temperature(temperature)
    return (
        -np.asarray(energies, float) / temperature
        + 0.5 * np.asarray(n_modes, float) * np.log(2 * np.pi * temperature)
        - np.log(np.asarray(orders, float))
        - 0.5 * np.asarray(log_products, float)
    )


def occupation_probabilities(
    energies: np.ndarray, log_products: np.ndarray, temperature: float, orders: np.ndarray | None = None
) -> np.ndarray:
    """Harmonic-superposition occupation probabilities (computed stably in log space).

    >>> p = occupation_probabilities(np.array([0.0, 0.0]), np.log(np.array([1.0, 4.0])), 1.0)
    >>> p.round(4).tolist()  # weights 1 and 1/sqrt(4)
    [0.6667, 0.3333]
    """
    temperature = _check_temperature(temperature)
    orders = np.ones(len(energies)) if orders is None else orders
    log_weights = log_partition_functions(energies, log_products, orders, 0, temperature)
    return np.exp(log_weights - logsumexp(log_weights))


def log_rates(
    minimum_energies, minimum_log_products, minimum_orders, ts_records, temperature: float
) -> dict[tuple[int, int], float]:
    """``{(a, b): log k_{a->b}}`` from ``ts_records`` ``(energy, log_product, order, a, b)``.

    The ids ``a``, ``b`` index the three minimum mappings.
    """
    temperature = _check_temperature(temperature)
    terms: dict[tuple[int, int], list[float]] = {}
    for energy, log_product, order, a, b in ts_records:
        if a == b:
            continue
        for here, there in ((a, b), (b, a)):
            terms.setdefault((here, there), []).append(
                np.log(minimum_orders[here] / order)
                + 0.5 * (minimum_log_products[here] - log_product)
                - np.log(2 * np.pi)
                - (energy - minimum_energies[here]) / temperature
            )
    return {pair: float(logsumexp(values)) for pair, values in terms.items()}


def heat_capacity(energies, log_products, orders, n_params: int, temperatures) -> np.ndarray:
    """:math:`C(T) = P/2 + \\operatorname{Var}_p(L)/T^2` at each temperature (module docstring)."""
    energies = np.asarray(energies, float)
    out = []
    for temperature in np.atleast_1d(np.asarray(temperatures, dtype=float)):
        p = occupation_probabilities(energies, log_products, float(temperature), orders)
        mean = p @ energies
        out.append(0.5 * n_params + p @ (energies - mean) ** 2 / temperature**2)
    return np.array(out)
