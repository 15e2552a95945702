"""Min-max normalisation fitted on training data (numpy), serialisable to JSON."""

from __future__ import annotations

import json

import numpy as np


class MinMaxScaler:
    """Map data to ``(X - min) / (max - min)`` with min and max taken over the training data.

    ``per_feature=False`` (the default) uses one global min and max over all entries, as the paper's
    code does (Dawid et al. 2022, ``data_loader.py``); ``per_feature=True`` takes them per column
    like scikit-learn's ``MinMaxScaler``.  Constant features keep a range of 1.

    >>> scaler = MinMaxScaler().fit(np.array([[0.0, 2.0], [1.0, 4.0]]))
    >>> scaler.transform(np.array([[2.0, 4.0]])).tolist()
    [[0.5, 1.0]]
    """

    def __init__(self, per_feature: bool = False):
        self.per_feature = per_feature

    def fit(self, X) -> MinMaxScaler:
        """Learn the minimum and range from training data ``X`` of shape ``(n, ...)``."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim < 2 or len(X) == 0:
            raise ValueError(f"X must have shape (n, ...) with n >= 1, got {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X must be finite")
        if self.per_feature:
            self.min_, span = X.min(axis=0), X.max(axis=0) - X.min(axis=0)
        else:
            self.min_, span = np.asarray(X.min()), np.asarray(X.max() - X.min())
        self.scale_ = np.where(span > 0, span, 1.0)
        return self

    def transform(self, X) -> np.ndarray:
        """Return ``(X - min) / (max - min)`` as float64."""
        if not hasattr(self, "min_"):
            raise ValueError("MinMaxScaler is not fitted: call fit(X_train) first")
        X = np.asarray(X, dtype=np.float64)
        if self.per_feature and X.shape[1:] != self.min_.shape:
            raise ValueError(f"expected samples of shape {self.min_.shape}, got {X.shape[1:]}")
        return (X - self.min_) / self.scale_

    def fit_transform(self, X) -> np.ndarray:
        """Fit on ``X`` and return it transformed."""
        return self.fit(X).transform(X)

    def to_json(self) -> str:
        """Return the fitted scaler as a JSON string (see :meth:`from_json`)."""
        if not hasattr(self, "min_"):
            raise ValueError("MinMaxScaler is not fitted: call fit(X_train) first")
        return json.dumps(
            {
                "per_feature": self.per_feature,
                "shape": list(self.min_.shape),
                "min": self.min_.ravel().tolist(),
                "scale": self.scale_.ravel().tolist(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> MinMaxScaler:
        """Rebuild a fitted scaler from :meth:`to_json` (floats round-trip exactly)."""
        state = json.loads(text)
        scaler = cls(per_feature=state["per_feature"])
        scaler.min_ = np.asarray(state["min"], dtype=np.float64).reshape(state["shape"])
        scaler.scale_ = np.asarray(state["scale"], dtype=np.float64).reshape(state["shape"])
        return scaler
