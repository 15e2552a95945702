"""The queries, written once against an :class:`~hessview.engine.inverse.InverseOperator`.

Every function takes the inverse :math:`(C + \\delta I)^{-1}` and gradients; none knows whether the inverse
is exact, low-rank or iterative. ``train_products(A)`` returns :math:`G A` for the ``(n, P)`` matrix ``G`` of
per-sample training-loss gradients (kept in memory, or recomputed shard by shard).

- Influence (Koh & Liang, ICML 2017): :math:`I[i, j] = \\frac1n \\nabla f_i^T (C + \\delta I)^{-1} g_j`, with
  :math:`f_i` the test measurement's *cost* (the loss, or minus the margin), so that a positive value means
  helpful: removing ``j`` would raise the test loss or lower the label's margin.
- RelatIF (Barshan, Brunet & Dziugaite, AISTATS 2020): the same divided by
  :math:`\\lVert (C + \\delta I)^{-1} g_j \\rVert`.
- RUE shifts (Schulam & Saria, AISTATS 2019): :math:`-(C + \\delta I)^{-1} G^T (w_b - 1) / n`.
- Stationarity: the Newton step :math:`\\lVert (C + \\delta I)^{-1} \\nabla R \\rVert` against the typical
  single-removal step, the root mean square over ``j`` of
  :math:`\\frac1n \\lVert (C + \\delta I)^{-1} g_j \\rVert`.
- Ranking stability: the overlap of the top-``k`` helpful and harmful sets across dampings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from hessview.engine.inverse import InverseOperator

TrainProducts = Callable[[torch.Tensor], torch.Tensor]


def influence_scores(
    test_gradients: torch.Tensor, inverse: InverseOperator, train_products: TrainProducts, n: int
) -> torch.Tensor:
    """:math:`\\frac1n \\nabla f_i^T (C + \\delta I)^{-1} g_j`, shape ``(n_test, n_train)``."""
    solved = inverse.apply(test_gradients.T.contiguous())
    return train_products(solved).T / n


def relatif_scores(
    test_gradients: torch.Tensor,
    inverse: InverseOperator,
    train_products: TrainProducts,
    inverse_gradient_norms: torch.Tensor,
) -> torch.Tensor:
    """:math:`\\nabla f_i^T (C + \\delta I)^{-1} g_j / \\lVert (C + \\delta I)^{-1} g_j \\rVert`."""
    scores = train_products(inverse.apply(test_gradients.T.contiguous())).T
    tiny = torch.finfo(scores.dtype).tiny
    return scores / inverse_gradient_norms.clamp_min(tiny)


def inverse_gradient_norms(
    inverse: InverseOperator, gradients: torch.Tensor, batch: int = 512
) -> torch.Tensor:
    """:math:`\\lVert (C + \\delta I)^{-1} g_j \\rVert` for the rows ``g_j`` of ``gradients``."""
    return torch.cat([inverse.apply(G.T.contiguous()).norm(dim=0) for G in gradients.split(batch)])


def resampled_shifts(inverse: InverseOperator, weighted_sums: torch.Tensor) -> torch.Tensor:
    """RUE parameter shifts, one row per resample, from ``weighted_sums`` :math:`= (w_b - 1) G / n`."""
    return -inverse.apply(weighted_sums.T.contiguous()).T


def newton_step(inverse: InverseOperator, gradient: torch.Tensor) -> float:
    """:math:`\\lVert (C + \\delta I)^{-1} \\nabla R \\rVert`: how far one Newton step would move theta."""
    return float(inverse.apply(gradient[:, None]).norm())


def top_k_overlap(reference: np.ndarray, other: np.ndarray, k: int) -> np.ndarray:
    """Per row, the fraction of the top-``k`` and bottom-``k`` entries of ``reference`` kept in ``other``.

    >>> a = np.array([[5.0, 4.0, 0.0, -4.0, -5.0]])
    >>> top_k_overlap(a, np.array([[5.0, 0.0, 4.0, -4.0, -5.0]]), 2)
    array([0.75])
    """
    k = min(k, reference.shape[1] // 2) if reference.shape[1] > 1 else 1
    order_ref = np.argsort(reference, axis=1)
    order_other = np.argsort(other, axis=1)
    result = np.empty(reference.shape[0])
    for i in range(reference.shape[0]):
        top = set(order_ref[i, -k:]) & set(order_other[i, -k:])
        bottom = set(order_ref[i, :k]) & set(order_other[i, :k])
        result[i] = (len(top) + len(bottom)) / (2 * k)
    return result
