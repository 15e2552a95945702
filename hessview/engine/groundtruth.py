"""Ground truth on demand: retraining, group effects and damping tuned against retraining.

:class:`GroundTruthMixin` gives :class:`~hessview.engine.toolbox.HessianToolbox` the methods that compare
influence with what retraining does (:mod:`hessview.engine.retrain`), predict the effect of removing a
group of training points, and choose the damping whose influence best predicts retraining
(:mod:`hessview.engine.tuning`).

Sign convention (that of ``influence``): an *effect* on a measurement is positive when the removed points
were helpful, that is :math:`L_i(\\theta_{-S}) - L_i(\\theta)` for ``"loss"`` and
:math:`-(m_i(\\theta_{-S}) - m_i(\\theta))` for ``"margin"``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hessview.engine.distributed import LocalBackend, check_client, make_shards
from hessview.engine.evaluation import SIGN
from hessview.engine.hessian import default_chunks
from hessview.engine.losses import check_measurement
from hessview.engine.retrain import (
    DEFAULT_MAXITER,
    Retrained,
    RetrainProblem,
    check_tol_maxiter,
    default_tol,
    keep_indices,
    measure,
    module_at,
    retrain_many,
)

PRECONDITION_CONDITION = 1e3


class GroundTruthMixin:
    """Methods of :class:`~hessview.engine.toolbox.HessianToolbox` that compare influence with retraining."""

    # ------------------------------------------------------------------ helpers
    def _gt_problem(self) -> RetrainProblem:
        """The retraining problem, preconditioned by :math:`V|\\Lambda|^{-1/2}` if exact and ill-conditioned.

        Only above a condition number ``max|lambda| / min|lambda|`` of ``PRECONDITION_CONDITION``: on the
        Ising demo's CNN (1.4e4) it cut a retraining from over 1,100 evaluations (not converged) to 63-260;
        on the test suite's MLP (380) plain L-BFGS was 2-5x faster.
        """
        key = (id(self.eigenvectors), self.method_)
        cached = self.__dict__.get("_gt_problem_cache")
        if cached is None or cached[0] != key:
            M = factor = None
            lam = self.eigenvalues.abs()
            if self.method_ == "exact":  # F F^T = |C + w I|^-1 for the Newton polish (see retrain.py)
                factor = self.eigenvectors / lam.clamp_min(1e-8 * float(lam.max())).sqrt()
                if float(lam.max()) > PRECONDITION_CONDITION * float(lam.min()):
                    M = factor  # the same tensor: no second P x P matrix, pickled once for Dask
            problem = RetrainProblem(
                self.flat, self.X_train, self.y_train, self.loss, self.weight_decay, M, factor
            )
            self._gt_problem_cache = cached = (key, problem)
        return cached[1]

    def _gt_tol(self, tol: float | None) -> float:
        return default_tol(self.median_sample_gradient_norm_) if tol is None else float(tol)

    def _gt_retrain_results(
        self,
        keeps,
        tol: float,
        maxiter: int,
        *,
        client=None,
        progress: bool = False,
        what: str = "retraining",
        max_seconds: float | None = None,
        announce: bool = False,
        warn: bool = True,
    ) -> list[Retrained]:
        cache = self.__dict__.setdefault("_retrained", {})
        return retrain_many(
            self._gt_problem(),
            keeps,
            self.theta,
            tol,
            maxiter,
            client=client,
            progress=progress,
            what=what,
            max_seconds=max_seconds,
            announce=announce,
            cache=cache,
            warn=warn,
        )

    def _gt_measure(self, theta: torch.Tensor, X: torch.Tensor, labels: torch.Tensor, measurement: str):
        return measure(self._gt_problem(), theta, X, labels, measurement).cpu().numpy()

    def _gt_influence(self, X: torch.Tensor, labels: torch.Tensor, measurement: str) -> np.ndarray:
        """``influence(X, labels, measurement=...)``: ``(s/n) grad m_i^T (C + delta I)^-1 g_j``."""
        return self.influence(X, labels, measurement=measurement)

    def _gt_query(self, X_test, y_test, measurement: str):
        self._require_fit()
        check_measurement(self.loss_fn, measurement)
        X = self._inputs(X_test)
        return X, self._labels(X, y_test)

    # ------------------------------------------------------------------ retraining
    def retrain(self, remove, *, tol: float | None = None, maxiter: int = DEFAULT_MAXITER) -> nn.Module:
        """The model re-optimised without the training points ``remove``, warm-started at ``theta``.

        Minimises the toolbox's objective over the remaining points (their mean loss, the same weight decay,
        loss and dtype, the model in eval mode)

        .. math:: R_{-S}(\\theta) = \\frac{1}{n - |S|} \\sum_{j \\notin S} L_j(\\theta)
                  + \\frac{w}{2} \\lVert\\theta\\rVert^2

        by full-batch L-BFGS (strong-Wolfe line search) from the fitted ``theta``, then Newton steps solved by
        conjugate gradients where L-BFGS stalls (:func:`~hessview.engine.retrain.newton_polish`), until
        :math:`\\lVert\\nabla R_{-S}\\rVert_2 \\le` ``tol``. Results are cached per ``(remove, tol,
        maxiter)``.

        Args:
            remove: training indices, or a boolean mask of length ``n_train``, to leave out (may be empty:
                then the model is re-optimised on all points, which moves ``theta`` only when it was not
                a minimum to ``tol``).
            tol: gradient 2-norm to reach; default ``1e-7`` x the median per-sample gradient norm at
                ``theta``.
            maxiter: L-BFGS iterations, then the Newton steps' gradients and curvature products, at most.

        Returns:
            A new ``nn.Module`` (a copy; the toolbox and the caller's model are unchanged).

        Warns:
            ApproximationWarning: when the gradient norm stays above ``tol`` (the norm reached is named).

        The test is first order: gradient steps keep an exact symmetry of the weights (hidden units that
        are copies of each other stay copies), so such a model can end at a saddle point of
        :math:`R_{-S}` with a gradient below ``tol`` and no warning.
        """
        self._require_fit()
        check_tol_maxiter(tol, maxiter)
        keep = keep_indices(remove, self.n_train)
        result = self._gt_retrain_results([keep], self._gt_tol(tol), maxiter)[0]
        return module_at(self.flat, result.theta)

    def actual_effect(
        self,
        X_test,
        y_test=None,
        *,
        remove,
        measurement: str = "loss",
        tol: float | None = None,
        maxiter: int = DEFAULT_MAXITER,
    ) -> np.ndarray:
        """The change of the measurement when ``remove`` is left out, measured by :meth:`retrain`.

        ``s (m_i(theta_-S) - m_i(theta*))`` per test point ``(n_test,)``, with ``theta*`` the model
        re-optimised on all points to the same tolerance (``theta`` itself when it already is a minimum to
        ``tol``) and ``s = +1`` for ``"loss"``, ``-1`` for ``"margin"``: the sign convention of
        ``influence`` (positive = the removed points were helpful). Labels are predicted when ``y_test`` is
        None.
        """
        return self._gt_actual_effect(X_test, y_test, remove, measurement, tol, maxiter)[0]

    def _gt_actual_effect(
        self, X_test, y_test, remove, measurement, tol=None, maxiter=DEFAULT_MAXITER, *, warn: bool = True
    ):
        """:meth:`actual_effect` and the two retrainings behind it (baseline, without ``remove``)."""
        X, labels = self._gt_query(X_test, y_test, measurement)
        check_tol_maxiter(tol, maxiter)
        keep = keep_indices(remove, self.n_train)
        everything = torch.arange(self.n_train)
        runs = self._gt_retrain_results([everything, keep], self._gt_tol(tol), maxiter, warn=warn)
        before = self._gt_measure(runs[0].theta, X, labels, measurement)
        change = self._gt_measure(runs[1].theta, X, labels, measurement) - before
        return SIGN[measurement] * change, runs

    def group_influence(
        self, X_test, y_test=None, *, remove, measurement: str = "loss", order: int = 2
    ) -> np.ndarray:
        """Predicted change of the measurement when all of ``remove`` are left out, ``(n_test,)``.

        Same sign convention as ``influence`` and :meth:`actual_effect` (positive = helpful).

        ``order=1``: the sum of the single-point influences, :math:`\\sum_{j \\in S} I_m[i, j]`, which
        underestimates group effects (Koh, Ang, Teo & Liang, NeurIPS 2019).

        ``order=2`` (default): one Newton step on the objective of the remaining points from ``theta``
        (Basu, You & Feizi, ICML 2020, second-order group influence),

        .. math:: \\theta_{-S} = \\theta - (H_{-S} + \\delta I)^{-1} \\nabla R_{-S}(\\theta),\\quad
                  H_{-S} = \\frac{n (H - wI) - \\sum_{j \\in S} H_j}{n - |S|} + wI,

        with :math:`H_j` the removed points' per-sample curvature (Hessian, or GGN for
        ``curvature="ggn"``; ``torch.func``, for the removed points only), ``delta`` the toolbox's damping,
        and the effect :math:`s\\,(m_i(\\theta_{-S}) - m_i(\\theta_{\\emptyset}))` measured at the stepped
        parameters, where :math:`\\theta_{\\emptyset}` is the same Newton step with nothing removed (so a
        ``theta`` that is not exactly a minimum shifts both alike). Needs ``method="exact"``.
        """
        if order not in (1, 2) or isinstance(order, bool):
            raise ValueError(f"order must be 1 (sum of influences) or 2 (Newton step), not {order!r}")
        X, labels = self._gt_query(X_test, y_test, measurement)
        keep = keep_indices(remove, self.n_train)
        removed = np.setdiff1d(np.arange(self.n_train), keep.numpy())
        if removed.size == 0:
            return np.zeros(X.shape[0])
        if order == 1:
            return self._gt_influence(X, labels, measurement)[:, removed].sum(axis=1)
        if self.method_ != "exact":
            raise ValueError(
                "order=2 needs the P x P curvature (method='exact'); with method='lowrank' use order=1"
            )
        n, k, wd, delta = self.n_train, removed.size, self.weight_decay, self.damping_
        idx = torch.from_numpy(removed)
        X_S, y_S = self.X_train[idx], self.y_train[idx]
        rows = default_chunks(k, X_S[0].numel(), self.n_params)[1]
        shards = make_shards(self.flat, X_S, y_S, self.loss, k, n_total=1)
        removed_curvature = sum(LocalBackend(shards).map("dense_curvature", self.curvature, rows))
        eye = torch.eye(self.n_params, dtype=self.dtype, device=self.theta.device)
        data = n * (self.hessian - wd * eye)
        curvature = (data - removed_curvature) / (n - k) + (wd + delta) * eye
        G = self.train_gradients
        total = G.sum(dim=0)
        gradient = (total - G[idx].sum(dim=0)) / (n - k) + wd * self.theta
        theta_S = self.theta - torch.linalg.solve(curvature, gradient)
        gradient_all = total / n + wd * self.theta
        theta_0 = self.theta - self.inverse_.apply(gradient_all[:, None])[:, 0]
        before = self._gt_measure(theta_0, X, labels, measurement)
        change = self._gt_measure(theta_S, X, labels, measurement) - before
        return SIGN[measurement] * change

    # ------------------------------------------------------------------ damping
    def tune_damping(
        self,
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
        """Set the damping to the grid value whose influence best predicts retraining; returns ``self``.

        See :func:`hessview.engine.tuning.tune_damping` for the procedure, arguments and fitted attributes
        (``damping_scores_``, ``tuned_lds_``, ``damping_reason_``).
        """
        from hessview.engine.tuning import tune_damping

        check_client(client)
        return tune_damping(
            self,
            alpha=alpha,
            n_subsets=n_subsets,
            grid=grid,
            holdout=holdout,
            seed=seed,
            measurement=measurement,
            client=client,
            max_seconds=max_seconds,
            tol=tol,
            maxiter=maxiter,
        )
