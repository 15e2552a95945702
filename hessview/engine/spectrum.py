"""The shared eigendecomposition of the Hessian and the damping that makes it invertible.

One decomposition :math:`H = V \\Lambda V^T` serves every method: the damped inverse
:math:`(H + \\delta I)^{-1} = V (\\Lambda + \\delta)^{-1} V^T` for influence and resampling, the top
curvature directions for local ensembles, and the spectrum view.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Damping:
    """The damping ``delta`` added to the Hessian and a sentence saying why it was chosen."""

    delta: float
    reason: str


def choose_damping(eigenvalues: torch.Tensor, setting: str | float, rel_margin: float = 1e-3) -> Damping:
    """Pick :math:`\\delta` so that :math:`H + \\delta I` is positive definite with a margin.

    ``"auto"``: the smallest damped eigenvalue becomes at least ``rel_margin * max |lambda|``, that is
    :math:`\\delta = \\max(0, m - \\lambda_{min})` with :math:`m = 10^{-3} \\max|\\lambda|`. No damping is
    added when the Hessian is already that well conditioned. A float is used as given.

    >>> choose_damping(torch.tensor([-0.5, 1.0, 100.0]), "auto").delta
    0.6
    >>> choose_damping(torch.tensor([1.0, 100.0]), "auto").delta
    0.0
    """
    lam_min = float(eigenvalues.min())
    scale = float(eigenvalues.abs().max())
    if not isinstance(setting, str):
        return Damping(float(setting), f"damping {float(setting):.3g} given by the user")
    margin = rel_margin * scale
    if lam_min >= margin:
        return Damping(0.0, f"lambda_min = {lam_min:.3g} >= {rel_margin:g} * max|lambda|: no damping")
    delta = margin - lam_min
    return Damping(
        delta,
        f"lambda_min = {lam_min:.3g} below the margin {rel_margin:g} * max|lambda| = {margin:.3g}: "
        f"delta = {delta:.3g} lifts the smallest eigenvalue of H + delta I to {margin:.3g}",
    )


def damped_inverse(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, delta: float) -> torch.Tensor:
    """:math:`(H + \\delta I)^{-1} = V \\operatorname{diag}(1 / (\\lambda + \\delta)) V^T`.

    >>> H = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> lam, V = torch.linalg.eigh(H)
    >>> damped_inverse(lam, V, 0.0)
    tensor([[0.5000, 0.0000],
            [0.0000, 0.2500]], dtype=torch.float64)
    """
    shifted = eigenvalues + delta
    if float(shifted.min()) <= 0:
        raise ValueError(
            f"H + delta I is not positive definite (smallest eigenvalue {float(shifted.min()):.3g} with "
            f"delta = {delta:.3g}); use damping='auto' or a larger damping"
        )
    return (eigenvectors / shifted) @ eigenvectors.T


def top_directions(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m`` eigenvectors with the largest :math:`|\\lambda|`, as columns."""
    order = torch.argsort(eigenvalues.abs(), descending=True)[:m]
    return eigenvectors[:, order]


def default_rank(eigenvalues: torch.Tensor, rel_tol: float = 1e-3) -> int:
    """Number of curvature directions with :math:`|\\lambda| > 10^{-3} \\max|\\lambda|` (the stiff ones).

    >>> default_rank(torch.tensor([1e-6, 0.5, -2.0, 10.0]))
    3
    """
    scale = float(eigenvalues.abs().max())
    return int((eigenvalues.abs() > rel_tol * scale).sum())
