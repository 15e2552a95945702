"""``HessianToolbox``: fit one curvature, answer influence, uncertainty and extrapolation queries.

The objective is :math:`R(\\theta) = \\frac{1}{n}\\sum_j L(x_j, y_j; \\theta) + \\frac{w}{2}\\lVert\\theta
\\rVert^2` with the model in eval mode. ``fit`` computes its curvature, the inverse shared by every query
(from a Cholesky factor when the exact curvature is positive definite, else from its eigendecomposition,
which is otherwise computed on first use), and the per-sample training gradients; the queries
(:mod:`hessview.engine.queries`) are written once against an inverse operator
(:mod:`hessview.engine.inverse`), whichever way it is applied (Dawid et al., Mach. Learn.: Sci. Technol.
3, 015002 (2022)).

Beyond the exact Hessian: ``curvature="ggn"`` uses the positive semi-definite Gauss-Newton matrix
(:mod:`hessview.engine.ggn`); ``method="lowrank"`` keeps only the top eigenpairs, found by Lanczos from
matrix-free curvature-vector products (:mod:`hessview.engine.lowrank`); ``method="auto"`` chooses between
the two by memory. ``client=`` runs the data-parallel work on Dask (:mod:`hessview.engine.distributed`).
Persistence: :mod:`hessview.engine.persistence`.
"""

from __future__ import annotations

import hashlib
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
from hessview.engine import queries
from hessview.engine.blocks import write_row_blocks
from hessview.engine.curvature import CurvatureOperator, DenseCurvature, ShardedCurvature
from hessview.engine.distributed import (
    CURVATURES,
    DaskBackend,
    LocalBackend,
    Shard,
    check_client,
    make_shards,
    n_workers,
)
from hessview.engine.errors import ApproximationWarning, DampingWarning, NotStationaryWarning
from hessview.engine.extrapolation import Extrapolation, conformal_threshold, projected_norms
from hessview.engine.groundtruth import GroundTruthMixin
from hessview.engine.hessian import (
    CurvatureTooLargeError,
    available_memory,
    check_dense_memory,
    default_chunks,
    per_sample_gradients,
)
from hessview.engine.inverse import (
    CGInverse,
    CholeskyInverse,
    EigenInverse,
    InverseOperator,
    LowRankInverse,
    PCGInverse,
    cholesky_factor,
)
from hessview.engine.losses import Loss, check_measurement, get_loss
from hessview.engine.lowrank import top_eigenpairs
from hessview.engine.params import FlatModel
from hessview.engine.persistence import FORMAT, CorruptCacheError, ToolboxSettings, seal, unseal
from hessview.engine.screening import RTOL as SCREENING_RTOL
from hessview.engine.screening import frobenius_estimate, saturated
from hessview.engine.spectrum import Damping, choose_damping, eigengap_rank, numerical_zero, top_directions
from hessview.engine.uncertainty import Uncertainty, bootstrap_weights, summarise

__all__ = ["FORMAT", "HessianToolbox", "NotStationaryWarning"]

METHODS = ("exact", "lowrank", "auto")
SOLVERS = ("eig", "cg", "pcg")
PREDICTIONS = ("loss", "logits")
DEFAULT_RANK = 20
#: theta counts as stationary when one Newton step is at most this fraction of a typical single removal's
STATIONARY_RATIO = 0.1
#: ApproximationWarning when the low-rank complement may be misrepresented by more than this factor
APPROXIMATION_FACTOR = 2.0
#: influence_stability at or above this is called "stable"
STABLE_OVERLAP = 0.8


