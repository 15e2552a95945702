"""Everything the explorer shows, computed once from a fitted toolbox so that a click costs no gradient.

The quantities are those of Dawid et al., MLST 3, 015002 (2022): influence functions (Koh & Liang
removal convention, positive = helpful), RelatIF, resampling uncertainty (RUE) and the local-ensemble
extrapolation score, all read from :class:`hessview.HessianToolbox`. Influence is taken on a
*measurement* of the test prediction (Park et al. 2023, TRAK): ``"margin"``, the margin of the
predicted label :math:`m = \\log p_y - \\log(1 - p_y)` (classifiers), or ``"loss"``, the test loss.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from hessview._io import CacheError, load_npz, save_npz
from hessview.widgets.state import SCORE_KINDS

MEASUREMENTS = ("margin", "loss")


def _tuned_lds(toolbox) -> float | None:
    """The hold-out LDS of a damping chosen by ``tune_damping`` (None when the current one was not tuned).

    ``set_damping`` keeps ``tuned_lds_`` true to the current damping (None after another value is set).
    """
    lds = getattr(toolbox, "tuned_lds_", None)
    return None if lds is None else float(lds)


def _as_numpy(values) -> np.ndarray:
    """Return ``values`` (numpy array or torch tensor) as a numpy array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _control_parameter(values, n: int, what: str) -> np.ndarray:
    """Return a control-parameter vector of length ``n`` (the point index when ``values`` is None)."""
    if values is None:
        return np.arange(n, dtype=np.float64)
    values = _as_numpy(values).astype(np.float64).reshape(-1)
    if values.shape[0] != n:
        raise ValueError(f"{what} has {values.shape[0]} values but there are {n} points")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return values


def _labels(values, n: int, what: str) -> np.ndarray | None:
    """Return labels as a length-``n`` vector (one-hot rows become class indices), or None."""
    if values is None:
        return None
    values = _as_numpy(values)
    if values.ndim == 0 or values.shape[0] != n:
        raise ValueError(f"{what} has shape {values.shape} but there are {n} points")
    if values.size == n:
        return values.reshape(n)
    return np.argmax(values.reshape(n, -1), axis=1)


#: the top-k whose survival across dampings ``stability`` measures (HessianToolbox.influence_stability)
STABILITY_K = 5
#: ``stability`` at or above this is shown as "stable" (the engine's STABLE_OVERLAP)
STABLE = 0.8
FILE_KEY = "hessview.ExplorerResults"  # the key of a results file saved without one of its own
REMEDY = "compute them again with ExplorerResults.from_toolbox and save them"


