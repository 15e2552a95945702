"""``HessianToolbox``: fit one Hessian, answer influence, uncertainty and extrapolation queries.

The objective is :math:`R(\\theta) = \\frac{1}{n}\\sum_j L(x_j, y_j; \\theta) + \\frac{w}{2}\\lVert\\theta
\\rVert^2` with the model in eval mode. ``fit`` computes its exact Hessian, the eigendecomposition shared by
every method, and the per-sample training gradients; queries reuse them (Dawid et al., Mach. Learn.: Sci.
Technol. 3, 015002 (2022)).

Beyond the exact Hessian: ``curvature="ggn"`` uses the positive semi-definite Gauss-Newton matrix
(:mod:`hessview.engine.ggn`); ``method="lowrank"`` keeps only the top eigenpairs, found by Lanczos from
matrix-free curvature-vector products, with the low-rank-plus-damping inverse of
:mod:`hessview.engine.lowrank`; ``method="auto"`` chooses between the two by memory. ``client=`` runs the
data-parallel work on Dask (:mod:`hessview.engine.distributed`).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.func import jacrev, vmap

from hessview._io import atomic_path
from hessview.engine import _validation as check
from hessview.engine.blocks import write_row_blocks
from hessview.engine.cg import conjugate_gradient
from hessview.engine.distributed import (
    CURVATURES,
    DaskBackend,
    LocalBackend,
    Shard,
    check_client,
    make_shards,
    n_workers,
)
from hessview.engine.errors import NotStationaryWarning
from hessview.engine.extrapolation import Extrapolation, projected_norms
from hessview.engine.groundtruth import GroundTruthMixin
from hessview.engine.hessian import (
    CurvatureTooLargeError,
    available_memory,
    check_dense_memory,
    default_chunks,
    per_sample_gradients,
)
from hessview.engine.losses import LOSSES, per_sample_loss
from hessview.engine.lowrank import LowRankInverse, top_eigenpairs
from hessview.engine.params import FlatModel
from hessview.engine.screening import RTOL as SCREENING_RTOL
from hessview.engine.screening import frobenius_estimate, saturated
from hessview.engine.spectrum import choose_damping, damped_inverse, default_rank, top_directions
from hessview.engine.uncertainty import Uncertainty, bootstrap_weights, resampled_shifts, summarise

FORMAT = "hessview.toolbox/1"
STATIONARY_RATIO = 1e-3
METHODS = ("exact", "lowrank", "auto")
SOLVERS = ("eig", "cg")
DEFAULT_RANK = 20


class HessianToolbox(GroundTruthMixin):
    """Influence functions, RelatIF, RUE uncertainty and local-ensemble extrapolation from one Hessian.

    Args:
        model: a ``torch.nn.Module`` mapping a batch of inputs to outputs (logits for classification).
        X_train: training inputs, first dimension indexing samples (tensor or NumPy array).
        y_train: integer class labels (``loss="cross_entropy"``) or real targets (``loss="mse"``).
        loss: ``"cross_entropy"`` or ``"mse"`` (see :mod:`hessview.engine.losses`).
        weight_decay: ``w`` in the objective's ``w/2 ||theta||^2``.
        damping: ``"auto"`` (see :func:`hessview.engine.spectrum.choose_damping`) or a float ``delta >= 0``.
            ``n_damped_`` counts the eigenvectors along which ``delta > |lambda|`` (there the inverse is about
            ``1 / delta``); ``summary()`` says so when that is most of them.
        dtype: floating dtype of every curvature computation (float64 by default).
        progress: show progress bars during ``fit`` and long queries.
        method: ``"exact"`` forms the ``P x P`` curvature and its full eigendecomposition; ``"lowrank"``
            finds only the top-``rank`` eigenpairs by :math:`|\\lambda|` (Lanczos on matrix-free
            curvature-vector products, see :mod:`~hessview.engine.lowrank`): then ``eigenvalues`` and
            ``eigenvectors`` hold those pairs only, ``lambda_min_``/``lambda_max_``/``n_negative_`` describe
            them, and ``hessian`` raises AttributeError; ``"auto"`` picks exact when three ``P x P``
            matrices fit in half the free memory, low-rank otherwise (``method_`` and ``method_reason_``
            say which).
        rank: eigenpairs kept by ``"lowrank"`` (default ``min(20, P - 1)``).
        curvature: ``"hessian"`` or ``"ggn"``, the generalised Gauss-Newton matrix
            :math:`\\frac1n\\sum_j J_j^T H^{out}_j J_j + w I` (positive semi-definite data part, see
            :mod:`hessview.engine.ggn`).
        client: a ``dask.distributed.Client``: per-sample gradients, curvature blocks and products summed
            over data shards, and influence blocks then run on its workers. ``None`` runs in process.
        lanczos_tol: relative accuracy of the Lanczos eigenpairs (ARPACK's ``tol``).
        screen: for ``method="exact"`` in process with cross-entropy, assemble the curvature from the
            samples with ``1 - p(label)`` above float64's unit roundoff only, and check that the others add
            less than ``1e-12`` of it (:mod:`hessview.engine.screening`; ``n_screened_`` and
            ``screening_residual_`` report it; the samples are added after all when the check fails).
            ``False`` sums over every sample.

    Example:
        >>> torch.manual_seed(0) and None
        >>> X = torch.randn(40, 3, dtype=torch.float64)
        >>> y = (X[:, 0] > 0).long()
        >>> tb = HessianToolbox(nn.Linear(3, 2), X, y, weight_decay=0.1, progress=False)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     tb = tb.fit()
        >>> tb.hessian.shape, tb.influence(X[:2]).shape
        (torch.Size([8, 8]), (2, 40))
    """

    def __init__(
        self,
        model: nn.Module,
        X_train,
        y_train,
        *,
        loss: str = "cross_entropy",
        weight_decay: float = 0.0,
        damping: str | float = "auto",
        dtype: torch.dtype = torch.float64,
        progress: bool = True,
        method: str = "exact",
        rank: int | None = None,
        curvature: str = "hessian",
        client=None,
        lanczos_tol: float = 1e-6,
        screen: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype such as torch.float64, not {dtype!r}")
        if not _is_real(weight_decay) or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, not {weight_decay!r}")
        _check_damping(damping)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {CURVATURES}, not {curvature!r}")
        if not _is_real(lanczos_tol) or not 0 <= lanczos_tol < 1:
            raise ValueError(f"lanczos_tol must be a number in [0, 1), not {lanczos_tol!r}")
        check_client(client)
        self.flat = FlatModel(model, dtype)
        if self.flat.n_params == 0:
            raise ValueError("the model has no trainable parameters (none with requires_grad=True)")
        bad = [n for n, p in self.flat.module.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise ValueError(f"the model's parameters contain NaN or inf: {', '.join(bad)}")
        if rank is not None and (
            isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < self.flat.n_params
        ):
            raise ValueError(
                f"rank must be an integer in [1, {self.flat.n_params - 1}] (P - 1), not {rank!r}"
            )
        self.method = method
        self.rank = min(DEFAULT_RANK, self.flat.n_params - 1) if rank is None else rank
        self.curvature = curvature
        self.client = client
        self.lanczos_tol = float(lanczos_tol)
        if not isinstance(screen, bool):
            raise TypeError(f"screen must be True or False, not {screen!r}")
        self.screen = screen
        self.n_screened_, self.screening_residual_ = 0, None
        self.loss = loss
        self.weight_decay = float(weight_decay)
        self.damping = damping
        self.dtype = dtype
        self.progress = progress
        X = check.check_inputs("X_train", check.as_tensor("X_train", X_train, self.flat.device), dtype)
        outputs = self._probe(X)
        y = check.as_tensor("y_train", y_train, self.flat.device)
        self.y_train = check.check_targets("y_train", y, X.shape[0], loss, outputs, dtype)
        self.X_train = X
        self.n_classes = int(outputs.shape[1]) if loss == "cross_entropy" else None
        self._fitted = False
        self._train_scores: dict[tuple[int, str], np.ndarray] = {}
        self._backend = None

    # ------------------------------------------------------------------ basics
    @property
    def n_train(self) -> int:
        """Number of training samples ``n``."""
        return int(self.X_train.shape[0])

    @property
    def n_params(self) -> int:
        """Number of trainable parameters ``P``."""
        return self.flat.n_params

    @property
    def theta(self) -> torch.Tensor:
        """The flat parameter vector at which everything is evaluated."""
        return self.flat.theta

    def _probe(self, X: torch.Tensor) -> torch.Tensor:
        try:
            with torch.no_grad():
                outputs = self.flat(self.flat.theta, X[:2])
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(f"the model cannot evaluate inputs of shape {tuple(X.shape)}: {err}") from err
        check.check_outputs(outputs, self.loss)
        return outputs

    def _sample_loss(self, theta, x, y):
        return per_sample_loss(self.loss, self.flat(theta, x.unsqueeze(0)), y.unsqueeze(0))[0]

    def _require_fit(self) -> None:
        if not self._fitted:
            raise RuntimeError("call fit() before querying the toolbox")

    # ------------------------------------------------------------------ fit
    @property
    def hessian(self) -> torch.Tensor:
        """The exact ``P x P`` curvature (Hessian, or GGN for ``curvature="ggn"``) plus ``weight_decay I``."""
        if "_hessian" not in self.__dict__:
            if self._fitted and self.method_ == "lowrank":
                raise AttributeError(
                    "method='lowrank' never forms the P x P Hessian: use eigenvalues/eigenvectors (the top "
                    f"{self.rank} pairs by |lambda|), or method='exact' when it fits in memory"
                )
            raise AttributeError("the Hessian is computed by fit(): call fit() first")
        return self._hessian

    @hessian.setter
    def hessian(self, value: torch.Tensor) -> None:
        self._hessian = value

    @property
    def train_gradients(self) -> torch.Tensor:
        """Per-sample training gradients ``(n, P)`` (kept by low-rank fits only when they fit in memory)."""
        if "_train_gradients" not in self.__dict__:
            raise AttributeError(
                "the per-sample training gradients were not kept (n x P is over a quarter of the free "
                "memory); queries recompute them shard by shard"
                if self._fitted
                else "the training gradients are computed by fit(): call fit() first"
            )
        return self._train_gradients

    @train_gradients.setter
    def train_gradients(self, value: torch.Tensor) -> None:
        self._train_gradients = value

    def fit(self) -> HessianToolbox:
        """Compute the curvature, its eigendecomposition, the damping and the per-sample gradients.

        Warns with :class:`NotStationaryWarning` when the objective's gradient norm exceeds
        ``1e-3`` times the median per-sample gradient norm. Returns ``self``.
        """
        self.method_, self.method_reason_ = self._choose_method()
        self._train_scores = {}
        self.__dict__.pop("_train_ihvp_norm", None)
        if self.method_ == "exact":
            self._fit_exact()
        else:
            self._fit_lowrank()
        self._set_derived()
        self._fitted = True
        if not self.is_stationary_:
            warnings.warn(
                f"theta is not a stationary point of the objective: gradient norm "
                f"{self.gradient_norm_:.3g} vs median per-sample gradient norm "
                f"{self.median_sample_gradient_norm_:.3g} (ratio {self._stationarity_ratio:.2g} > "
                f"{STATIONARY_RATIO:g}). Influence and RUE assume a minimum: train further "
                "(e.g. L-BFGS) before trusting them.",
                NotStationaryWarning,
                stacklevel=2,
            )
        return self

    def set_damping(self, damping: str | float) -> HessianToolbox:
        """Use another damping, ``"auto"`` or a float ``>= 0``, from now on, without refitting; returns self.

        Every later query uses ``(H + delta I)^-1`` with the new ``delta``: the curvature and its
        eigendecomposition are reused, so comparing dampings costs no new Hessian.
        """
        self._require_fit()
        _check_damping(damping)
        self.damping = damping
        self._set_derived()
        return self

    def _choose_method(self) -> tuple[str, str]:
        if self.method == "exact":
            check_dense_memory(self.n_params, self.dtype)
            return "exact", "method='exact'"
        if self.method == "lowrank":
            return "lowrank", f"method='lowrank' (top {self.rank} eigenpairs by Lanczos)"
        try:
            need = check_dense_memory(self.n_params, self.dtype)
        except CurvatureTooLargeError as err:
            reason = err.args[0].split(". ")[0]
            return "lowrank", f"auto: top {self.rank} eigenpairs by Lanczos, since {reason}"
        return "exact", (
            f"auto: the exact curvature and its eigendecomposition need {need / 1e9:.2g} GB, within half the "
            f"{available_memory() / 1e9:.1f} GB free"
        )

    def _shard_size(self, size: int) -> int:
        if self.client is not None:
            size = min(size, math.ceil(self.n_train / n_workers(self.client)))
        return max(1, size)

    def _get_backend(self):
        if self._backend is None:
            X, n = self.X_train, self.n_train
            if self.method_ == "exact":
                size = default_chunks(n, X[0].numel(), self.n_params)[0]
            else:
                size = default_chunks(n, X[0].numel(), 1)[0]
            shards = make_shards(self.flat, X, self.y_train, self.loss, self._shard_size(size))
            self._backend = LocalBackend(shards) if self.client is None else DaskBackend(self.client, shards)
        return self._backend

    def _fit_exact(self) -> None:
        X, y, n, theta = self.X_train, self.y_train, self.n_train, self.theta
        data_chunk, row_chunk = default_chunks(n, X[0].numel(), self.n_params)
        self._backend = None
        if self.client is None:
            shards = make_shards(self.flat, X, y, self.loss, data_chunk)
            self._backend = LocalBackend(shards)
        left_out = self._saturated()
        if left_out.any():
            kept = LocalBackend(self._subset_shards(~left_out, data_chunk))
        else:
            kept = self._get_backend()
        parts = kept.map(
            "dense_curvature",
            self.curvature,
            row_chunk,
            self.progress,
            progress=self.progress,
            desc="Hessian",
        )
        eye = torch.eye(self.n_params, dtype=self.dtype, device=theta.device)
        curvature = sum(parts, torch.zeros_like(eye))
        self.n_screened_, self.screening_residual_ = 0, None
        if left_out.any():
            curvature += self._screened_curvature(left_out, data_chunk, row_chunk, curvature)
        hessian = curvature + self.weight_decay * eye
        self.hessian = hessian
        eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
        # row-major like a loaded cache, so that a saved and reloaded toolbox gives identical numbers
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors.contiguous()
        if self.client is None:
            self.train_gradients = per_sample_gradients(self._sample_loss, theta, X, y)
        else:
            self.train_gradients = torch.cat(self._get_backend().map("gradients"))

    def _saturated(self) -> torch.Tensor:
        """Samples whose curvature vanishes in float64 (:mod:`~hessview.engine.screening`), if screening."""
        if not self.screen or self.loss != "cross_entropy" or self.client is not None:
            return torch.zeros(self.n_train, dtype=torch.bool, device=self.X_train.device)
        probabilities = torch.cat(
            [self._outputs(self.X_train[i : i + 1024]).softmax(dim=1) for i in range(0, self.n_train, 1024)]
        )
        return saturated(probabilities, self.y_train)

    def _subset_shards(self, mask: torch.Tensor, size: int) -> list[Shard]:
        return make_shards(self.flat, self.X_train[mask], self.y_train[mask], self.loss, size, self.n_train)

    def _screened_curvature(
        self, left_out, data_chunk: int, row_chunk: int, kept: torch.Tensor
    ) -> torch.Tensor:
        """Zero when the left-out samples' curvature is below ``RTOL`` of ``kept``, else that curvature."""
        shards = self._subset_shards(left_out, data_chunk)
        estimate = frobenius_estimate(
            lambda V: sum(shard.curvature_matmat(V, self.curvature) for shard in shards),
            self.n_params,
            dtype=self.dtype,
        )
        self.screening_residual_ = estimate / max(float(kept.norm()), 1e-300)
        if self.screening_residual_ <= SCREENING_RTOL:
            self.n_screened_ = int(left_out.sum())
            return torch.zeros_like(kept)
        return sum(shard.dense_curvature(self.curvature, row_chunk) for shard in shards)

    def curvature_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """Matrix-free ``(C + weight_decay I) M`` for ``M`` ``(P, k)``, ``C`` the data curvature."""
        parts = self._get_backend().map("curvature_matmat", M.T.contiguous(), self.curvature)
        return sum(parts).T + self.weight_decay * M

    def _fit_lowrank(self) -> None:
        self._backend = None
        self.__dict__.pop("_hessian", None)
        self.__dict__.pop("_train_gradients", None)
        self.eigenvalues, self.eigenvectors = top_eigenpairs(
            lambda v: self.curvature_matmat(v[:, None])[:, 0],
            self.n_params,
            self.rank,
            dtype=self.dtype,
            tol=self.lanczos_tol,
            progress=self.progress,
        )
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        if self.n_train * self.n_params * itemsize <= available_memory() // 4:
            # written in place shard by shard: never a second n x P copy (torch.cat would need one)
            out = self.theta.new_empty((self.n_train, self.n_params))
            self.train_gradients = self._get_backend().fill("gradients", out)
        else:
            sums, norms = zip(*self._get_backend().map("gradient_summary"), strict=True)
            self._gradient_mean = sum(sums) / self.n_train
            self._sample_gradient_norms = torch.cat(norms)

    def _set_derived(self) -> None:
        """Quantities derived from the Hessian, eigenpairs and gradients (also used after ``load``)."""
        lam = self.eigenvalues
        scale = float(lam.abs().max())
        self.lambda_min_ = float(lam[0])
        self.lambda_max_ = float(lam[-1])
        tol = self.n_params * torch.finfo(self.dtype).eps * scale
        self.n_negative_ = int((lam < -tol).sum())
        if self.method_ == "exact":
            choice = choose_damping(lam, self.damping)
        else:  # the complement of the kept pairs counts as one more eigenvalue, weight_decay
            choice = choose_damping(torch.cat([lam, lam.new_tensor([self.weight_decay])]), self.damping)
        self.damping_, self.damping_reason_ = choice.delta, choice.reason
        self.n_damped_ = int((lam.abs() < self.damping_).sum())
        if "_train_gradients" in self.__dict__:
            self._gradient_mean = self.train_gradients.mean(dim=0)
            self._sample_gradient_norms = self.train_gradients.norm(dim=1)
        gradient = self._gradient_mean + self.weight_decay * self.theta
        self.gradient_norm_ = float(gradient.norm())
        self.median_sample_gradient_norm_ = float(self._sample_gradient_norms.median())
        self._stationarity_ratio = self.gradient_norm_ / max(
            self.median_sample_gradient_norm_, torch.finfo(self.dtype).tiny
        )
        self.is_stationary_ = self._stationarity_ratio <= STATIONARY_RATIO
        self._train_scores = {}
        if self.method_ == "lowrank":
            self._inverse = LowRankInverse(lam, self.eigenvectors, self.damping_, self.weight_decay)
            return
        self._inverse = damped_inverse(lam, self.eigenvectors, self.damping_)
        self._train_ihvp = self.train_gradients @ self._inverse
        self._train_ihvp_norm = self._train_ihvp.norm(dim=1)

    def summary(self) -> str:
        """A readable report of the fit."""
        self._require_fit()
        stationary = "yes" if self.is_stationary_ else "NO (influence and RUE assume a minimum)"
        kept = "" if self.method_ == "exact" else f" (of the top {self.rank} pairs by |lambda|)"
        lines = [
            f"HessianToolbox: {self.n_params} parameters, {self.n_train} training samples, "
            f"loss={self.loss}, weight_decay={self.weight_decay:g}, dtype={self.dtype}",
            f"  gradient norm       {self.gradient_norm_:.3e} "
            f"(median per-sample {self.median_sample_gradient_norm_:.3e}); stationary: {stationary}",
            f"  lambda_min          {self.lambda_min_:.6g}{kept}",
            f"  lambda_max          {self.lambda_max_:.6g}",
            f"  negative eigenvalues {self.n_negative_}{kept}",
            f"  damping             {self.damping_:.3g}: {self.damping_reason_}",
        ]
        if self.n_screened_:
            lines.append(
                f"  curvature samples   {self.n_train - self.n_screened_} of {self.n_train}: the other "
                f"{self.n_screened_} have 1 - p(label) < 1.1e-16 and add ~{self.screening_residual_:.1g} of "
                "its Frobenius norm (Hutchinson estimate), below float64 rounding of the sum"
            )
        if self.n_damped_ > len(self.eigenvalues) // 2:
            lines.append(
                f"  damping dominates   delta > |lambda| along {self.n_damped_} of {len(self.eigenvalues)} "
                "eigenvectors: there (H + delta I)^-1 ~ I / delta, and influence tends to gradient "
                "similarity / delta; compare with a smaller damping before trusting rankings"
            )
        if self.method != "exact" or self.curvature != "hessian":
            lines.append(f"  method              {self.method_}: {self.method_reason_}")
            lines.append(f"  curvature           {self.curvature}")
        if self.method_ == "lowrank":
            lines.append(
                f"  inverse             top-{self.rank} pairs exact, complement curvature weight_decay + "
                f"damping = {self.weight_decay + self.damping_:.3g}"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"HessianToolbox(n_params={self.n_params}, n_train={self.n_train}, {state})"

    # ------------------------------------------------------------------ queries
    def _inputs(self, X_test, name: str = "X_test") -> torch.Tensor:
        X = check.as_tensor(name, X_test, self.flat.device)
        return check.check_inputs(name, X, self.dtype, self.X_train.shape[1:])

    def _outputs(self, X: torch.Tensor, theta=None) -> torch.Tensor:
        with torch.no_grad():
            return self.flat(self.theta if theta is None else theta, X)

    def _labels(self, X: torch.Tensor, y_test, name: str = "y_test") -> torch.Tensor:
        outputs = self._outputs(X)
        if y_test is None:
            if self.loss != "cross_entropy":
                raise ValueError(f"{name} is required for loss='mse' (no label can be predicted)")
            return outputs.argmax(dim=1)
        y = check.as_tensor(name, y_test, self.flat.device)
        return check.check_targets(name, y, X.shape[0], self.loss, outputs, self.dtype)

    def predict(self, X) -> np.ndarray:
        """Class probabilities ``(n, C)`` for classification, model outputs for regression."""
        outputs = self._outputs(self._inputs(X, "X"))
        if self.loss == "cross_entropy":
            outputs = torch.softmax(outputs, dim=1)
        return outputs.cpu().numpy()

    def test_gradients(self, X_test, y_test=None) -> torch.Tensor:
        """Per-sample loss gradients ``(n_test, P)`` (labels predicted when ``y_test`` is None)."""
        X = self._inputs(X_test)
        return per_sample_gradients(self._sample_loss, self.theta, X, self._labels(X, y_test))

    def _apply_inverse(self, M: torch.Tensor) -> torch.Tensor:
        """``(C + delta I)^{-1} M`` from the eigenpairs (exact, or low-rank plus complement)."""
        if self.method_ == "exact":
            return self._inverse @ M
        return self._inverse.apply(M)

    def inverse_hvp(
        self, M: torch.Tensor, *, solver: str = "eig", tol: float = 1e-6, maxiter: int | None = None
    ) -> torch.Tensor:
        """``(C + delta I)^{-1} M`` for ``M`` ``(P, k)``: ``C`` the curvature plus weight decay.

        ``solver="eig"`` uses the eigenpairs from ``fit`` (the low-rank inverse for ``method="lowrank"``);
        ``solver="cg"`` runs conjugate gradients (:mod:`hessview.engine.cg`) on matrix-free curvature-vector
        products, to relative residual ``tol`` within ``maxiter`` iterations (``None``: ``10 P``), which
        is exact up to ``tol`` even when ``method="lowrank"``.
        """
        self._require_fit()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, not {solver!r}")
        if not isinstance(M, torch.Tensor) or M.ndim != 2 or M.shape[0] != self.n_params:
            shape = tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__
            raise ValueError(f"M must be a ({self.n_params}, k) tensor of parameter vectors, not {shape}")
        M = M.to(self.dtype)
        if solver == "eig":
            return self._apply_inverse(M)
        delta = self.damping_
        result = conjugate_gradient(
            lambda D: self.curvature_matmat(D) + delta * D,
            M,
            tol=tol,
            maxiter=maxiter,
            progress=self.progress,
        )
        return result.solution

    def _train_products(self, A: torch.Tensor) -> torch.Tensor:
        """``G A`` ``(n_train, k)``, ``G`` the per-sample training gradients (recomputed if not kept)."""
        if "_train_gradients" in self.__dict__:
            return self.train_gradients @ A
        parts = self._get_backend().map("gradient_products", A, progress=self.progress, desc="influence")
        return torch.cat(parts)

    def _influence_rows(self, X, labels, solver, tol, maxiter) -> torch.Tensor:
        gradients = per_sample_gradients(self._sample_loss, self.theta, X, labels)
        if solver == "eig" and self.method_ == "exact":
            return gradients @ self._train_ihvp.T
        ihvp = self.inverse_hvp(gradients.T.contiguous(), solver=solver, tol=tol, maxiter=maxiter)
        return self._train_products(ihvp).T

    def influence(
        self, X_test, y_test=None, *, solver: str = "eig", tol: float = 1e-6, maxiter: int | None = None
    ) -> np.ndarray:
        """Influence of removing each training point on each test loss (Koh & Liang, ICML 2017).

        .. math:: I[i, j] = \\frac{1}{n} g_i^T (H + \\delta I)^{-1} g_j
                  \\approx L_i(\\theta_{-j}) - L_i(\\theta),

        positive when training point ``j`` is helpful to test point ``i``. Shape ``(n_test, n_train)``.
        ``solver``, ``tol`` and ``maxiter`` choose how :math:`(H + \\delta I)^{-1} g_i` is computed (see
        :meth:`inverse_hvp`): ``"cg"`` suits a few chosen test points.
        """
        self._require_fit()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, not {solver!r}")
        X = self._inputs(X_test)
        scores = self._influence_rows(X, self._labels(X, y_test), solver, tol, maxiter)
        return (scores / self.n_train).cpu().numpy()

    def influence_to_disk(
        self,
        X_test,
        path,
        y_test=None,
        *,
        block_size: int = 1024,
        solver: str = "eig",
        tol: float = 1e-6,
        maxiter: int | None = None,
    ) -> np.memmap:
        """:meth:`influence` written to the ``.npy`` file ``path`` ``block_size`` test points at a time.

        Returns the file opened read-only with ``mmap_mode="r"``; written atomically (a failed run leaves
        no partial file). When the training gradients are not kept (large low-rank fits), each block makes
        one pass over the training data, so large blocks are cheaper.
        """
        self._require_fit()
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, not {solver!r}")
        X = self._inputs(X_test)
        labels = self._labels(X, y_test)

        def rows(start, stop):
            block = self._influence_rows(X[start:stop], labels[start:stop], solver, tol, maxiter)
            return (block / self.n_train).cpu().numpy()

        dtype = np.dtype(str(self.dtype).removeprefix("torch."))
        return write_row_blocks(
            path,
            (X.shape[0], self.n_train),
            block_size,
            rows,
            dtype=dtype,
            progress=self.progress,
            desc="influence blocks",
        )

    def relatif(self, X_test, y_test=None) -> np.ndarray:
        """Theta-relative influence, RelatIF (Barshan et al., AISTATS 2020).

        .. math:: R[i, j] = \\frac{g_i^T (H + \\delta I)^{-1} g_j}{\\lVert (H + \\delta I)^{-1} g_j\\rVert},

        which discounts training points whose influence comes from a large parameter change.
        """
        self._require_fit()
        X = self._inputs(X_test)
        scores = self._influence_rows(X, self._labels(X, y_test), "eig", None, None)
        if "_train_ihvp_norm" not in self.__dict__:
            if "_train_gradients" in self.__dict__:
                self._train_ihvp_norm = torch.cat(
                    [self._inverse.apply(G.T).norm(dim=0) for G in self.train_gradients.split(512)]
                )
            else:
                norms = self._get_backend().map("inverse_gradient_norms", self._inverse)
                self._train_ihvp_norm = torch.cat(norms)
        norms = self._train_ihvp_norm.clamp_min(torch.finfo(self.dtype).tiny)
        return (scores / norms).cpu().numpy()

    def uncertainty(
        self, X_test, y_test=None, *, n_resamples: int = 200, seed: int = 0, level: float = 0.95
    ) -> Uncertainty:
        """Resampling Uncertainty Estimation (see :mod:`hessview.engine.uncertainty`).

        Every one of the ``n_resamples`` bootstrap models predicts every test point; ``loss_var`` uses
        ``y_test``, or the labels predicted at ``theta`` when it is None (for regression without targets
        it is NaN: the predictions' spread needs no targets).
        """
        self._require_fit()
        if isinstance(n_resamples, np.integer):
            n_resamples = int(n_resamples)
        if not isinstance(n_resamples, int) or n_resamples < 2:
            raise ValueError(f"n_resamples must be an integer >= 2, not {n_resamples!r}")
        if not 0 < level < 1:
            raise ValueError(f"level must lie strictly between 0 and 1, not {level!r}")
        X = self._inputs(X_test)
        labels = None if self.loss == "mse" and y_test is None else self._labels(X, y_test)
        weights = bootstrap_weights(self.n_train, n_resamples, seed)
        if self.method_ == "exact":
            shifts = resampled_shifts(self.train_gradients, self._inverse, weights)
        else:
            W = (torch.as_tensor(weights, dtype=self.dtype, device=self.theta.device) - 1.0) / self.n_train
            if "_train_gradients" in self.__dict__:
                moved = W @ self.train_gradients
            else:
                moved = sum(self._get_backend().map("weighted_gradient_sum", W))
            shifts = -self._inverse.apply(moved.T).T
        thetas = self.theta + shifts
        batch = max(1, int(2e7 // max(1, X.numel())))
        outputs = torch.cat(
            [
                vmap(self._outputs, in_dims=(None, 0))(X, thetas[i : i + batch])
                for i in range(0, n_resamples, batch)
            ]
        )
        if labels is None:
            losses = torch.full(outputs.shape[:2], float("nan"), dtype=outputs.dtype)
        else:
            losses = torch.stack([per_sample_loss(self.loss, out, labels) for out in outputs])
        if self.loss == "cross_entropy":
            outputs = torch.softmax(outputs, dim=-1)
        return summarise(outputs.cpu().numpy(), losses.cpu().numpy(), level, seed)

    def _prediction_jacobians(self, X: torch.Tensor, prediction: str) -> torch.Tensor:
        """``(n, K, P)`` gradients of the predictions that local ensembles compare.

        ``"logits"``: the model outputs, centred over classes for classification (softmax ignores a
        common shift); ``"loss"``: the loss at the predicted label.
        """
        if prediction == "loss":
            return self.test_gradients(X, None).unsqueeze(1)
        centre = self.loss == "cross_entropy"

        def outputs(theta, x):
            out = self.flat(theta, x.unsqueeze(0))[0].reshape(-1)
            return out - out.mean() if centre else out

        return vmap(jacrev(outputs), in_dims=(None, 0))(self.theta, X).detach()

    def _extrapolation_scores(self, X: torch.Tensor, prediction: str, directions: torch.Tensor) -> np.ndarray:
        """Projected prediction-gradient norms, 256 inputs at a time (never all ``n x K x P`` at once)."""
        return np.concatenate(
            [
                projected_norms(self._prediction_jacobians(X[i : i + 256], prediction), directions)
                for i in range(0, X.shape[0], 256)
            ]
        )

    def extrapolation(
        self, X_test, m: int | None = None, *, quantile: float = 0.99, prediction: str = "logits"
    ) -> Extrapolation:
        """Local-ensemble extrapolation scores and flags (see :mod:`hessview.engine.extrapolation`).

        Args:
            X_test: test inputs.
            m: curvature directions projected out; default: the directions whose data curvature
                ``|lambda - weight_decay|`` exceeds ``1e-3`` of its largest value, at most ``P - 1`` (and at
                most ``rank`` for ``method="lowrank"``, which knows only the top ``rank`` directions).
            quantile: the threshold is this quantile of the training inputs' scores.
            prediction: ``"logits"`` or ``"loss"`` (the function whose gradient is projected).
        """
        self._require_fit()
        top = self.n_params if self.method_ == "exact" else self.rank
        if m is None:
            m = min(default_rank(self.eigenvalues - self.weight_decay), self.n_params - 1, top)
        if isinstance(m, np.integer):
            m = int(m)
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= top:
            kept = "" if self.method_ == "exact" else f" (method='lowrank' keeps {self.rank} directions)"
            raise ValueError(f"m must be an integer in [0, {top}]{kept}, not {m!r}")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must lie strictly between 0 and 1, not {quantile!r}")
        if prediction not in ("logits", "loss"):
            raise ValueError(f"prediction must be 'logits' or 'loss', not {prediction!r}")
        X = self._inputs(X_test)
        directions = top_directions(self.eigenvalues, self.eigenvectors, m)
        key = (m, prediction)
        if key not in self._train_scores:
            self._train_scores[key] = self._extrapolation_scores(self.X_train, prediction, directions)
        train_score = self._train_scores[key]
        score = self._extrapolation_scores(X, prediction, directions)
        threshold = float(np.quantile(train_score, quantile))
        return Extrapolation(score, threshold, score > threshold, m, quantile, train_score)

    # ------------------------------------------------------------------ persistence
    def data_fingerprint(self) -> str:
        """SHA-256 of the training inputs and labels."""
        return _data_fingerprint(self.X_train, self.y_train)

    def save(self, path) -> Path:
        """Write the fitted state to a safetensors file, atomically (no pickled objects)."""
        self._require_fit()
        tensors = {
            "eigenvalues": self.eigenvalues,
            "eigenvectors": self.eigenvectors,
            "X_train": self.X_train,
            "y_train": self.y_train,
            "theta": self.theta,
        }
        for key in ("hessian", "train_gradients"):
            if f"_{key}" in self.__dict__:
                tensors[key] = getattr(self, key)
        if "_train_gradients" not in self.__dict__:
            tensors["gradient_mean"] = self._gradient_mean
            tensors["sample_gradient_norms"] = self._sample_gradient_norms
        meta = {
            "format": FORMAT,
            "method": self.method_,
            "method_reason": self.method_reason_,
            "rank": self.rank,
            "curvature": self.curvature,
            "lanczos_tol": self.lanczos_tol,
            "screen": self.screen,
            "screening": [self.n_screened_, self.screening_residual_],
            "loss": self.loss,
            "weight_decay": self.weight_decay,
            "damping": self.damping,
            "dtype": str(self.dtype).removeprefix("torch."),
            "model_fingerprint": self.flat.fingerprint(),
            "data_fingerprint": self.data_fingerprint(),
        }
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                str(tmp),
                metadata={"hessview": json.dumps(meta)},
            )
        return path

    @classmethod
    def load(cls, path, model: nn.Module, X_train=None, y_train=None, *, progress: bool = True, client=None):
        """Load a toolbox saved by :meth:`save` for ``model`` (optionally running queries on ``client``).

        Refuses (ValueError) a file made for another model (architecture or parameter values differ)
        or, when ``X_train``/``y_train`` are given, for other training data.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no toolbox cache at {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = json.loads((handle.metadata() or {}).get("hessview", "{}"))
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path} is not a readable hessview toolbox cache: {err}") from err
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a hessview toolbox cache of format {FORMAT}")
        dtype = getattr(torch, meta["dtype"])
        fingerprint = FlatModel(model, dtype).fingerprint()
        if fingerprint != meta["model_fingerprint"]:
            raise ValueError(
                f"{path} was made for a different model (architecture or parameter values differ: "
                f"fingerprint {meta['model_fingerprint'][:12]} in the file, {fingerprint[:12]} for "
                "this model); refit the toolbox for this model"
            )
        device = next(model.parameters()).device
        X, y = tensors["X_train"].to(device), tensors["y_train"].to(device)
        if X_train is not None or y_train is not None:
            given = cls(
                model,
                X if X_train is None else X_train,
                y if y_train is None else y_train,
                loss=meta["loss"],
                dtype=dtype,
                progress=False,
            )
            if given.data_fingerprint() != meta["data_fingerprint"]:
                raise ValueError(f"{path} was made for different training data; refit the toolbox")
        damping = meta["damping"]
        toolbox = cls(
            model,
            X,
            y,
            loss=meta["loss"],
            weight_decay=meta["weight_decay"],
            damping=damping,
            dtype=dtype,
            progress=progress,
            method=meta.get("method", "exact"),
            rank=meta.get("rank"),
            curvature=meta.get("curvature", "hessian"),
            client=client,
            lanczos_tol=meta.get("lanczos_tol", 1e-6),
            screen=meta.get("screen", True),
        )
        toolbox.n_screened_, toolbox.screening_residual_ = meta.get("screening", [0, None])
        if toolbox.data_fingerprint() != meta["data_fingerprint"]:
            raise ValueError(f"{path} is corrupt: its training data do not match its fingerprint")
        toolbox.method_ = meta.get("method", "exact")
        toolbox.method_reason_ = meta.get("method_reason", "method='exact'")
        toolbox.method = meta.get("method", "exact")
        names = {"gradient_mean": "_gradient_mean", "sample_gradient_norms": "_sample_gradient_norms"}
        for key, tensor in tensors.items():
            if key not in ("X_train", "y_train", "theta"):
                setattr(toolbox, names.get(key, key), tensor.to(device))
        toolbox._set_derived()
        toolbox._fitted = True
        return toolbox


def _check_damping(damping) -> None:
    if damping != "auto" and (not _is_real(damping) or not math.isfinite(damping) or damping < 0):
        raise ValueError(f"damping must be 'auto' or a finite number >= 0, not {damping!r}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _data_fingerprint(X: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (X, y):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
