"""Input checks shared by the engine: every bad input is refused before anything is computed."""

from __future__ import annotations

import numpy as np
import torch

from hessview.engine.losses import get_loss


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
    if not (
        X.is_floating_point() or X.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
    ):
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
    loss = get_loss(loss)
    if loss.classification:
        if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise TypeError(f"{name} has dtype {y.dtype}; {loss.name} needs integer class labels")
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
        raise TypeError(f"{name} has dtype {y.dtype}; {loss.name} needs real-valued targets")
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
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"the model's forward must return one tensor of outputs, not {type(outputs).__name__}; wrap it "
            "so that it returns the logits (classification) or predictions (regression) only"
        )
    if not outputs.is_floating_point():
        raise TypeError(f"the model returned outputs of dtype {outputs.dtype}; expected floating point")
    if get_loss(loss).classification and (outputs.ndim != 2 or outputs.shape[1] < 2):
        raise ValueError(
            f"loss={get_loss(loss).name!r} needs logits of shape (n, C) with C >= 2; the model returned "
            f"{tuple(outputs.shape)}. For one output use two logits, or loss='mse'."
        )


# ---------------------------------------------------------------- arguments: one helper, one message style
def _describe(value) -> str:
    return repr(value) if not isinstance(value, str) else f"the string {value!r}"


def is_int(value) -> bool:
    """Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """Python or NumPy real number, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _bounds(low, high, open_low: bool, open_high: bool) -> str:
    """`` in [low, high]``, `` >= low``, `` < high`` ... for messages (empty without bounds)."""
    if low is not None and high is not None:
        return f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    if low is not None:
        return f" {'>' if open_low else '>='} {low:g}"
    if high is not None:
        return f" {'<' if open_high else '<='} {high:g}"
    return ""


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """An integer in ``[low, high]`` (NumPy integers accepted), returned as ``int``.

    >>> check_int("k", np.int64(3), 1)
    3
    >>> check_int("k", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: k must be an integer >= 1, not 0
    """
    ok = is_int(value) and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        bound = _bounds(low, high, False, False)
        raise (ValueError if is_int(value) else TypeError)(
            f"{name} must be an integer{bound}, not {_describe(value)}"
        )
    return int(value)


def check_real(
    name: str, value, low: float | None = None, high: float | None = None, *, open_low=False, open_high=False
) -> float:
    """A finite real number within the bounds (open or closed), returned as ``float``.

    >>> check_real("level", "0.9", 0, 1, open_low=True, open_high=True)
    Traceback (most recent call last):
    ...
    TypeError: level must be a number in (0, 1), not the string '0.9'
    """
    import math

    bound = _bounds(low, high, open_low, open_high)
    if not is_real(value):
        raise TypeError(f"{name} must be a number{bound}, not {_describe(value)}")
    value = float(value)
    ok = math.isfinite(value)
    ok = ok and (low is None or (value > low if open_low else value >= low))
    ok = ok and (high is None or (value < high if open_high else value <= high))
    if not ok:
        raise ValueError(f"{name} must be a finite number{bound}, not {value!r}")
    return value


def check_choice(name: str, value, choices) -> str:
    """One of ``choices``.

    >>> check_choice("solver", "lu", ("eig", "cg"))
    Traceback (most recent call last):
    ...
    ValueError: solver must be one of ('eig', 'cg'), not 'lu'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, not {value!r}")
    return value


def check_seed(name: str, value) -> int:
    """A random seed: an integer >= 0 (NumPy integers accepted)."""
    return check_int(name, value, 0)


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (NumPy booleans accepted)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, not {_describe(value)}")
    return bool(value)
