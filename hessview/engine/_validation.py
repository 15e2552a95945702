"""Input checks shared by the engine: every bad input is refused before anything is computed."""

from __future__ import annotations

import numpy as np
import torch


def as_tensor(name: str, value, device: torch.device) -> torch.Tensor:
    """Convert a NumPy array or tensor to a tensor, refusing other types and foreign devices."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{name} is a NumPy array of Python objects; expected numbers")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, not {type(value).__name__}")
    if value.device != device:
        raise ValueError(
            f"device mismatch: {name} is on {value.device} but the model's parameters are on {device}"
        )
    return value


def check_inputs(name: str, X: torch.Tensor, dtype: torch.dtype, feature_shape=None) -> torch.Tensor:
    """Check a batch of inputs (non-empty, floating, finite, right feature shape); cast to ``dtype``."""
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one sample along the first dimension")
    if not (X.is_floating_point() or X.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"{name} has dtype {X.dtype}; expected real numbers")
    X = X.to(dtype)
    bad = ~torch.isfinite(X)
    if bad.any():
        rows = torch.nonzero(bad.reshape(X.shape[0], -1).any(dim=1)).flatten()[:5].tolist()
        raise ValueError(f"{name} contains {int(bad.sum())} NaN or inf values (first rows: {rows})")
    if feature_shape is not None and tuple(X.shape[1:]) != tuple(feature_shape):
        raise ValueError(
            f"{name} has samples of shape {tuple(X.shape[1:])} but the training inputs have "
            f"{tuple(feature_shape)}"
        )
    return X


def check_targets(name: str, y: torch.Tensor, n: int, loss: str, outputs: torch.Tensor, dtype):
    """Check labels (classification) or targets (regression) against ``n`` samples and model outputs."""
    if y.ndim == 0 or y.shape[0] != n:
        raise ValueError(f"{name} has shape {tuple(y.shape)}; expected {n} entries, one per input sample")
    if loss == "cross_entropy":
        if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise TypeError(f"{name} has dtype {y.dtype}; cross_entropy needs integer class labels")
        if y.ndim != 1:
            raise ValueError(f"{name} must be 1-D class labels, got shape {tuple(y.shape)}")
        n_classes = outputs.shape[1]
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= n_classes:
            raise ValueError(
                f"{name} has labels in [{low}, {high}] but the model has {n_classes} outputs "
                f"(labels must lie in [0, {n_classes - 1}])"
            )
        return y.to(torch.long)
    if not y.is_floating_point():
        raise TypeError(f"{name} has dtype {y.dtype}; mse needs real-valued targets")
    y = y.to(dtype)
    if not torch.isfinite(y).all():
        raise ValueError(f"{name} contains {int((~torch.isfinite(y)).sum())} NaN or inf values")
    if y.numel() != outputs[:1].numel() * n:
        raise ValueError(
            f"{name} has shape {tuple(y.shape)} but the model outputs {tuple(outputs.shape[1:])} per sample"
        )
    return y.reshape((n, *outputs.shape[1:]))


def check_outputs(outputs: torch.Tensor, loss: str) -> None:
    """The model must return a batch of outputs; cross-entropy needs ``(n, C)`` logits with ``C >= 2``."""
    if loss == "cross_entropy" and (outputs.ndim != 2 or outputs.shape[1] < 2):
        raise ValueError(
            f"loss='cross_entropy' needs logits of shape (n, C) with C >= 2; the model returned "
            f"{tuple(outputs.shape)}. For one output use two logits, or loss='mse'."
        )
