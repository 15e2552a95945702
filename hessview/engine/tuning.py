"""Damping chosen by ground truth: the value whose influence best predicts retraining, on training data only.

Cross-validation of the damping :math:`\\delta` in :math:`(H + \\delta I)^{-1}`:

1. split the training set (seeded) into hold-out points ``H`` and the rest ``R``; the user's test data
   are never used;
2. retrain (:mod:`hessview.engine.retrain`, warm-started at ``theta``) on ``H`` plus a random
   ``alpha``-fraction of ``R``, ``n_subsets`` times; the hold-out points stay in every retraining, only
   the subsets of ``R`` vary;
3. for every ``delta`` on the grid, predict the change of each hold-out point's measurement from the
   first-order influences of the removed points (as in :func:`hessview.engine.evaluation.lds`) and score
   the prediction by the linear datamodeling score over the hold-out points (mean Spearman correlation);
4. set the damping with the best score (ties: the larger damping) via ``set_damping``: the one
   eigendecomposition is reused, no curvature is recomputed per grid value.

``alpha`` near 1 asks about single removals (leave-one-out), smaller values about larger groups; the best
damping depends on that question (Bae, Ng, Lo, Ghassemi & Grosse, NeurIPS 2022). The default grid is
log-spaced over seven decades below the spectrum's scale :math:`\\max|\\lambda|` (half-decade steps), plus
the automatic rule's value, plus 0 when the curvature is positive definite; values that would leave
:math:`H + \\delta I` indefinite are left out.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch

from hessview.engine.distributed import check_client
from hessview.engine.errors import HessviewWarning
from hessview.engine.evaluation import (
    SIGN,
    check_count,
    check_fraction,
    draw_subsets,
    mean_score,
    spearman_columns,
)
from hessview.engine.losses import check_measurement
from hessview.engine.retrain import DEFAULT_MAXITER, check_tol_maxiter
from hessview.engine.spectrum import choose_damping, numerical_zero

GRID_DECADES = 7
GRID_PER_DECADE = 2


def default_grid(eigenvalues: torch.Tensor) -> list[float]:
    """Log-spaced dampings from ``1e-7`` to ``1`` times ``max|lambda|``, the automatic value, and 0 if PD.

    Only values that keep :math:`H + \\delta I` positive definite (to rounding) are kept.

    >>> [f"{d:.3g}" for d in default_grid(torch.tensor([1.0, 100.0], dtype=torch.float64))][:4]
    ['0', '1e-05', '3.16e-05', '0.0001']
    """
    scale = float(eigenvalues.abs().max())
    exponents = np.linspace(-GRID_DECADES, 0, GRID_DECADES * GRID_PER_DECADE + 1)
    auto = choose_damping(eigenvalues, "auto", eigenvalues.numel()).delta
    # a log-spaced value within 1% of the automatic one would score the same: keep the automatic one
    values = [scale * 10.0**e for e in exponents if not math.isclose(scale * 10.0**e, auto, rel_tol=1e-2)]
    values += [auto, 0.0]
    return sorted({v for v in values if _positive_definite(eigenvalues, v)})


def _positive_definite(eigenvalues: torch.Tensor, delta: float) -> bool:
    return float(eigenvalues.min()) + delta > numerical_zero(eigenvalues)


def _check_grid(grid, eigenvalues: torch.Tensor) -> list[float]:
    if grid is None:
        return default_grid(eigenvalues)
    values = np.asarray(grid, dtype=object).ravel()
    if values.size == 0:
        raise ValueError("grid must hold at least one damping")
    bad = [
        v
        for v in values
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0
    ]
    if bad:
        raise ValueError(f"grid must hold finite numbers >= 0, not {bad[:3]}")
    values = sorted({float(v) for v in values})
    indefinite = [v for v in values if not _positive_definite(eigenvalues, v)]
    if indefinite:
        raise ValueError(
            f"grid values {indefinite[:3]} leave H + delta I indefinite (lambda_min = "
            f"{float(eigenvalues.min()):.3g}): every damping must exceed {-float(eigenvalues.min()):.3g}"
        )
    return values


def _holdout_size(holdout, n: int) -> int:
    if isinstance(holdout, numbers.Integral) and not isinstance(holdout, bool):
        size = int(holdout)
    elif isinstance(holdout, numbers.Real) and not isinstance(holdout, bool) and 0 < holdout < 1:
        size = round(holdout * n)
    else:
        raise ValueError(f"holdout must be a fraction in (0, 1) or a number of points, not {holdout!r}")
    if not 1 <= size <= n - 2:
        raise ValueError(
            f"holdout must leave between 1 and n_train - 2 = {n - 2} hold-out points, not {size} "
            f"(holdout={holdout!r}, n_train={n})"
        )
    return size


def tune_damping(
    toolbox,
    *,
    alpha: float = 0.5,
    n_subsets: int = 32,
    grid=None,
    holdout: float | int = 0.2,
    seed: int = 0,
    measurement: str = "loss",
    client=None,
    max_seconds: float = 300.0,
    tol: float | None = None,
    maxiter: int = DEFAULT_MAXITER,
):
    """Choose the damping of ``toolbox`` by hold-out LDS against retraining (see the module docstring).

    Args:
        toolbox: a fitted :class:`~hessview.engine.toolbox.HessianToolbox`.
        alpha: fraction of the non-hold-out points kept in every retraining (near 1: single removals).
        n_subsets: retrainings (at least 3).
        grid: dampings to compare (default: :func:`default_grid`); each must keep ``H + delta I`` positive
            definite.
        holdout: hold-out points, as a fraction of the training set or a number of points.
        seed: seed of the hold-out split and the subsets.
        measurement: ``"loss"`` or, for classifiers, ``"margin"``.
        client: a ``dask.distributed.Client`` to run the retrainings on (one task each).
        max_seconds: refuse (ValueError, before the other retrainings start) when the estimate, the
            retrainings times the measured time of the first divided by the workers, exceeds it.
        tol: gradient-norm tolerance of each retraining (see ``retrain``).
        maxiter: per retraining, L-BFGS iterations, then Newton steps' gradients and curvature products,
            at most (see ``retrain``).

    Returns:
        ``toolbox``, with the damping set, and the fitted attributes ``damping_scores_`` (grid value ->
        hold-out LDS), ``tuned_lds_`` (the chosen value's), ``damping_holdout_`` (the hold-out indices),
        ``damping_subsets_`` (``(n_subsets, n_train)`` masks of the points each retraining kept) and
        ``damping_reason_`` naming the score of every grid value. The estimate is printed before the
        retrainings start. A later ``set_damping`` to another value sets ``tuned_lds_`` to None and
        names the tuned value in ``damping_reason_``; setting the tuned value again restores both (also
        after ``save``/``load``); ``fit`` forgets the tuning.
    """
    toolbox._require_fit()
    alpha = check_fraction("alpha", alpha)
    n_subsets = check_count("n_subsets", n_subsets, 3)
    seed = check_count("seed", seed, 0)
    check_measurement(toolbox.loss_fn, measurement)
    check_client(client)
    check_tol_maxiter(tol, maxiter)
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, numbers.Real) or not max_seconds > 0:
        raise ValueError(f"max_seconds must be a number > 0, not {max_seconds!r}")
    n = toolbox.n_train
    if n < 3:
        raise ValueError("tune_damping needs at least three training points")
    n_hold = _holdout_size(holdout, n)
    lam = toolbox._spectrum_for_damping()
    grid = _check_grid(grid, lam)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    hold, rest = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    subsets = draw_subsets(rest, n, n_subsets, alpha, rng)
    removed = (~subsets).astype(np.float64)
    X_h, y_h = toolbox.X_train[torch.from_numpy(hold)], toolbox.y_train[torch.from_numpy(hold)]
    tol = toolbox._gt_tol(tol)
    results = toolbox._gt_retrain_results(
        [torch.from_numpy(np.flatnonzero(mask)) for mask in subsets],
        tol,
        maxiter,
        client=client,
        progress=toolbox.progress,
        what="tune_damping retrainings",
        max_seconds=float(max_seconds),
        announce=True,
    )
    base = toolbox._gt_measure(toolbox.theta, X_h, y_h, measurement)
    actual = np.stack([toolbox._gt_measure(r.theta, X_h, y_h, measurement) - base for r in results])
    previous = toolbox.damping
    scores, per_test = {}, {}
    try:
        for delta in grid:
            # a candidate's DampingWarning or ApproximationWarning is not news: only the chosen one's is
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", HessviewWarning)
                toolbox.set_damping(delta)
            influence = toolbox._gt_influence(X_h, y_h, measurement)
            predicted = SIGN[measurement] * removed @ influence.T
            per_test[delta] = spearman_columns(predicted, actual)
            scores[delta] = mean_score(per_test[delta])
    except BaseException:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HessviewWarning)
            toolbox.set_damping(previous)
        raise
    finite = {d: s for d, s in scores.items() if math.isfinite(s)}
    if not finite:
        toolbox.set_damping(previous)
        raise ValueError(
            "no hold-out point's measurement changed across the retrainings (every Spearman correlation is "
            "undefined): use more hold-out points, a smaller alpha or another measurement"
        )
    top = max(finite.values())
    best = max(d for d, s in finite.items() if s == top)
    toolbox.set_damping(best)
    listed = ", ".join(f"{d:.3g}: {s:.4f}" for d, s in scores.items())
    spread = np.nanstd(per_test[best]) / math.sqrt(max(1, np.isfinite(per_test[best]).sum()))
    toolbox.damping_holdout_ = hold
    toolbox.damping_subsets_ = subsets
    reason = (
        f"tuned: delta = {best:.3g} has the best hold-out LDS {scores[best]:.4f} (+- {spread:.2g} standard "
        f"error over {n_hold} hold-out training points; {n_subsets} retrainings on {int(subsets[0].sum())} "
        f"points, alpha = {alpha:g} of the other {rest.size}, measurement {measurement!r}, seed {seed}). "
        f"Hold-out LDS per damping: {listed}"
    )
    toolbox._record_tuning(scores, scores[best], reason)
    return toolbox