@dataclass(frozen=True)
class ExplorerResults:
    """Precomputed predictions, scores, uncertainty, extrapolation and spectrum for a test set.

    Arrays are indexed ``[test point]`` or ``[test point, training point]``; ``prediction``,
    ``uncertainty_*`` are ``(n_test, C)`` class probabilities for classification and ``(n_test,)``
    values for regression. ``measurement`` names what ``influence`` and ``relatif`` measure:
    ``"margin"`` (of the predicted label) or ``"loss"`` (of the true label when ``y_test`` is known).
    """

    x: np.ndarray
    train_x: np.ndarray
    y_test: np.ndarray | None
    y_train: np.ndarray | None
    prediction: np.ndarray
    influence: np.ndarray
    relatif: np.ndarray
    uncertainty_mean: np.ndarray
    uncertainty_std: np.ndarray
    uncertainty_lower: np.ndarray
    uncertainty_upper: np.ndarray
    level: float
    extrapolation_score: np.ndarray
    extrapolation_threshold: float
    extrapolation_flag: np.ndarray
    eigenvalues: np.ndarray
    damping: float
    measurement: str = "loss"
    extrapolation_quantile: float = 0.99
    stability: np.ndarray | None = None
    damping_lds: float | None = None  # hold-out LDS when the damping was chosen by tune_damping

    @classmethod
    def from_toolbox(
        cls,
        toolbox,
        X_test,
        y_test=None,
        *,
        x=None,
        train_x=None,
        y_train=None,
        n_resamples: int = 200,
        seed: int = 0,
        level: float = 0.95,
        measurement: str = "margin",
    ) -> ExplorerResults:
        """Query a fitted toolbox once for every test point.

        Args:
            toolbox: a fitted :class:`hessview.HessianToolbox`.
            X_test: test inputs, shape ``(n_test, ...)``.
            y_test: optional test labels; with ``measurement="loss"`` influence is then taken on
                the loss of the true label (else of the predicted label).
            x: control parameter of each test point (defaults to the index).
            train_x: control parameter of each training point (defaults to the index).
            y_train: training labels shown in the gallery (defaults to ``toolbox.y_train``).
            n_resamples: bootstrap resamples for ``toolbox.uncertainty``.
            seed: seed of the resampling.
            level: coverage of the uncertainty interval.
            measurement: ``"margin"``: influence on the margin of the predicted label,
                :math:`m = \\log p_y - \\log(1 - p_y)` (classifiers only; positive = removing the
                training point would lower the margin); ``"loss"``: influence on the test loss
                (positive = removing it would raise the loss). Both: positive = helpful.
        """
        if measurement not in MEASUREMENTS:
            raise ValueError(f"measurement must be one of {MEASUREMENTS}, got {measurement!r}")
        if measurement == "margin" and getattr(toolbox, "n_classes", None) is None:
            raise ValueError('measurement="margin" needs a classifier; use measurement="loss" for regression')
        if not isinstance(n_resamples, int) or n_resamples < 2:
            raise ValueError(f"n_resamples must be an integer >= 2, got {n_resamples!r}")
        n_test = len(X_test)
        if n_test < 1:
            raise ValueError("X_test is empty: the explorer needs at least one test point")
        n_train = int(toolbox.n_train)
        if y_train is None:
            y_train = getattr(toolbox, "y_train", None)
        uncertainty = toolbox.uncertainty(X_test, y_test, n_resamples=n_resamples, seed=seed, level=level)
        extrapolation = toolbox.extrapolation(X_test)
        # the margin explains the decision the model makes: that of its predicted label
        labels = None if measurement == "margin" else y_test
        stability = getattr(toolbox, "influence_stability", None)
        if stability is not None:
            stability = _as_numpy(stability(X_test, labels, k=STABILITY_K, measurement=measurement))
        return cls(
            x=_control_parameter(x, n_test, "x"),
            train_x=_control_parameter(train_x, n_train, "train_x"),
            y_test=_labels(y_test, n_test, "y_test"),
            y_train=_labels(y_train, n_train, "y_train"),
            prediction=_as_numpy(toolbox.predict(X_test)).astype(np.float64),
            influence=_as_numpy(toolbox.influence(X_test, labels, measurement=measurement)).astype(
                np.float64
            ),
            relatif=_as_numpy(toolbox.relatif(X_test, labels, measurement=measurement)).astype(np.float64),
            uncertainty_mean=_as_numpy(uncertainty.mean).astype(np.float64),
            uncertainty_std=_as_numpy(uncertainty.std).astype(np.float64),
            uncertainty_lower=_as_numpy(uncertainty.lower).astype(np.float64),
            uncertainty_upper=_as_numpy(uncertainty.upper).astype(np.float64),
            level=float(level),
            extrapolation_score=_as_numpy(extrapolation.score).astype(np.float64).reshape(-1),
            extrapolation_threshold=float(extrapolation.threshold),
            extrapolation_flag=_as_numpy(extrapolation.flag).astype(bool).reshape(-1),
            eigenvalues=_as_numpy(toolbox.eigenvalues).astype(np.float64).reshape(-1),
            damping=float(toolbox.damping_),
            measurement=measurement,
            extrapolation_quantile=float(getattr(extrapolation, "quantile", 0.99)),
            stability=None if stability is None else stability.astype(np.float64).reshape(-1),
            damping_lds=_tuned_lds(toolbox),
        )

    def save(self, path: str | os.PathLike, *, key: str = FILE_KEY, **extra) -> None:
        """Write every field to a ``.npz`` file, atomically, with a checksum (no pickled objects).

        ``extra`` arrays are stored alongside under their own names (not field names); :meth:`load`
        ignores them. ``key`` names the entry (a cache key); :meth:`load` can demand it.

        >>> import tempfile, pathlib
        >>> r = ExplorerResults(*([np.zeros(2)] * 11), 0.95, np.ones(2), 1.0, np.zeros(2, bool),
        ...                     np.arange(3.0), 0.0)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.npz"
        >>> r.save(path, note=np.array("hello"))
        >>> ExplorerResults.load(path).eigenvalues.tolist(), str(np.load(path)["note"])
        ([0.0, 1.0, 2.0], 'hello')
        """
        arrays = self.to_arrays()
        clashes = sorted(set(extra) & {field.name for field in dataclasses.fields(self)})
        if clashes:
            raise ValueError(f"extra arrays may not use the field names {clashes}")
        arrays.update({name: np.asarray(value) for name, value in extra.items()})
        save_npz(path, arrays, key=key)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every field that is not None as a numpy array, by field name (what :meth:`save` writes)."""
        return {
            field.name: np.asarray(getattr(self, field.name))
            for field in dataclasses.fields(self)
            if getattr(self, field.name) is not None
        }

    @classmethod
    def load(cls, path: str | os.PathLike, *, key: str | None = None) -> ExplorerResults:
        """Read results written by :meth:`save`, verifying their checksum (and ``key`` when given).

        Raises:
            hessview._io.CacheError: (a ValueError) the file is missing, damaged, edited, written
                without a checksum, under another ``key``, or lacks fields.
        """
        return cls.from_arrays(load_npz(path, key=key, remedy=REMEDY), source=path)

    @classmethod
    def from_arrays(cls, arrays: dict, *, source="the arrays") -> ExplorerResults:
        """Rebuild results from :meth:`to_arrays`' dictionary (other entries are ignored)."""
        values = {}
        for field in dataclasses.fields(cls):
            value = arrays.get(field.name)
            values[field.name] = value.item() if value is not None and value.ndim == 0 else value
        optional = {"y_test", "y_train"} | {
            f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
        }
        missing = [
            f.name for f in dataclasses.fields(cls) if values[f.name] is None and f.name not in optional
        ]
        if missing:
            raise CacheError(source, f"lacks the fields {missing}: not an ExplorerResults file", REMEDY)
        return cls(
            **{
                name: value
                for name, value in values.items()
                if value is not None or name in ("y_test", "y_train")
            }
        )

    @property
    def n_test(self) -> int:
        """Number of test points."""
        return self.influence.shape[0]

    @property
    def n_train(self) -> int:
        """Number of training points."""
        return self.influence.shape[1]

    @property
    def is_classification(self) -> bool:
        """True when predictions are class probabilities ``(n_test, C)``."""
        return self.prediction.ndim == 2 and self.prediction.shape[1] > 1

    @property
    def n_classes(self) -> int | None:
        """Number of classes, None for regression."""
        return self.prediction.shape[1] if self.is_classification else None

    def scores(self, kind: str) -> np.ndarray:
        """Return the ``(n_test, n_train)`` matrix of ``"influence"`` or ``"relatif"`` scores."""
        if kind not in SCORE_KINDS:
            raise ValueError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
        return self.influence if kind == "influence" else self.relatif

    def top_k(self, index: int, k: int, kind: str = "influence") -> tuple[np.ndarray, np.ndarray]:
        """Return the training indices of the ``k`` most helpful and ``k`` most harmful points.

        Helpful points have a positive score (removing them would raise the test loss), harmful
        ones a negative score; each list is sorted from the strongest and may hold fewer than
        ``k`` points when fewer have that sign.

        >>> import numpy as np
        >>> r = ExplorerResults.__new__(ExplorerResults)
        >>> object.__setattr__(r, "influence", np.array([[0.5, -2.0, 3.0, -0.1, 0.0]]))
        >>> helpful, harmful = r.top_k(0, 2)
        >>> helpful.tolist(), harmful.tolist()
        ([2, 0], [1, 3])
        """
        if not 0 <= index < self.n_test:
            raise ValueError(f"test index {index} is outside 0..{self.n_test - 1}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        row = self.scores(kind)[index]
        order = np.argsort(-row, kind="stable")
        helpful = order[row[order] > 0][:k]
        harmful = order[::-1][row[order[::-1]] < 0][:k]
        return helpful, harmful

    def plotted_class(self) -> int | None:
        """Class whose probability the main view plots: class 1 for two classes, None otherwise."""
        return 1 if self.n_classes == 2 else None

    def main_value(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per test point: the plotted value and its RUE interval (lower, upper).

        Binary classification plots P(class 1); more classes plot the probability of the predicted
        class; regression plots the predicted value.
        """
        if not self.is_classification:
            return (
                self.prediction.reshape(-1),
                self.uncertainty_lower.reshape(-1),
                self.uncertainty_upper.reshape(-1),
            )
        cls = self.plotted_class()
        column = np.full(self.n_test, cls) if cls is not None else np.argmax(self.prediction, axis=1)
        rows = np.arange(self.n_test)
        return (
            self.prediction[rows, column],
            self.uncertainty_lower[rows, column],
            self.uncertainty_upper[rows, column],
        )

    def opening_index(self) -> int:
        """The most informative test point to open the explorer on.

        Classification: the point nearest the decision boundary, i.e. with the smallest gap between
        its two most probable classes; among equal gaps the widest RUE interval of the predicted
        class. Regression: the widest RUE interval (the most uncertain prediction).

        >>> r = ExplorerResults.__new__(ExplorerResults)
        >>> object.__setattr__(r, "prediction", np.array([[0.99, 0.01], [0.45, 0.55], [0.3, 0.7]]))
        >>> object.__setattr__(r, "uncertainty_lower", np.zeros((3, 2)))
        >>> object.__setattr__(r, "uncertainty_upper", np.ones((3, 2)))
        >>> r.opening_index()
        1
        """
        width = self.uncertainty_upper - self.uncertainty_lower
        if not self.is_classification:
            return int(np.argmax(width.reshape(len(width), -1).max(axis=1)))
        ranked = np.sort(self.prediction, axis=1)
        gap = ranked[:, -1] - ranked[:, -2]
        predicted = np.argmax(self.prediction, axis=1)
        predicted_width = width[np.arange(len(predicted)), predicted]
        return int(np.lexsort((-predicted_width, gap))[0])

    def decision_gap(self, index: int) -> float:
        """Probability of the predicted class minus that of the runner-up (classification)."""
        ranked = np.sort(self.prediction[index])
        return float(ranked[-1] - ranked[-2])
