"""``HessianToolbox``: fit one Hessian, answer influence, uncertainty and extrapolation queries.

The objective is :math:`R(\\theta) = \\frac{1}{n}\\sum_j L(x_j, y_j; \\theta) + \\frac{w}{2}\\lVert\\theta
\\rVert^2` with the model in eval mode. ``fit`` computes its exact Hessian, the eigendecomposition shared by
every method, and the per-sample training gradients; queries reuse them (Dawid et al., Mach. Learn.: Sci.
Technol. 3, 015002 (2022)).
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
from tqdm.auto import tqdm

from hessview import _validation as check
from hessview._io import atomic_path
from hessview.extrapolation import Extrapolation, projected_norms
from hessview.hessian import check_dense_memory, default_chunks, flat_hessian, per_sample_gradients
from hessview.losses import LOSSES, per_sample_loss
from hessview.params import FlatModel
from hessview.spectrum import choose_damping, damped_inverse, default_rank, top_directions
from hessview.uncertainty import Uncertainty, bootstrap_weights, resampled_shifts, summarise

FORMAT = "hessview.toolbox/1"
STATIONARY_RATIO = 1e-3


class NotStationaryWarning(UserWarning):
    """The parameters are not a stationary point of the objective: influence and RUE assume one."""


class HessianToolbox:
    """Influence functions, RelatIF, RUE uncertainty and local-ensemble extrapolation from one Hessian.

    Args:
        model: a ``torch.nn.Module`` mapping a batch of inputs to outputs (logits for classification).
        X_train: training inputs, first dimension indexing samples (tensor or NumPy array).
        y_train: integer class labels (``loss="cross_entropy"``) or real targets (``loss="mse"``).
        loss: ``"cross_entropy"`` or ``"mse"`` (see :mod:`hessview.losses`).
        weight_decay: ``w`` in the objective's ``w/2 ||theta||^2``.
        damping: ``"auto"`` (see :func:`hessview.spectrum.choose_damping`) or a float ``delta >= 0``.
        dtype: floating dtype of every curvature computation (float64 by default).
        progress: show progress bars during ``fit``.

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
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, not {loss!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch dtype such as torch.float64, not {dtype!r}")
        if not _is_real(weight_decay) or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, not {weight_decay!r}")
        if damping != "auto" and (not _is_real(damping) or not math.isfinite(damping) or damping < 0):
            raise ValueError(f"damping must be 'auto' or a finite number >= 0, not {damping!r}")
        self.flat = FlatModel(model, dtype)
        if self.flat.n_params == 0:
            raise ValueError("the model has no trainable parameters (none with requires_grad=True)")
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
    def fit(self) -> HessianToolbox:
        """Compute the Hessian, its eigendecomposition, the damping and the per-sample gradients.

        Warns with :class:`NotStationaryWarning` when the objective's gradient norm exceeds
        ``1e-3`` times the median per-sample gradient norm. Returns ``self``.
        """
        check_dense_memory(self.n_params, self.dtype)
        X, y, n, theta = self.X_train, self.y_train, self.n_train, self.theta
        data_chunk, row_chunk = default_chunks(n, X[0].numel(), self.n_params)
        hessian = self.weight_decay * torch.eye(self.n_params, dtype=self.dtype, device=theta.device)
        starts = range(0, n, data_chunk)
        for start in tqdm(starts, desc="Hessian", disable=not self.progress or len(starts) == 1):
            Xc, yc = X[start : start + data_chunk], y[start : start + data_chunk]

            def chunk_objective(t, Xc=Xc, yc=yc):
                return per_sample_loss(self.loss, self.flat(t, Xc), yc).sum() / n

            hessian += flat_hessian(chunk_objective, theta, chunk_size=row_chunk, progress=self.progress)
        self.hessian = hessian
        eigenvalues, eigenvectors = torch.linalg.eigh(hessian)
        # row-major like a loaded cache, so that a saved and reloaded toolbox gives identical numbers
        self.eigenvalues, self.eigenvectors = eigenvalues, eigenvectors.contiguous()
        self.train_gradients = per_sample_gradients(self._sample_loss, theta, X, y)
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

    def _set_derived(self) -> None:
        """Quantities derived from the Hessian, eigenpairs and gradients (also used after ``load``)."""
        lam = self.eigenvalues
        scale = float(lam.abs().max())
        self.lambda_min_ = float(lam[0])
        self.lambda_max_ = float(lam[-1])
        tol = self.n_params * torch.finfo(self.dtype).eps * scale
        self.n_negative_ = int((lam < -tol).sum())
        choice = choose_damping(lam, self.damping)
        self.damping_, self.damping_reason_ = choice.delta, choice.reason
        gradient = self.train_gradients.mean(dim=0) + self.weight_decay * self.theta
        self.gradient_norm_ = float(gradient.norm())
        self.median_sample_gradient_norm_ = float(self.train_gradients.norm(dim=1).median())
        self._stationarity_ratio = self.gradient_norm_ / max(
            self.median_sample_gradient_norm_, torch.finfo(self.dtype).tiny
        )
        self.is_stationary_ = self._stationarity_ratio <= STATIONARY_RATIO
        self._inverse = damped_inverse(lam, self.eigenvectors, self.damping_)
        self._train_ihvp = self.train_gradients @ self._inverse
        self._train_ihvp_norm = self._train_ihvp.norm(dim=1)
        self._train_scores = {}

    def summary(self) -> str:
        """A readable report of the fit."""
        self._require_fit()
        stationary = "yes" if self.is_stationary_ else "NO (influence and RUE assume a minimum)"
        return "\n".join(
            [
                f"HessianToolbox: {self.n_params} parameters, {self.n_train} training samples, "
                f"loss={self.loss}, weight_decay={self.weight_decay:g}, dtype={self.dtype}",
                f"  gradient norm       {self.gradient_norm_:.3e} "
                f"(median per-sample {self.median_sample_gradient_norm_:.3e}); stationary: {stationary}",
                f"  lambda_min          {self.lambda_min_:.6g}",
                f"  lambda_max          {self.lambda_max_:.6g}",
                f"  negative eigenvalues {self.n_negative_}",
                f"  damping             {self.damping_:.3g}: {self.damping_reason_}",
            ]
        )

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

    def influence(self, X_test, y_test=None) -> np.ndarray:
        """Influence of removing each training point on each test loss (Koh & Liang, ICML 2017).

        .. math:: I[i, j] = \\frac{1}{n} g_i^T (H + \\delta I)^{-1} g_j
                  \\approx L_i(\\theta_{-j}) - L_i(\\theta),

        positive when training point ``j`` is helpful to test point ``i``. Shape ``(n_test, n_train)``.
        """
        self._require_fit()
        return (self.test_gradients(X_test, y_test) @ self._train_ihvp.T / self.n_train).cpu().numpy()

    def relatif(self, X_test, y_test=None) -> np.ndarray:
        """Theta-relative influence, RelatIF (Barshan et al., AISTATS 2020).

        .. math:: R[i, j] = \\frac{g_i^T (H + \\delta I)^{-1} g_j}{\\lVert (H + \\delta I)^{-1} g_j\\rVert},

        which discounts training points whose influence comes from a large parameter change.
        """
        self._require_fit()
        scores = self.test_gradients(X_test, y_test) @ self._train_ihvp.T
        norms = self._train_ihvp_norm.clamp_min(torch.finfo(self.dtype).tiny)
        return (scores / norms).cpu().numpy()

    def uncertainty(
        self, X_test, y_test=None, *, n_resamples: int = 200, seed: int = 0, level: float = 0.95
    ) -> Uncertainty:
        """Resampling Uncertainty Estimation (see :mod:`hessview.uncertainty`).

        Every one of the ``n_resamples`` bootstrap models predicts every test point; ``loss_var`` uses
        ``y_test``, or the labels predicted at ``theta`` when it is None (classification only).
        """
        self._require_fit()
        if not isinstance(n_resamples, int) or n_resamples < 2:
            raise ValueError(f"n_resamples must be an integer >= 2, not {n_resamples!r}")
        if not 0 < level < 1:
            raise ValueError(f"level must lie strictly between 0 and 1, not {level!r}")
        X = self._inputs(X_test)
        labels = self._labels(X, y_test)
        weights = bootstrap_weights(self.n_train, n_resamples, seed)
        thetas = self.theta + resampled_shifts(self.train_gradients, self._inverse, weights)
        batch = max(1, int(2e7 // max(1, X.numel())))
        outputs = torch.cat(
            [
                vmap(self._outputs, in_dims=(None, 0))(X, thetas[i : i + batch])
                for i in range(0, n_resamples, batch)
            ]
        )
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

        return torch.cat(
            [
                vmap(jacrev(outputs), in_dims=(None, 0))(self.theta, X[i : i + 256]).detach()
                for i in range(0, X.shape[0], 256)
            ]
        )

    def extrapolation(
        self, X_test, m: int | None = None, *, quantile: float = 0.99, prediction: str = "logits"
    ) -> Extrapolation:
        """Local-ensemble extrapolation scores and flags (see :mod:`hessview.extrapolation`).

        Args:
            X_test: test inputs.
            m: curvature directions projected out; default: the directions whose data curvature
                ``|lambda - weight_decay|`` exceeds ``1e-3`` of its largest value, at most ``P - 1``.
            quantile: the threshold is this quantile of the training inputs' scores.
            prediction: ``"logits"`` or ``"loss"`` (the function whose gradient is projected).
        """
        self._require_fit()
        if m is None:
            m = min(default_rank(self.eigenvalues - self.weight_decay), self.n_params - 1)
        if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= self.n_params:
            raise ValueError(f"m must be an integer in [0, {self.n_params}], not {m!r}")
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must lie strictly between 0 and 1, not {quantile!r}")
        if prediction not in ("logits", "loss"):
            raise ValueError(f"prediction must be 'logits' or 'loss', not {prediction!r}")
        X = self._inputs(X_test)
        directions = top_directions(self.eigenvalues, self.eigenvectors, m)
        key = (m, prediction)
        if key not in self._train_scores:
            train_jac = self._prediction_jacobians(self.X_train, prediction)
            self._train_scores[key] = projected_norms(train_jac, directions)
        train_score = self._train_scores[key]
        score = projected_norms(self._prediction_jacobians(X, prediction), directions)
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
            "hessian": self.hessian,
            "eigenvalues": self.eigenvalues,
            "eigenvectors": self.eigenvectors,
            "train_gradients": self.train_gradients,
            "X_train": self.X_train,
            "y_train": self.y_train,
            "theta": self.theta,
        }
        meta = {
            "format": FORMAT,
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
    def load(cls, path, model: nn.Module, X_train=None, y_train=None, *, progress: bool = True):
        """Load a toolbox saved by :meth:`save` for ``model``.

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
        )
        if toolbox.data_fingerprint() != meta["data_fingerprint"]:
            raise ValueError(f"{path} is corrupt: its training data do not match its fingerprint")
        for key in ("hessian", "eigenvalues", "eigenvectors", "train_gradients"):
            setattr(toolbox, key, tensors[key].to(device))
        toolbox._set_derived()
        toolbox._fitted = True
        return toolbox


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _data_fingerprint(X: torch.Tensor, y: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (X, y):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
