"""The linear datamodeling score (LDS): how well summed influences predict retraining on random subsets.

Following Park et al., *TRAK: Attributing Model Behavior at Scale* (ICML 2023): draw ``n_subsets`` random
subsets :math:`S_k` of ``round(alpha n)`` training points, retrain on each (:mod:`hessview.engine.retrain`,
warm-started at the fitted ``theta``) and compare, for every test point ``i``, the measured change of the
measurement :math:`m_i(\\theta_{S_k}) - m_i(\\theta)` with the change that the first-order influences
predict when the points outside :math:`S_k` are removed,

.. math:: \\hat{\\Delta}_{ik} = s \\sum_{j \\notin S_k} I_m[i, j],
          \\qquad I_m[i, j] = \\frac{s}{n} \\nabla_\\theta m_i^T (H + \\delta I)^{-1} g_j,

where :math:`s = +1` for ``"loss"`` and :math:`-1` for ``"margin"`` (the influence sign convention:
positive = helpful, so that removing a helpful point raises the loss and lowers the margin). The score of
test point ``i`` is the Spearman rank correlation over ``k`` of predicted and actual changes; ``score`` is
its mean over test points (NaN for a test point whose changes are all equal, left out of the mean).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

from hessview.engine.distributed import check_client
from hessview.engine.losses import check_measurement
from hessview.engine.retrain import DEFAULT_MAXITER, check_tol_maxiter

SIGN = {"loss": 1.0, "margin": -1.0}  # influence of a measurement = SIGN * its predicted removal change


@dataclass(frozen=True)
class LDSResult:
    """The linear datamodeling score and what it was computed from.

    Attributes:
        score: mean over test points of ``per_test`` (NaN entries left out).
        per_test: ``(n_test,)`` Spearman correlation over subsets of ``predicted`` and ``actual``.
        predicted: ``(n_subsets, n_test)`` first-order prediction of the change of the measurement,
            ``m(theta_S) - m(theta)``, when training on subset ``S`` only.
        actual: ``(n_subsets, n_test)`` the same change measured after retraining on ``S``.
        subsets: ``(n_subsets, n_train)`` boolean masks of the points each model was trained on.
        gradient_norms: ``(n_subsets,)`` gradient norm each retraining reached.
    """

    score: float
    per_test: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    subsets: np.ndarray
    gradient_norms: np.ndarray
    alpha: float
    measurement: str
    damping: float
    seed: int
    tol: float = field(default=float("nan"))

    def __repr__(self) -> str:
        n_subsets, n_test = self.actual.shape
        return (
            f"LDSResult(score={self.score:.4f}, n_test={n_test}, n_subsets={n_subsets}, "
            f"alpha={self.alpha:g}, measurement={self.measurement!r}, damping={self.damping:.3g})"
        )


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` with the same column of ``b`` (ties ranked by average).

    NaN for a column whose values are all equal in ``a`` or in ``b``.

    >>> a = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    >>> spearman_columns(a, np.array([[1.0, 1.0], [5.0, 2.0], [9.0, 3.0]]))
    array([ 1., -1.])
    """
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra = ra - ra.mean(axis=0)
    rb = rb - rb.mean(axis=0)
    denom = np.sqrt((ra**2).sum(axis=0) * (rb**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (ra * rb).sum(axis=0) / denom
    out[denom == 0] = np.nan
    return out


def mean_score(per_test: np.ndarray) -> float:
    """Mean of the finite entries (NaN when there are none)."""
    finite = per_test[np.isfinite(per_test)]
    return float(finite.mean()) if finite.size else float("nan")


def check_count(name: str, value, least: int) -> int:
    """An integer ``>= least`` (NumPy integers accepted), or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, not {value!r}")
    return int(value)


def check_fraction(name: str, value) -> float:
    """A number strictly between 0 and 1, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number strictly between 0 and 1, not {value!r}")
    return float(value)


def draw_subsets(pool: np.ndarray, n_total: int, n_subsets: int, alpha: float, rng) -> np.ndarray:
    """``(n_subsets, n_total)`` masks: all points outside ``pool`` plus ``round(alpha |pool|)`` of ``pool``.

    At least one point of the pool is kept and at least one removed in every subset.

    >>> draw_subsets(np.arange(4), 4, 2, 0.5, np.random.default_rng(0)).sum(axis=1).tolist()
    [2, 2]
    """
    size = min(max(1, round(alpha * pool.size)), pool.size - 1)
    masks = np.ones((n_subsets, n_total), dtype=bool)
    masks[:, pool] = False
    for k in range(n_subsets):
        masks[k, rng.choice(pool, size=size, replace=False)] = True
    return masks


def lds(
    toolbox,
    X_test,
    y_test=None,
    *,
    n_subsets: int = 50,
    alpha: float = 0.5,
    seed: int = 0,
    measurement: str = "loss",
    client=None,
    tol: float | None = None,
    maxiter: int = DEFAULT_MAXITER,
    progress: bool | None = None,
) -> LDSResult:
    """The linear datamodeling score of ``toolbox``'s influence on ``X_test`` (Park et al. 2023, TRAK).

    Args:
        toolbox: a fitted :class:`~hessview.engine.toolbox.HessianToolbox` (its current damping is used).
        X_test: test inputs.
        y_test: their targets (labels predicted at ``theta`` when None, as for ``influence``).
        n_subsets: random training subsets, one retraining each (at least 3).
        alpha: fraction of the training set in every subset (TRAK's ``alpha``; 0.5 by default).
        seed: seed of the subsets (the retrainings are deterministic).
        measurement: ``"loss"`` or, for classifiers, ``"margin"`` (see :mod:`hessview.engine.losses`).
        client: a ``dask.distributed.Client``: each retraining is one task on its workers (with workers
            pinned to one thread, ``client.run(torch.set_num_threads, 1)``, the numbers equal an in-process
            run with one thread).
        tol: gradient-norm tolerance of every retraining (default: ``1e-7`` x the median per-sample gradient
            norm at ``theta``, see :meth:`~hessview.engine.groundtruth.GroundTruthMixin.retrain`).
        maxiter: per retraining, L-BFGS iterations, then Newton steps' gradients and curvature products,
            at most (see :meth:`~hessview.engine.groundtruth.GroundTruthMixin.retrain`).
        progress: progress bar (default: the toolbox's ``progress``).

    Returns:
        An :class:`LDSResult` with ``score``, ``per_test``, ``predicted`` and ``actual``. Before a run
        expected to take more than ten seconds, the number of retrainings, the measured time of the first
        and the memory of one are printed.
    """
    toolbox._require_fit()
    n_subsets = check_count("n_subsets", n_subsets, 3)
    alpha = check_fraction("alpha", alpha)
    seed = check_count("seed", seed, 0)
    check_measurement(toolbox.loss_fn, measurement)
    check_client(client)
    check_tol_maxiter(tol, maxiter)
    n = toolbox.n_train
    if n < 2:
        raise ValueError("the LDS needs at least two training points")
    X = toolbox._inputs(X_test)
    labels = toolbox._labels(X, y_test)
    subsets = draw_subsets(np.arange(n), n, n_subsets, alpha, np.random.default_rng(seed))
    influence = toolbox._gt_influence(X, labels, measurement)
    predicted = SIGN[measurement] * (~subsets).astype(influence.dtype) @ influence.T
    tol = toolbox._gt_tol(tol)
    results = toolbox._gt_retrain_results(
        [torch.from_numpy(np.flatnonzero(mask)) for mask in subsets],
        tol,
        maxiter,
        client=client,
        progress=toolbox.progress if progress is None else progress,
        what="LDS retrainings",
    )
    base = toolbox._gt_measure(toolbox.theta, X, labels, measurement)
    actual = np.stack([toolbox._gt_measure(r.theta, X, labels, measurement) - base for r in results])
    per_test = spearman_columns(predicted, actual)
    return LDSResult(
        score=mean_score(per_test),
        per_test=per_test,
        predicted=predicted,
        actual=actual,
        subsets=subsets,
        gradient_norms=np.array([r.gradient_norm for r in results]),
        alpha=alpha,
        measurement=measurement,
        damping=float(toolbox.damping_),
        seed=seed,
        tol=float(tol),
    )
