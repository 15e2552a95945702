"""Extrapolation scores from local ensembles (Madras, Atwood, D'Amour, ICLR 2020).

Directions of high curvature are pinned down by the training data; an ensemble of equally good models
differs only along the flat ones. The extrapolation score of a test input is the size of its prediction
gradient once the top-``m`` curvature directions :math:`U_m` (largest :math:`|\\lambda|`) are projected
out,

.. math:: s(x) = \\lVert (I - U_m U_m^T) \\nabla_\\theta f(x) \\rVert,

(a Frobenius norm over the outputs for several outputs). The flag threshold is a quantile of the same
score over held-out in-distribution inputs (split-conformal: Vovk, Gammerman & Shafer 2005; Angelopoulos &
Bates 2023), or, without them, over the training inputs (optimistic: the training data pinned down the
directions the score measures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Extrapolation:
    """Extrapolation scores, the calibrated threshold and the resulting flags.

    Attributes:
        score: ``(n_test,)`` projected prediction-gradient norms.
        threshold: the ``quantile`` of the scores of the training inputs.
        flag: ``score > threshold``.
        m: number of curvature directions projected out.
        quantile: the calibration quantile.
        train_score: the training inputs' scores.
        calibration: how the threshold was set (training quantile, or split-conformal on held-out inputs).
    """

    score: np.ndarray
    threshold: float
    flag: np.ndarray
    m: int
    quantile: float
    train_score: np.ndarray
    calibration: str = "training quantile"


def projected_norms(jacobians: torch.Tensor, directions: torch.Tensor) -> np.ndarray:
    """Norms of ``jacobians`` ``(n, K, P)`` with the column space of ``directions`` ``(P, m)`` removed.

    >>> J = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)
    >>> projected_norms(J, torch.tensor([[1.0], [0.0]], dtype=torch.float64))
    array([4.])
    """
    residual = jacobians - (jacobians @ directions) @ directions.T
    return residual.flatten(1).norm(dim=1).cpu().numpy()


def conformal_threshold(calibration_scores: np.ndarray, quantile: float) -> float:
    """The split-conformal threshold: the ``ceil((n + 1) quantile)``-th smallest of ``n`` held-out scores.

    A new exchangeable score exceeds it with probability at most ``1 - quantile`` (``inf`` when
    ``n`` is too small for that level).

    >>> conformal_threshold(np.arange(1.0, 100.0), 0.9)
    90.0
    """
    scores = np.sort(np.asarray(calibration_scores, dtype=float))
    rank = int(np.ceil((scores.size + 1) * quantile))
    return float("inf") if rank > scores.size else float(scores[rank - 1])
