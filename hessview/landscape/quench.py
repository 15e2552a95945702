"""Local minimisation ("quench"): L-BFGS, then Newton steps on the exact Hessian to a tight gradient.

GMIN and OPTIM quench with L-BFGS to a small RMS gradient; here the network is small enough that the
exact Hessian is cheap, so a few Newton steps :math:`\\theta \\leftarrow \\theta - H^{-1}\\nabla L` take the
gradient to round-off, and the same Hessian classifies the point: a minimum has no negative eigenvalue.
A quench that ends on a saddle is pushed down its negative-curvature direction and restarted.

For networks analysed with Hessian-vector products (``loss.hessian_mode == "hvp"``, see
:mod:`hessview.landscape.krylov`) the Newton steps are truncated-CG solves and the classification uses the
lowest :data:`~hessview.landscape.krylov.N_LOWEST` eigenvalues from Lanczos; no ``P x P`` matrix is formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from hessview.landscape.krylov import N_LOWEST, lowest_eigenpairs, newton_polish_hvp
from hessview.landscape.network import RegularisedLoss

#: eigenvalues below ``-NEGATIVE_TOLERANCE * max(1, |largest|)`` count as negative.
NEGATIVE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Stationary:
    """A point with its loss, gradient and ascending Hessian eigenpairs.

    ``complete`` is ``False`` when only the lowest eigenpairs were computed (Hessian-vector-product
    analysis); the Morse index is then counted among them and :attr:`log_product` is ``nan``.
    """

    coords: np.ndarray
    loss: float
    gradient: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    complete: bool = True

    @property
    def gradient_norm(self) -> float:
        """Euclidean norm of the gradient."""
        return float(np.linalg.norm(self.gradient))

    @property
    def n_negative(self) -> int:
        """Number of negative Hessian eigenvalues (the Morse index)."""
        scale = max(1.0, float(np.abs(self.eigenvalues).max()))
        return int((self.eigenvalues < -NEGATIVE_TOLERANCE * scale).sum())

    @property
    def nonzero(self) -> np.ndarray:
        """Mask of the eigenvalues that are not zero modes (exact symmetries of the loss)."""
        scale = max(1.0, float(np.abs(self.eigenvalues).max()))
        return np.abs(self.eigenvalues) > NEGATIVE_TOLERANCE * scale

    @property
    def log_product(self) -> float:
        """:math:`\\sum \\log|\\lambda_i|` over the nonzero eigenvalues (the harmonic factor), or ``nan``.

        ``nan`` when only the lowest eigenvalues are known (``complete`` is ``False``).
        """
        if not self.complete:
            return float("nan")
        return float(np.log(np.abs(self.eigenvalues[self.nonzero])).sum())


def analyse(loss: RegularisedLoss, coords: np.ndarray, v0: np.ndarray | None = None) -> Stationary:
    """Loss, gradient and Hessian eigen-decomposition at ``coords``.

    Dense mode: the full spectrum. HVP mode: the lowest :data:`N_LOWEST` eigenpairs by Lanczos (``v0``
    warm-starts it), with ``complete=False``.
    """
    value, grad = loss.value_and_gradient(coords)
    if getattr(loss, "hessian_mode", "dense") == "hvp":
        eigenvalues, eigenvectors = lowest_eigenpairs(loss, coords, N_LOWEST, v0)
        return Stationary(np.asarray(coords, np.float64), value, grad, eigenvalues, eigenvectors, False)
    eigenvalues, eigenvectors = np.linalg.eigh(loss.hessian(coords))
    return Stationary(coords, value, grad, eigenvalues, eigenvectors)


def newton_polish(loss: RegularisedLoss, coords: np.ndarray, gtol: float, max_steps: int = 8):
    """Newton steps to ``|grad| < gtol`` while no Hessian eigenvalue is negative; returns the analysis.

    Zero modes (e.g. the softmax shift of the output layer when ``weight_decay = 0``) are left out of
    the step: the pseudo-inverse :math:`\\theta \\leftarrow \\theta - H^{+}\\nabla L`. In HVP mode the steps
    are truncated-CG Newton steps and the point is classified once at the end.
    """
    if getattr(loss, "hessian_mode", "dense") == "hvp":
        coords, _, _ = newton_polish_hvp(loss, np.asarray(coords, np.float64), gtol, max_steps)
        return analyse(loss, coords)
    point = analyse(loss, coords)
    for _ in range(max_steps):
        if point.gradient_norm < gtol or point.n_negative:
            break
        keep = point.nonzero
        components = point.eigenvectors[:, keep].T @ point.gradient
        step = point.eigenvectors[:, keep] @ (components / point.eigenvalues[keep])
        candidate = analyse(loss, point.coords - step)
        if candidate.gradient_norm >= point.gradient_norm:
            break
        point = candidate
    return point


def quench(
    loss: RegularisedLoss, start: np.ndarray, *, gtol: float = 1e-9, max_restarts: int = 3
) -> Stationary | None:
    """Minimise from ``start``; return the minimum, or ``None`` if no true minimum was reached."""
    coords = np.asarray(start, dtype=np.float64)
    for _ in range(max_restarts + 1):
        result = minimize(
            loss.value_and_gradient,
            coords,
            jac=True,
            method="L-BFGS-B",
            options={"gtol": 1e-7, "ftol": 1e-15, "maxiter": 5000},
        )
        point = newton_polish(loss, result.x, gtol)
        if point.n_negative == 0 and point.gradient_norm < gtol:
            return point
        if point.n_negative == 0:
            coords = point.coords
            continue
        direction = point.eigenvectors[:, 0]
        coords = point.coords + 1e-2 * direction
        if loss.value(coords) > loss.value(point.coords - 1e-2 * direction):
            coords = point.coords - 1e-2 * direction
    return None