class HessianToolbox(GroundTruthMixin):
    """Influence functions, RelatIF, RUE uncertainty and local-ensemble extrapolation from one curvature.

    Args:
        model: a ``torch.nn.Module`` mapping a batch of inputs to outputs (logits for classification).
        X_train: training inputs, first dimension indexing samples (tensor or NumPy array).
        y_train: integer class labels (classification) or real targets (regression).
        loss: ``"cross_entropy"``, ``"mse"`` or a :class:`~hessview.engine.losses.Loss` instance.
        weight_decay: ``w`` in the objective's ``w/2 ||theta||^2``.
        damping: ``"auto"`` (see :func:`hessview.engine.spectrum.choose_damping`: none when the curvature is
            positive definite, else ``2 |lambda_min|``), ``"tuned"`` (chosen by retraining, see
            ``tune_damping``) or a float ``delta >= 0``.
        dtype: ``torch.float64`` (default) or ``torch.float32``: the dtype of every curvature computation.
        progress: show progress bars during ``fit`` and long queries.
        method: ``"exact"`` forms the ``P x P`` curvature (full eigendecomposition on demand); ``"lowrank"``
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

    Fitted attributes (after :meth:`fit`): ``hessian`` (exact mode), ``eigenvalues``, ``eigenvectors``,
    ``train_gradients`` (documented fitted names without the trailing underscore, kept for compatibility),
    ``inverse_`` (the :class:`~hessview.engine.inverse.InverseOperator` every query uses), ``method_``,
    ``method_reason_``, ``damping_``, ``damping_reason_``, ``n_damped_``, ``lambda_min_``, ``lambda_max_``,
    ``n_negative_``, ``gradient_norm_``, ``median_sample_gradient_norm_``, ``newton_step_``,
    ``typical_step_``, ``stationarity_ratio_``, ``is_stationary_``, ``complement_factor_`` (low-rank),
    ``n_screened_``, ``screening_residual_``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> X = torch.randn(40, 3, dtype=torch.float64)
        >>> y = (X[:, 0] > 0).long()
        >>> tb = HessianToolbox(nn.Linear(3, 2), X, y, weight_decay=0.1, progress=False)
        >>> with warnings.catch_warnings():  # an untrained model: fit() rightly says it is not stationary
        ...     warnings.simplefilter("ignore", NotStationaryWarning)
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
        loss: str | Loss = "cross_entropy",
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
        self.loss_fn = get_loss(loss)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype such as torch.float64, not {dtype!r}")
        if dtype not in (torch.float64, torch.float32):
            raise TypeError(
                f"dtype must be torch.float64 (default) or torch.float32, not {dtype!r}: half precision "
                "cannot hold a curvature's eigendecomposition"
            )
        self.weight_decay = check.check_real("weight_decay", weight_decay, 0)
        _check_damping(damping)
        check.check_choice("method", method, METHODS)
        check.check_choice("curvature", curvature, CURVATURES)
        self.lanczos_tol = check.check_real("lanczos_tol", lanczos_tol, 0, 1, open_high=True)
        self.screen = check.check_bool("screen", screen)
        check_client(client)
        meta = [n for n, p in model.named_parameters() if p.is_meta]
        if meta:
            raise ValueError(
                f"the model's parameters are on the meta device (no values): {', '.join(meta[:5])}; "
                "load its weights (e.g. model.to_empty(device='cpu') then load_state_dict) first"
            )
        self.flat = FlatModel(model, dtype)
        if self.flat.n_params == 0:
            raise ValueError("the model has no trainable parameters (none with requires_grad=True)")
        bad = [n for n, p in self.flat.module.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise ValueError(f"the model's parameters contain NaN or inf: {', '.join(bad)}")
        if rank is not None:
            rank = check.check_int("rank", rank, 1, self.flat.n_params - 1)
        self.method = method
        self.rank = min(DEFAULT_RANK, self.flat.n_params - 1) if rank is None else rank
        self.curvature = curvature
        self.client = client
        self.n_screened_, self.screening_residual_ = 0, None
        self.loss = loss if isinstance(loss, Loss) else self.loss_fn.name
        self.damping = damping if isinstance(damping, str) else float(damping)  # numpy scalars: JSON
        self.dtype = dtype
        self.progress = progress
        X = check.check_inputs("X_train", check.as_tensor("X_train", X_train, self.flat.device), dtype)
        outputs = self._probe(X)
        y = check.as_tensor("y_train", y_train, self.flat.device)
        self.y_train = check.check_targets("y_train", y, X.shape[0], self.loss_fn, outputs, dtype)
        self.X_train = X
        self.n_classes = int(outputs.shape[1]) if self.loss_fn.classification else None
        self._fitted = False
        self._hessian = self._train_gradients = None
        self._eigenvalues = self._eigenvectors = None
        self._positive_definite: bool | None = None  # Cholesky certificate of the exact curvature
        self._inverse_memo: tuple[float, InverseOperator] | None = None
        self._train_scores: dict[tuple[int, str], np.ndarray] = {}
        self._derived: dict = {}
        self._backend = None
        self._curvature_operator = None

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

    @property
    def settings(self) -> ToolboxSettings:
        """The constructor arguments that change the numbers (what :meth:`save` records)."""
        return ToolboxSettings(
            loss=self.loss_fn.name,
            weight_decay=self.weight_decay,
            damping=self.damping,
            dtype=str(self.dtype).removeprefix("torch."),
            method=self.method,
            rank=self.rank,
            curvature=self.curvature,
            lanczos_tol=self.lanczos_tol,
            screen=self.screen,
        )

    def _probe(self, X: torch.Tensor) -> torch.Tensor:
        try:
            with torch.no_grad():
                outputs = self.flat(self.flat.theta, X[:2])
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(f"the model cannot evaluate inputs of shape {tuple(X.shape)}: {err}") from err
        check.check_outputs(outputs, self.loss_fn)
        with torch.no_grad():
            bad = [
                i + int(j)
                for i in range(0, X.shape[0], 1024)
                for j in torch.nonzero(
                    ~torch.isfinite(self.flat(self.flat.theta, X[i : i + 1024])).flatten(1).all(dim=1)
                ).flatten()
            ]
        if bad:
            raise ValueError(
                f"the model returns NaN or inf outputs for {len(bad)} training inputs (first: {bad[:5]}); "
                "no loss or curvature can be computed there"
            )
        return outputs

    def _sample_loss(self, theta, x, y):
        return self.loss_fn.per_sample(self.flat(theta, x.unsqueeze(0)), y.unsqueeze(0))[0]

    def _require_fit(self) -> None:
        if not self._fitted:
            raise RuntimeError("call fit() before querying the toolbox")

    # ------------------------------------------------------------------ fitted arrays
    @property
    def hessian(self) -> torch.Tensor:
        """The exact ``P x P`` curvature (Hessian, or GGN for ``curvature="ggn"``) plus ``weight_decay I``."""
        if self._hessian is None:
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
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of the curvature, ascending (``method="lowrank"``: the kept top pairs only).

        For ``method="exact"`` the eigendecomposition is computed on first use (``torch.linalg.eigh`` of
        :attr:`hessian`) and kept: influence on a positive definite curvature needs only a Cholesky factor
        (:class:`~hessview.engine.inverse.CholeskyInverse`), so ``fit`` does not wait for the spectrum.
        """
        if self._eigenvalues is None:
            self._eigendecompose()
        return self._eigenvalues

    @eigenvalues.setter
    def eigenvalues(self, value: torch.Tensor) -> None:
        self._eigenvalues = value

    @property
    def eigenvectors(self) -> torch.Tensor:
        """Eigenvectors ``(P, k)`` of the curvature, one column per entry of :attr:`eigenvalues`."""
        if self._eigenvectors is None:
            self._eigendecompose()
        return self._eigenvectors

    @eigenvectors.setter
    def eigenvectors(self, value: torch.Tensor) -> None:
        self._eigenvectors = value

    def _eigendecompose(self) -> None:
        if self._hessian is None:
            raise AttributeError("the eigenpairs are computed by fit(): call fit() first")
        eigenvalues, eigenvectors = torch.linalg.eigh(self._hessian)
        # row-major like a loaded cache, so that a saved and reloaded toolbox gives identical numbers
        self._eigenvalues, self._eigenvectors = eigenvalues, eigenvectors.contiguous()

    @property
    def lambda_min_(self) -> float:
        """Smallest eigenvalue of the curvature (low-rank: of the kept pairs)."""
        return float(self.eigenvalues[0])

    @property
    def lambda_max_(self) -> float:
        """Largest eigenvalue of the curvature."""
        return float(self.eigenvalues[-1])

    @property
    def _zero(self) -> float:
        return numerical_zero(self.eigenvalues, self.n_params)

    @property
    def n_negative_(self) -> int:
        """Eigenvalues below minus the numerical zero (:func:`~hessview.engine.spectrum.numerical_zero`)."""
        return int((self.eigenvalues < -self._zero).sum())

    @property
    def train_gradients(self) -> torch.Tensor:
        """Per-sample training gradients ``(n, P)`` (kept by low-rank fits only when they fit in memory)."""
        if self._train_gradients is None:
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

    @property
    def keeps_train_gradients(self) -> bool:
        """Whether the ``(n, P)`` training gradients are held in memory (else recomputed per query)."""
        return self._train_gradients is not None

    # ------------------------------------------------------------------ fit
    def fit(self) -> HessianToolbox:
        """Compute the curvature, the damping, the inverse and the per-sample gradients.

        ``method="exact"``: a positive definite curvature (certified by a Cholesky factor) gets damping 0
        under ``"auto"`` and a :class:`~hessview.engine.inverse.CholeskyInverse`; the eigendecomposition is
        computed when first needed (an indefinite curvature, a spectrum, ``summary``, ``tune_damping``).

        Warns with :class:`~hessview.engine.errors.NotStationaryWarning` when theta is not a stationary point
        (see ``stationarity_ratio_``), :class:`~hessview.engine.errors.DampingWarning` when the automatic
        damping dominates most directions, :class:`~hessview.engine.errors.ApproximationWarning` when a
        low-rank inverse may misrepresent the complement of its kept pairs by more than a factor 2.
        ``damping="tuned"`` then runs :meth:`tune_damping` with its defaults. Returns ``self``.
        """
        self.method_, self.method_reason_ = self._choose_method()
        self._train_scores = {}
        self._derived = {}
        self._eigenvalues = self._eigenvectors = None
        self._positive_definite, self._inverse_memo = None, None
        if self.method_ == "exact":
            self._fit_exact()
        else:
            self._fit_lowrank()
        self._fitted = True
        self._forget_tuning()
        self._spectrum_facts()
        self._stationarity()
        setting = "auto" if self.damping == "tuned" else self.damping
        self._use_damping(setting, warn=self.damping != "tuned")
        if not self.is_stationary_:
            warnings.warn(self._not_stationary_message(), NotStationaryWarning, stacklevel=2)
        if self.damping == "tuned":
            self.tune_damping()
        return self

    def set_damping(self, damping: str | float) -> HessianToolbox:
        """Use another damping, ``"auto"`` or a float ``>= 0``, from now on, without refitting; returns self.

        Every later query uses ``(C + delta I)^-1`` with the new ``delta``: the curvature (and its
        eigendecomposition, once computed) are reused, so comparing dampings costs no new Hessian.
        Everything derived from the previous damping is dropped with the previous inverse operator.
        """
        self._require_fit()
        if damping == "tuned":
            raise ValueError("set_damping takes 'auto' or a number; call tune_damping() to tune it")
        _check_damping(damping)
        self.damping = damping if isinstance(damping, str) else float(damping)
        self._use_damping(damping, warn=True)
        self._note_tuning()
        return self

    def _record_tuning(self, scores: dict, tuned_lds: float, reason: str) -> None:
        """Keep what damping tuning chose (the current ``damping_``), its hold-out scores and its reason.

        ``damping_scores_`` (grid value -> hold-out LDS) describes the tuning and stays; ``tuned_lds_`` and
        the reason describe the current damping, so :meth:`set_damping` clears the one and annotates the
        other when another value is set, and restores both when the tuned value is set again.
        """
        self.damping_scores_ = {float(d): float(v) for d, v in scores.items()}
        self.tuned_lds_ = float(tuned_lds)
        self.damping_reason_ = reason
        self._tuning = (float(self.damping_), self.tuned_lds_, reason)

    def _forget_tuning(self) -> None:
        self._tuning, self.tuned_lds_, self.damping_scores_ = None, None, {}

    def _note_tuning(self) -> None:
        tuning = getattr(self, "_tuning", None)
        if tuning is None:
            return
        damping, lds, reason = tuning
        if self.damping_ == damping:
            self.tuned_lds_, self.damping_reason_ = lds, reason
        else:
            self.tuned_lds_ = None
            self.damping_reason_ += (
                f" (tune_damping chose {damping:.3g}, hold-out LDS {lds:.4f}; set_damping({damping!r}) "
                "returns to it)"
            )

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
        self._backend = self._curvature_operator = None
        if self.client is None:
            shards = make_shards(self.flat, X, y, self.loss, data_chunk)
            self._backend = LocalBackend(shards)
        left_out = self._saturated()
        if left_out.any():
            kept = LocalBackend(self._subset_shards(~left_out, data_chunk))
        else:
            kept = self._get_backend()
        # added up shard by shard: a list of every shard's P x P matrix would not fit in memory
        curvature = kept.sum(
            "dense_curvature",
            self.curvature,
            row_chunk,
            self.progress,
            progress=self.progress,
            desc="Hessian",
        )
        if curvature is None:  # every sample screened
            curvature = theta.new_zeros((self.n_params, self.n_params))
        self.n_screened_, self.screening_residual_ = 0, None
        if left_out.any():
            curvature += self._screened_curvature(left_out, data_chunk, row_chunk, curvature)
        curvature.diagonal().add_(self.weight_decay)  # the Hessian, without two more P x P matrices
        self.hessian = curvature  # its eigendecomposition is computed when first needed (see eigenvalues)
        if self.client is None:
            self.train_gradients = per_sample_gradients(self._sample_loss, theta, X, y)
        else:
            self.train_gradients = torch.cat(self._get_backend().map("gradients"))

    def _saturated(self) -> torch.Tensor:
        """Samples whose curvature vanishes in float64 (:mod:`~hessview.engine.screening`), if screening."""
        if not self.screen or self.loss_fn.name != "cross_entropy" or self.client is not None:
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

    def _fit_lowrank(self) -> None:
        self._backend = self._curvature_operator = None
        self._hessian = self._train_gradients = None
        self.eigenvalues, self.eigenvectors = top_eigenpairs(
            lambda v: self.curvature_matmat(v[:, None])[:, 0],
            self.n_params,
            self.rank,
            dtype=self.dtype,
            device=self.theta.device,
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

    # ------------------------------------------------------------------ derived state
    def _spectrum_facts(self) -> None:
        """Spectrum and gradient summaries that do not depend on the damping."""
        if self.keeps_train_gradients:
            self._gradient_mean = self.train_gradients.mean(dim=0)
            self._sample_gradient_norms = self.train_gradients.norm(dim=1)
        self._objective_gradient = self._gradient_mean + self.weight_decay * self.theta
        self.gradient_norm_ = float(self._objective_gradient.norm())
        self.median_sample_gradient_norm_ = float(self._sample_gradient_norms.median())

    def _spectrum_for_damping(self) -> torch.Tensor:
        """The eigenvalues a damping rule sees (low-rank: the kept ones and the complement's weight decay)."""
        if self.method_ == "exact":
            return self.eigenvalues
        return torch.cat([self.eigenvalues, self.eigenvalues.new_tensor([self.weight_decay])])

    def _make_inverse(self, delta: float) -> InverseOperator:
        """``(C + delta I)^-1``; exact: from a Cholesky factor, or the eigenpairs when it breaks down."""
        if self._inverse_memo is not None and self._inverse_memo[0] == delta:
            return self._inverse_memo[1]  # the stationarity check and the queries share one inverse
        if self.method_ == "exact":
            try:
                inverse = CholeskyInverse(self.hessian, delta)
            except ValueError:  # not positive definite in floating point: the eigenpairs decide and say why
                inverse = EigenInverse(self.eigenvalues, self.eigenvectors, delta)
        else:
            inverse = LowRankInverse(self.eigenvalues, self.eigenvectors, delta, self.weight_decay)
        self._inverse_memo = (delta, inverse)
        return inverse

    def _certified_positive_definite(self) -> bool:
        """Whether the exact curvature's ``lambda_min`` exceeds the numerical zero, without eigenpairs.

        :math:`\\lVert C \\rVert_F \\ge \\max|\\lambda|` bounds the numerical zero :math:`z = P \\epsilon
        \\max|\\lambda|` (:func:`~hessview.engine.spectrum.numerical_zero`) from above by
        :math:`z_F = P \\epsilon \\lVert C \\rVert_F`. Cholesky is backward stable: the computed factor is
        exact for a nearby matrix, in practice within a few :math:`\\epsilon \\lVert C \\rVert` (Higham,
        *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002, section 10.1), far below
        :math:`z_F`; so when the factorisation of :math:`C - 2 z_F I` succeeds, :math:`\\lambda_{min} > z_F
        \\ge z`: positive definite by the rule of :func:`~hessview.engine.spectrum.choose_damping`.
        When it breaks down, the eigenvalues decide.
        """
        if self.method_ != "exact":
            return False
        if self._positive_definite is None:
            curvature = self.hessian
            zero = self.n_params * torch.finfo(self.dtype).eps * float(torch.linalg.matrix_norm(curvature))
            self._positive_definite = cholesky_factor(curvature, -2.0 * zero) is not None
            self._certified_floor = zero  # lambda_min exceeds this when the factor exists
        return self._positive_definite

    def _choose_damping(self, setting) -> Damping:
        """:func:`~hessview.engine.spectrum.choose_damping`, without eigenpairs where they are not needed."""
        if not isinstance(setting, str):
            return choose_damping(self.theta.new_empty(0), setting)  # a number: the spectrum is not read
        if self._certified_positive_definite():
            return Damping(
                0.0,
                "the curvature is positive definite (Cholesky factor of C - 2 P eps ||C||_F I exists, so "
                f"lambda_min > P eps ||C||_F = {self._certified_floor:.2g}, the numerical zero): no damping, "
                "so influence estimates leave-one-out retraining (Koh & Liang 2017)",
            )
        return choose_damping(self._spectrum_for_damping(), setting, self.n_params)

    def _use_damping(self, setting, *, warn: bool) -> None:
        """Choose ``damping_`` for ``setting`` and build the inverse every query uses; drop derived state."""
        choice = self._choose_damping(setting)
        self.damping_, self.damping_reason_ = choice.delta, choice.reason
        self.inverse_ = self._make_inverse(self.damping_)
        self._derived = {}  # every cache that depends on the inverse lives here, so none can go stale
        # no eigenvalue has |lambda| < 0: without damping none is damped, and no eigenpair is needed
        self.n_damped_ = 0 if self.damping_ == 0 else int((self.eigenvalues.abs() < self.damping_).sum())
        if warn and setting == "auto" and self.n_damped_ and self.n_damped_ > len(self.eigenvalues) / 2:
            warnings.warn(
                f"the automatic damping {self.damping_:.3g} exceeds |lambda| along {self.n_damped_} of "
                f"{len(self.eigenvalues)} eigenvectors: there (C + delta I)^-1 ~ I / delta, so influence "
                "mostly measures gradient similarity in those directions. Train to a minimum (the "
                "curvature is then positive definite and no damping is used), or choose the damping by "
                "retraining with tune_damping()",
                DampingWarning,
                stacklevel=3,
            )
        self.complement_factor_ = None
        if isinstance(self.inverse_, LowRankInverse):
            self.complement_factor_ = self.inverse_.misrepresentation()
            if warn and self.complement_factor_ > APPROXIMATION_FACTOR:
                smallest = float(self.eigenvalues.abs().min())
                warnings.warn(
                    f"the low-rank inverse treats the complement of its {self.rank} kept eigenpairs as "
                    "having "
                    f"curvature weight_decay + damping = {self.weight_decay + self.damping_:.3g}, but it may "
                    f"reach |lambda_r| + damping = {smallest + self.damping_:.3g}: up to "
                    f"{self.complement_factor_:.3g}x misrepresented. Use solver='pcg' (exact to tol, "
                    "preconditioned by the kept pairs), a larger rank, or method='exact'",
                    ApproximationWarning,
                    stacklevel=3,
                )

    def _stationarity(self) -> None:
        """Newton step against the typical single-removal step, with the curvature made positive definite.

        ``newton_step_`` is :math:`\\lVert (C + \\delta_s I)^{-1} \\nabla R \\rVert`, ``typical_step_``
        the root mean square over training points of :math:`\\frac1n \\lVert (C + \\delta_s I)^{-1} g_j
        \\rVert` (how far removing one point moves theta), ``stationarity_ratio_`` their ratio; stationary
        when it is at most ``STATIONARY_RATIO`` (0.1): the optimisation error is then at most a tenth of what
        influence measures.

        Judged with the undamped curvature where it is positive definite, else with the automatic damping
        (:func:`~hessview.engine.spectrum.choose_damping`), whatever damping the queries use.
        """
        judge = self._choose_damping("auto").delta
        inverse = self._make_inverse(judge)
        self.newton_step_ = queries.newton_step(inverse, self._objective_gradient)
        norms = self._inverse_gradient_norms(inverse)
        # root mean square, not the median: when most samples are saturated (1 - p ~ 1e-17) the median
        # removal moves theta by rounding noise, and no trained model could count as stationary
        self.typical_step_ = float(norms.square().mean().sqrt()) / self.n_train
        tiny = torch.finfo(self.dtype).tiny
        self.stationarity_ratio_ = self.newton_step_ / max(self.typical_step_, tiny)
        self.is_stationary_ = bool(self.stationarity_ratio_ <= STATIONARY_RATIO)

    def _not_stationary_message(self) -> str:
        why = ""
        norms = [
            type(m).__name__
            for m in self.flat.module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        if norms:
            why = (
                f" The model has {norms[0]} layers: hessview evaluates the objective in eval mode (running "
                "statistics), so a model trained in train mode is not at a minimum of it."
            )
        return (
            f"theta is not a stationary point of the objective: one Newton step would move it by "
            f"{self.newton_step_:.3g}, {self.stationarity_ratio_:.3g} times the typical (root mean square) "
            f"change caused by removing one training point ({self.typical_step_:.3g}; stationary means at "
            f"most {STATIONARY_RATIO:g}). Influence and RUE assume a minimum: their numbers are dominated by "
            f"the optimisation error.{why} Train further (e.g. full-batch L-BFGS, hessview.models.train) "
            "before trusting them."
        )

    def _inverse_gradient_norms(self, inverse: InverseOperator) -> torch.Tensor:
        if self.keeps_train_gradients:
            return queries.inverse_gradient_norms(inverse, self.train_gradients)
        return torch.cat(self._get_backend().map("inverse_gradient_norms", inverse))

    def summary(self) -> str:
        """A readable report of the fit."""
        self._require_fit()
        stationary = "yes" if self.is_stationary_ else "NO (influence and RUE assume a minimum)"
        kept = "" if self.method_ == "exact" else f" (of the top {self.rank} pairs by |lambda|)"
        lines = [
            f"HessianToolbox: {self.n_params} parameters, {self.n_train} training samples, "
            f"loss={self.loss_fn.name}, weight_decay={self.weight_decay:g}, dtype={self.dtype}",
            f"  gradient norm       {self.gradient_norm_:.3e} "
            f"(median per-sample {self.median_sample_gradient_norm_:.3e})",
            f"  stationary          {stationary}: Newton step {self.newton_step_:.3e} = "
            f"{self.stationarity_ratio_:.3g} x the typical single-removal step {self.typical_step_:.3e}",
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
                "eigenvectors: along those (C + delta I)^-1 is within a factor 2 of I / delta, so influence "
                "there leans toward gradient similarity; compare with influence_stability() before trusting "
                "rankings"
            )
        if self.method != "exact" or self.curvature != "hessian":
            lines.append(f"  method              {self.method_}: {self.method_reason_}")
            lines.append(f"  curvature           {self.curvature}")
        if self.method_ == "lowrank":
            lines.append(
                f"  inverse             top-{self.rank} pairs exact, complement curvature weight_decay + "
                f"damping = {self.weight_decay + self.damping_:.3g}, possibly misrepresented up to "
                f"{self.complement_factor_:.3g}x (solver='pcg' is exact to tol)"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"HessianToolbox(n_params={self.n_params}, n_train={self.n_train}, {state})"

    # ------------------------------------------------------------------ inputs and gradients
    def _inputs(self, X_test, name: str = "X_test") -> torch.Tensor:
        X = check.as_tensor(name, X_test, self.flat.device)
        return check.check_inputs(name, X, self.dtype, self.X_train.shape[1:])

    def _outputs(self, X: torch.Tensor, theta=None) -> torch.Tensor:
        with torch.no_grad():
            return self.flat(self.theta if theta is None else theta, X)

    def _labels(self, X: torch.Tensor, y_test, name: str = "y_test") -> torch.Tensor:
        outputs = self._outputs(X)
        if y_test is None:
            return self.loss_fn.predict_targets(outputs)
        y = check.as_tensor(name, y_test, self.flat.device)
        return check.check_targets(name, y, X.shape[0], self.loss_fn, outputs, self.dtype)

    def predict(self, X) -> np.ndarray:
        """Class probabilities ``(n, C)`` for classification, model outputs for regression."""
        outputs = self._outputs(self._inputs(X, "X"))
        if self.loss_fn.classification:
            outputs = torch.softmax(outputs, dim=1)
        return outputs.cpu().numpy()

    def measure(self, X, y=None, measurement: str = "loss") -> np.ndarray:
        """Per-sample values of ``measurement`` at theta (labels predicted when ``y`` is None)."""
        check_measurement(self.loss_fn, measurement)
        X = self._inputs(X, "X")
        labels = self._labels(X, y, "y")
        return self.loss_fn.measure(self._outputs(X), labels, measurement).cpu().numpy()

    def test_gradients(self, X_test, y_test=None, measurement: str = "loss") -> torch.Tensor:
        """Per-sample gradients ``(n_test, P)`` of the measurement's cost (labels predicted when None).

        The cost is the loss for ``measurement="loss"`` and minus the margin for ``"margin"``, so that
        influence is positive when a training point helps (lowering the loss, raising the margin).
        """
        check_measurement(self.loss_fn, measurement)
        X = self._inputs(X_test)
        return self._cost_gradients(X, self._labels(X, y_test), measurement)

    def _cost_gradients(self, X: torch.Tensor, labels: torch.Tensor, measurement: str) -> torch.Tensor:
        if measurement == "loss":
            return per_sample_gradients(self._sample_loss, self.theta, X, labels)
        sign = -1.0 if measurement == "margin" else 1.0

        def cost(theta, x, y):
            out = self.flat(theta, x.unsqueeze(0))
            return sign * self.loss_fn.measure(out, y.unsqueeze(0), measurement)[0]

        return per_sample_gradients(cost, self.theta, X, labels)

    # ------------------------------------------------------------------ inverse
    def _solver_inverse(self, solver: str, tol: float, maxiter: int | None) -> InverseOperator:
        check.check_choice("solver", solver, SOLVERS)
        if solver == "eig":
            return self.inverse_
        tol = check.check_real("tol", tol, 0, open_low=True)
        if maxiter is not None:
            maxiter = check.check_int("maxiter", maxiter, 1)
        cls = CGInverse if solver == "cg" else PCGInverse
        extra = {} if solver == "cg" else {"eigenvalues": self.eigenvalues, "eigenvectors": self.eigenvectors}
        return cls(
            self.curvature_matmat,
            damping=self.damping_,
            tol=tol,
            maxiter=maxiter,
            progress=self.progress,
            **extra,
        )

    @property
    def curvature_(self) -> CurvatureOperator:
        """The curvature (data part plus ``weight_decay I``) as a :mod:`~hessview.engine.curvature` operator.

        Dense after an exact fit, else matrix-free over the training shards.
        """
        if self._hessian is not None:
            if not isinstance(self._curvature_operator, DenseCurvature):
                self._curvature_operator = DenseCurvature(self._hessian)
        elif not isinstance(self._curvature_operator, ShardedCurvature):
            self._curvature_operator = ShardedCurvature(
                self._get_backend(), self.n_params, self.curvature, self.weight_decay
            )
        return self._curvature_operator

    def curvature_matmat(self, M: torch.Tensor) -> torch.Tensor:
        """``(C + weight_decay I) M`` for ``M`` ``(P, k)``, ``C`` the data curvature (see ``curvature_``)."""
        return self.curvature_.matmat(M)

    def inverse_hvp(
        self, M: torch.Tensor, *, solver: str = "eig", tol: float = 1e-6, maxiter: int | None = None
    ) -> torch.Tensor:
        """``(C + delta I)^{-1} M`` for ``M`` ``(P, k)``: ``C`` the curvature plus weight decay.

        ``solver="eig"`` uses the eigenpairs from ``fit`` (the low-rank inverse for ``method="lowrank"``);
        ``solver="cg"`` runs conjugate gradients (:mod:`hessview.engine.cg`) on curvature-vector products,
        to relative residual ``tol`` within ``maxiter`` iterations (``None``: ``10 P``); ``solver="pcg"``
        preconditions them with the known eigenpairs (:class:`~hessview.engine.inverse.PCGInverse`). Both
        are exact up to ``tol`` even when ``method="lowrank"``.
        """
        self._require_fit()
        inverse = self._solver_inverse(solver, tol, maxiter)
        if not isinstance(M, torch.Tensor) or M.ndim != 2 or M.shape[0] != self.n_params:
            shape = tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__
            raise ValueError(f"M must be a ({self.n_params}, k) tensor of parameter vectors, not {shape}")
        return inverse.apply(M.to(self.dtype))

    def _train_products(self, A: torch.Tensor) -> torch.Tensor:
        """``G A`` ``(n_train, k)``, ``G`` the per-sample training gradients (recomputed if not kept)."""
        if self.keeps_train_gradients:
            return self.train_gradients @ A
        parts = self._get_backend().map("gradient_products", A, progress=self.progress, desc="influence")
        return torch.cat(parts)

    # ------------------------------------------------------------------ queries
    def _query(self, X_test, y_test, measurement):
        self._require_fit()
        check_measurement(self.loss_fn, measurement)
        X = self._inputs(X_test)
        return self._cost_gradients(X, self._labels(X, y_test), measurement)

    def influence(
        self,
        X_test,
        y_test=None,
        *,
        measurement: str = "loss",
        solver: str = "eig",
        tol: float = 1e-6,
        maxiter: int | None = None,
    ) -> np.ndarray:
        """Influence of removing each training point on each test measurement (Koh & Liang, ICML 2017).

        .. math:: I[i, j] = \\frac{1}{n} \\nabla f_i^T (C + \\delta I)^{-1} g_j

        with :math:`f_i` the loss of test point ``i`` (``measurement="loss"``: :math:`I \\approx
        L_i(\\theta_{-j}) - L_i(\\theta)`) or minus its label's margin :math:`\\log p_y - \\log(1 - p_y)`
        (``"margin"``, TRAK's measurement, which does not vanish when the softmax saturates:
        :math:`I \\approx m_i(\\theta) - m_i(\\theta_{-j})`). Positive when training point ``j`` is helpful
        (removing it would raise the loss or lower the margin). Shape ``(n_test, n_train)``. ``solver``,
        ``tol`` and ``maxiter`` choose how the inverse is applied (see :meth:`inverse_hvp`).
        """
        gradients = self._query(X_test, y_test, measurement)
        inverse = self._solver_inverse(solver, tol, maxiter)
        return queries.influence_scores(gradients, inverse, self._train_products, self.n_train).cpu().numpy()

    def influence_to_disk(
        self,
        X_test,
        path,
        y_test=None,
        *,
        measurement: str = "loss",
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
        check_measurement(self.loss_fn, measurement)
        inverse = self._solver_inverse(solver, tol, maxiter)
        X = self._inputs(X_test)
        labels = self._labels(X, y_test)

        def rows(start, stop):
            gradients = self._cost_gradients(X[start:stop], labels[start:stop], measurement)
            return (
                queries.influence_scores(gradients, inverse, self._train_products, self.n_train).cpu().numpy()
            )

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

    def relatif(self, X_test, y_test=None, *, measurement: str = "loss") -> np.ndarray:
        """Theta-relative influence, RelatIF (Barshan et al., AISTATS 2020).

        .. math:: R[i, j] = \\frac{\\nabla f_i^T (C + \\delta I)^{-1} g_j}
                  {\\lVert (C + \\delta I)^{-1} g_j\\rVert},

        which discounts training points whose influence comes from a large parameter change; ``measurement``
        as in :meth:`influence`.
        """
        gradients = self._query(X_test, y_test, measurement)
        if "inverse_gradient_norms" not in self._derived:
            self._derived["inverse_gradient_norms"] = self._inverse_gradient_norms(self.inverse_)
        norms = self._derived["inverse_gradient_norms"]
        return queries.relatif_scores(gradients, self.inverse_, self._train_products, norms).cpu().numpy()

    def influence_stability(
        self, X_test, y_test=None, *, k: int = 10, measurement: str = "loss"
    ) -> np.ndarray:
        """How much of each test point's top-``k`` helpful and harmful sets survives other dampings (0 to 1).

        The grid spans the spectrum's scale around the chosen damping ``delta``: with ``s = delta`` (or,
        when ``delta = 0``, the smallest positive eigenvalue) the alternatives are ``s/10``, ``s`` and
        ``10 s`` (each kept only where the curvature plus it is positive definite). The score is the mean
        over alternatives of the fraction of the ``2k`` top-``k`` helpful and harmful training points
        that stay top-``k``; ``>= 0.8`` (``STABLE_OVERLAP``) is called stable. No curvature is recomputed.
        """
        k = check.check_int("k", k, 1)
        gradients = self._query(X_test, y_test, measurement)
        delta = self.damping_
        positive = self.eigenvalues[self.eigenvalues > self._zero]
        scale = delta if delta > 0 else (float(positive.min()) if positive.numel() else 1.0)
        grid = sorted({scale / 10, scale, 10 * scale} - {delta})
        grid = [d for d in grid if float(self.eigenvalues.min()) + d > 0]
        reference = queries.influence_scores(gradients, self.inverse_, self._train_products, self.n_train)
        reference = reference.cpu().numpy()
        if not grid:
            return np.ones(reference.shape[0])
        overlaps = [
            queries.top_k_overlap(
                reference,
                queries.influence_scores(
                    gradients, self.inverse_.with_damping(d), self._train_products, self.n_train
                )
                .cpu()
                .numpy(),
                k,
            )
            for d in grid
        ]
        return np.mean(overlaps, axis=0)

    def uncertainty(
        self, X_test, y_test=None, *, n_resamples: int = 200, seed: int = 0, level: float = 0.95
    ) -> Uncertainty:
        """Resampling Uncertainty Estimation (see :mod:`hessview.engine.uncertainty`).

        Every one of the ``n_resamples`` bootstrap models predicts every test point; ``loss_var`` uses
        ``y_test``, or the labels predicted at ``theta`` when it is None (for regression without targets
        it is NaN: the predictions' spread needs no targets).
        """
        self._require_fit()
        n_resamples = check.check_int("n_resamples", n_resamples, 2)
        seed = check.check_seed("seed", seed)
        level = check.check_real("level", level, 0, 1, open_low=True, open_high=True)
        X = self._inputs(X_test)
        predictable = self.loss_fn.classification or y_test is not None
        labels = self._labels(X, y_test) if predictable else None
        weights = bootstrap_weights(self.n_train, n_resamples, seed)
        W = (torch.as_tensor(weights, dtype=self.dtype, device=self.theta.device) - 1.0) / self.n_train
        if self.keeps_train_gradients:
            moved = W @ self.train_gradients
        else:
            moved = sum(self._get_backend().map("weighted_gradient_sum", W))
        thetas = self.theta + queries.resampled_shifts(self.inverse_, moved)
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
            losses = torch.stack([self.loss_fn.per_sample(out, labels) for out in outputs])
        if self.loss_fn.classification:
            outputs = torch.softmax(outputs, dim=-1)
        return summarise(outputs.cpu().numpy(), losses.cpu().numpy(), level, seed)

    def _prediction_jacobians(self, X: torch.Tensor, prediction: str) -> torch.Tensor:
        """``(n, K, P)`` gradients of the predictions that local ensembles compare.

        ``"loss"``: the loss at the predicted label (classifiers); ``"logits"``: the model outputs, centred
        over classes for classification (softmax ignores a common shift).
        """
        if prediction == "loss":
            return self._cost_gradients(X, self._labels(X, None), "loss").unsqueeze(1)
        centre = self.loss_fn.classification

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

    def default_m(self) -> int:
        """Directions local ensembles project out by default: the largest eigengap of the data curvature.

        The data curvature ``|lambda - weight_decay|`` of the known eigenpairs, sorted, is cut where it drops
        the most (:func:`~hessview.engine.spectrum.eigengap_rank`); always below ``P``.
        """
        self._require_fit()
        most = self.n_params - 1 if self.method_ == "exact" else self.rank
        return eigengap_rank(self.eigenvalues - self.weight_decay, most, self._zero)

    def extrapolation(
        self,
        X_test,
        m: int | None = None,
        *,
        quantile: float = 0.99,
        prediction: str | None = None,
        calibration=None,
    ) -> Extrapolation:
        """Local-ensemble extrapolation scores and flags (see :mod:`hessview.engine.extrapolation`).

        Args:
            X_test: test inputs.
            m: curvature directions projected out, in ``[0, P - 1]`` (at most ``rank`` for
                ``method="lowrank"``); default :meth:`default_m`.
            quantile: the nominal fraction of in-distribution inputs left unflagged.
            prediction: the function whose gradient is projected: ``"loss"`` (the loss at the predicted
                label; the default for classifiers, as Madras et al. 2020 use for multiclass) or
                ``"logits"`` (the outputs, centred over classes; the default for regression).
            calibration: held-out in-distribution inputs. The threshold is then their split-conformal
                quantile (the ``ceil((n_cal + 1) quantile)``-th smallest score), so new in-distribution
                inputs are flagged at rate ``<= 1 - quantile``. ``None`` takes the quantile of the training
                inputs' scores, which is optimistic (the training data pinned those directions down);
                ``result.calibration`` says which was used.
        """
        self._require_fit()
        top = self.n_params - 1 if self.method_ == "exact" else self.rank
        if m is None:
            m = self.default_m()
        if check.is_int(m) and not 0 <= m <= top:
            kept = "" if self.method_ == "exact" else f" (method='lowrank' keeps {self.rank} directions)"
            raise ValueError(
                f"m must be an integer in [0, {top}]{kept}, not {m!r}: projecting out all P directions "
                "leaves only rounding noise"
            )
        m = check.check_int("m", m, 0, top)
        quantile = check.check_real("quantile", quantile, 0, 1, open_low=True, open_high=True)
        if prediction is None:
            prediction = "loss" if self.loss_fn.classification else "logits"
        check.check_choice("prediction", prediction, PREDICTIONS)
        if prediction == "loss" and not self.loss_fn.classification:
            raise ValueError("prediction='loss' needs a classifier (labels are predicted); use 'logits'")
        X = self._inputs(X_test)
        directions = top_directions(self.eigenvalues, self.eigenvectors, m)
        key = (m, prediction)
        if key not in self._train_scores:
            self._train_scores[key] = self._extrapolation_scores(self.X_train, prediction, directions)
        train_score = self._train_scores[key]
        score = self._extrapolation_scores(X, prediction, directions)
        if calibration is None:
            threshold = float(np.quantile(train_score, quantile))
            how = (
                f"the {quantile:g} quantile of the {self.n_train} training inputs' scores (optimistic: "
                "pass calibration= held-out inputs for a calibrated flag rate)"
            )
        else:
            cal_score = self._extrapolation_scores(
                self._inputs(calibration, "calibration"), prediction, directions
            )
            threshold = conformal_threshold(cal_score, quantile)
            how = f"split-conformal quantile {quantile:g} of {len(cal_score)} held-out calibration inputs"
        return Extrapolation(score, threshold, score > threshold, m, quantile, train_score, how)

    # ------------------------------------------------------------------ persistence
    def data_fingerprint(self) -> str:
        """SHA-256 of the training inputs and labels."""
        return _data_fingerprint(self.X_train, self.y_train)

    def save(self, path) -> Path:
        """Write the fitted state to a safetensors file, atomically, with a checksum (no pickled objects).

        What is written is defined by :class:`~hessview.engine.persistence.ToolboxSettings` (the settings),
        the fitted facts below and the tensors; :meth:`load` verifies all of it.
        """
        self._require_fit()
        tensors = {
            "eigenvalues": self.eigenvalues,
            "eigenvectors": self.eigenvectors,
            "X_train": self.X_train,
            "y_train": self.y_train,
            "theta": self.theta,
        }
        if self._hessian is not None:
            tensors["hessian"] = self._hessian
        if self.keeps_train_gradients:
            tensors["train_gradients"] = self.train_gradients
        else:
            tensors["gradient_mean"] = self._gradient_mean
            tensors["sample_gradient_norms"] = self._sample_gradient_norms
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        document = {
            "settings": self.settings.to_json(),
            "fitted": {
                "method": self.method_,
                "method_reason": self.method_reason_,
                "damping": self.damping,
                "n_screened": self.n_screened_,
                "screening_residual": self.screening_residual_,
                "damping_reason": self.damping_reason_,
                "tuned_lds": getattr(self, "tuned_lds_", None),
                "damping_scores": [
                    [float(d), float(v)] for d, v in getattr(self, "damping_scores_", {}).items()
                ],
                "tuning": getattr(self, "_tuning", None),
            },
            "model_fingerprint": self.flat.fingerprint(),
            "data_fingerprint": self.data_fingerprint(),
        }
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=seal(tensors, document))
        return path

    @classmethod
    def load(
        cls,
        path,
        model: nn.Module,
        X_train=None,
        y_train=None,
        *,
        progress: bool = True,
        client=None,
        loss: Loss | None = None,
    ):
        """Load a toolbox saved by :meth:`save` for ``model`` (optionally running queries on ``client``).

        Refuses (:class:`~hessview.engine.persistence.CorruptCacheError`, a ValueError) a file that is
        damaged, edited or of another format (older ones included: refit and save again), and (ValueError)
        one made for another model (architecture or parameter values differ) or, when
        ``X_train``/``y_train`` are given, for other training data. ``loss``: the
        :class:`~hessview.engine.losses.Loss` instance a toolbox with a user-defined loss was fitted with.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no toolbox cache at {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata()
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as err:  # safetensors raises its own error types for corrupt files
            raise CorruptCacheError(
                f"{path} is not a readable hessview toolbox file ({err}); refit the toolbox and save it again"
            ) from err
        document = unseal(metadata, tensors, path)
        try:
            settings = ToolboxSettings.from_json(document["settings"], path)
            fitted = document["fitted"]
            method_, method_reason = fitted["method"], fitted["method_reason"]
            n_screened, residual = fitted["n_screened"], fitted["screening_residual"]
            model_fingerprint, data_fingerprint = document["model_fingerprint"], document["data_fingerprint"]
        except (KeyError, TypeError) as err:
            raise CorruptCacheError(
                f"{path}: the saved metadata lacks {err}; refit the toolbox and save it again"
            ) from err
        if loss is None:
            loss = settings.loss
        elif get_loss(loss).name != settings.loss:
            raise ValueError(f"{path} was fitted with loss {settings.loss!r}, not {get_loss(loss).name!r}")
        dtype = getattr(torch, settings.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise CorruptCacheError(f"{path}: unknown dtype {settings.dtype!r}; refit the toolbox")
        fingerprint = FlatModel(model, dtype).fingerprint()
        if fingerprint != model_fingerprint:
            raise ValueError(
                f"{path} was made for a different model (architecture or parameter values differ: "
                f"fingerprint {model_fingerprint[:12]} in the file, {fingerprint[:12]} for "
                "this model); refit the toolbox for this model"
            )
        missing = {"eigenvalues", "eigenvectors", "X_train", "y_train", "theta"} - set(tensors)
        if missing:
            raise CorruptCacheError(f"{path} lacks the tensors {sorted(missing)}; refit the toolbox")
        device = next(model.parameters()).device
        X, y = tensors["X_train"].to(device), tensors["y_train"].to(device)
        if X_train is not None or y_train is not None:
            given = cls(
                model,
                X if X_train is None else X_train,
                y if y_train is None else y_train,
                loss=loss,
                dtype=dtype,
                progress=False,
            )
            if given.data_fingerprint() != data_fingerprint:
                raise ValueError(f"{path} was made for different training data; refit the toolbox")
        toolbox = cls(
            model,
            X,
            y,
            loss=loss,
            weight_decay=settings.weight_decay,
            damping=settings.damping,
            dtype=dtype,
            progress=progress,
            method=settings.method,
            rank=settings.rank,
            curvature=settings.curvature,
            client=client,
            lanczos_tol=settings.lanczos_tol,
            screen=settings.screen,
        )
        if toolbox.data_fingerprint() != data_fingerprint:
            raise CorruptCacheError(f"{path} is corrupt: its training data do not match its fingerprint")
        toolbox._restore(path, tensors, device, method_, method_reason, fitted.get("damping"))
        toolbox.n_screened_, toolbox.screening_residual_ = n_screened, residual
        if fitted.get("damping_scores"):  # tune_damping ran: its scores, what it chose, the current reason
            toolbox.damping_scores_ = {d: v for d, v in fitted["damping_scores"]}
            toolbox.tuned_lds_ = fitted.get("tuned_lds")
            toolbox.damping_reason_ = fitted.get("damping_reason", toolbox.damping_reason_)
            tuning, moved = fitted.get("tuning"), False
            if tuning is None and toolbox.tuned_lds_ is not None:  # saved before the record was kept
                lds, reason = toolbox.tuned_lds_, toolbox.damping_reason_  # set_damping kept tuned_lds_ then
                scores = toolbox.damping_scores_
                chosen = max((d for d, v in scores.items() if v == lds), default=toolbox.damping_)
                moved = chosen != toolbox.damping_  # set_damping before the save: the tuned reason is lost
                if moved:
                    reason = f"tuned: delta = {chosen:.3g} has the best hold-out LDS {lds:.4f} (see scores)"
                tuning = (chosen, lds, reason)
            toolbox._tuning = None if tuning is None else (float(tuning[0]), float(tuning[1]), str(tuning[2]))
            if moved:
                toolbox._note_tuning()  # tuned_lds_ None, the reason names the tuned value
        return toolbox

    def _restore(self, path, tensors, device, method_, method_reason, damping) -> None:
        """Install loaded tensors after checking their shapes against the model and data."""
        P, n = self.n_params, self.n_train
        kept = P if method_ == "exact" else self.rank
        shapes = {
            "eigenvalues": (kept,),
            "eigenvectors": (P, kept),
            "hessian": (P, P),
            "train_gradients": (n, P),
            "gradient_mean": (P,),
            "sample_gradient_norms": (n,),
        }
        for key, shape in shapes.items():
            if key in tensors and tuple(tensors[key].shape) != shape:
                raise CorruptCacheError(
                    f"{path}: {key} has shape {tuple(tensors[key].shape)}, expected {shape}; refit the "
                    "toolbox"
                )
        gradients = "train_gradients" in tensors or {"gradient_mean", "sample_gradient_norms"} <= set(tensors)
        if (method_ == "exact" and "hessian" not in tensors) or not gradients:
            raise CorruptCacheError(f"{path} lacks fitted tensors for method {method_!r}; refit the toolbox")
        self.method_, self.method_reason_ = method_, method_reason
        # fresh (aligned) copies: BLAS results can depend on the alignment of memory-mapped file data
        tensors = {key: tensor.to(device).clone() for key, tensor in tensors.items()}
        self.eigenvalues, self.eigenvectors = tensors["eigenvalues"], tensors["eigenvectors"]
        self._positive_definite, self._inverse_memo = None, None
        self._hessian = tensors.get("hessian")
        if "train_gradients" in tensors:
            self._train_gradients = tensors["train_gradients"]
        else:
            self._gradient_mean = tensors["gradient_mean"]
            self._sample_gradient_norms = tensors["sample_gradient_norms"]
        self._fitted = True
        self._forget_tuning()
        self._spectrum_facts()
        self._stationarity()
        if damping is not None and damping != "tuned":
            self.damping = damping
        self._use_damping("auto" if self.damping == "tuned" else self.damping, warn=False)


def _check_damping(damping) -> None:
    if damping in ("auto", "tuned"):
        return
    if isinstance(damping, str) or not check.is_real(damping) or not math.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be 'auto', 'tuned' or a finite number >= 0, not {damping!r}")


def _data_fingerprint(X: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (X, y):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
