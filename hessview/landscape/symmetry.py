"""The network's symmetries: hidden-unit permutations and tanh sign flips.

Permuting hidden units, or negating one unit's incoming weights, bias and outgoing weights
(:math:`\\tanh(-z) = -\\tanh z`), leaves the network's function and the L2 penalty unchanged, so every
minimum has :math:`2^h h!` copies. Minima are compared after the best alignment over this group: the
squared distance is a sum over hidden units, so the optimum is a linear assignment (Hungarian algorithm)
with cost :math:`\\min_{s=\\pm 1}\\lVert u_j - s\\,v_k\\rVert^2` per pair of units (pele's and GMIN's
permutational alignment, with sign flips added).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from hessview.landscape.network import TanhNetwork


def apply_symmetry(
    network: TanhNetwork, theta: np.ndarray, permutation: np.ndarray, signs: np.ndarray
) -> np.ndarray:
    """Return the copy of ``theta`` whose hidden unit ``j`` is ``signs[j]`` times old unit ``permutation[j]``.

    >>> net = TanhNetwork(2, 2, 2)
    >>> theta = np.arange(net.n_params, dtype=float)
    >>> back = apply_symmetry(net, apply_symmetry(net, theta, np.array([1, 0]), np.array([-1, 1])),
    ...                       np.array([1, 0]), np.array([1, -1]))
    >>> bool(np.allclose(back, theta))
    True
    """
    units = network.hidden_unit_vectors(theta)
    b2 = network.unpack(np.asarray(theta))[3]
    return network.from_hidden_unit_vectors(units[permutation] * signs[:, None], b2)


def canonicalise(network: TanhNetwork, theta: np.ndarray) -> np.ndarray:
    """A standard representative: each unit's largest incoming weight positive, units by decreasing norm.

    Used to store minima in one orientation; identity tests use :func:`align`, which does not depend on
    ties in this ordering.
    """
    units = network.hidden_unit_vectors(theta)
    incoming = units[:, : network.n_inputs + 1]
    pivot = incoming[np.arange(len(units)), np.argmax(np.abs(incoming), axis=1)]
    signs = np.where(pivot < 0, -1.0, 1.0)
    order = np.argsort(-np.linalg.norm(units, axis=1), kind="stable")
    return apply_symmetry(network, theta, order, signs[order])


def align(network: TanhNetwork, reference: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, float]:
    """The symmetry copy of ``theta`` closest to ``reference``, and its Euclidean distance to it."""
    ref_units = network.hidden_unit_vectors(reference)
    units = network.hidden_unit_vectors(theta)
    same = ((ref_units[:, None, :] - units[None, :, :]) ** 2).sum(-1)
    flipped = ((ref_units[:, None, :] + units[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(np.minimum(same, flipped))
    signs = np.where(flipped[rows, cols] < same[rows, cols], -1.0, 1.0)
    aligned = apply_symmetry(network, theta, cols, signs)
    return aligned, float(np.linalg.norm(aligned - np.asarray(reference)))


def point_group_order(network: TanhNetwork, theta: np.ndarray, tolerance: float = 1e-6) -> int:
    """Number of symmetries (signed hidden-unit permutations) that leave ``theta`` unchanged.

    The analogue of a molecule's point-group order for PATHSAMPLE's files and the harmonic partition
    function. Units equal up to sign within ``tolerance`` can be exchanged (``k!`` ways for ``k`` such
    units); units that are zero can also be negated (``2^k k!``). A generic minimum has order 1.

    >>> net = TanhNetwork(1, 3, 2)
    >>> theta = net.pack(np.array([[1.0], [-1.0], [0.0]]), np.array([0.5, -0.5, 0.0]),
    ...                  np.array([[2.0, -2.0, 0.0], [0.0, 0.0, 0.0]]), np.zeros(2))
    >>> point_group_order(net, theta)  # units 0 and 1 are sign copies (2!), unit 2 is zero (2)
    4
    """
    from math import factorial

    units = network.hidden_unit_vectors(theta)
    zero = np.linalg.norm(units, axis=1) < tolerance
    order = 2 ** int(zero.sum()) * factorial(int(zero.sum()))
    left = [u for u, z in zip(units, zero, strict=True) if not z]
    while left:
        first, rest = left[0], left[1:]
        same = [min(np.linalg.norm(first - u), np.linalg.norm(first + u)) < tolerance for u in rest]
        order *= factorial(1 + sum(same))
        left = [u for u, s in zip(rest, same, strict=True) if not s]
    return order
