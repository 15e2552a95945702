"""Conjugate gradients for inverse-curvature-vector products with matrix-free products.

Solves :math:`(C + \\delta I) x = b` for several right-hand sides at once (Hestenes & Stiefel, J. Res.
Natl. Bur. Stand. 49, 409 (1952)): each column runs its own CG recursion, and all unconverged columns share
one batched curvature product per iteration. A column stops when
:math:`\\lVert b - A x\\rVert \\le \\mathrm{tol}\\,\\lVert b\\rVert` (scipy's ``rtol`` convention).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hessview.engine.errors import ApproximationWarning


class ConjugateGradientWarning(ApproximationWarning):
    """Conjugate gradients stopped at ``maxiter`` before reaching the tolerance."""


class NonPositiveCurvatureError(ValueError):
    """A CG direction ``d`` with ``d^T A d <= 0``: the matrix is not positive definite."""


@dataclass(frozen=True)
class CGResult:
    """Solutions ``(P, k)``, the iterations used and each column's final relative residual."""

    solution: torch.Tensor
    iterations: int
    relative_residuals: torch.Tensor
    converged: bool


def conjugate_gradient(
    matmat: Callable[[torch.Tensor], torch.Tensor],
    B: torch.Tensor,
    *,
    tol: float = 1e-6,
    maxiter: int | None = None,
    progress: bool = False,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    warn: bool = True,
) -> CGResult:
    """Solve ``A X = B`` for symmetric positive definite ``A`` given by ``matmat`` (``(P, k) -> (P, k)``).

    ``preconditioner``, when given, applies an approximation of :math:`A^{-1}` (symmetric positive
    definite) to residuals: preconditioned CG (Golub & Van Loan, Matrix Computations, Alg. 11.5.1).
    ``maxiter=None`` allows ``10 P`` iterations like :func:`scipy.sparse.linalg.cg`; warns with
    :class:`ConjugateGradientWarning` if some column has not converged by then (unless ``warn`` is
    False: the caller reads ``converged``; no process-wide warning filter is needed in a worker thread).

    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> conjugate_gradient(lambda M: A @ M, torch.tensor([[1.0], [2.0]], dtype=torch.float64)).solution
    tensor([[0.0909],
            [0.6364]], dtype=torch.float64)
    """
    if B.ndim != 2:
        raise ValueError(f"B must be a (P, k) matrix, got shape {tuple(B.shape)}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, not {tol!r}")
    if maxiter is None:
        maxiter = 10 * B.shape[0]
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
        raise ValueError(f"maxiter must be a positive integer or None, not {maxiter!r}")
    precondition = (lambda R: R) if preconditioner is None else preconditioner
    X = torch.zeros_like(B)
    R = B.clone()
    Z = precondition(R)
    D = Z.clone()
    squared = (R * R).sum(dim=0)
    rz = (R * Z).sum(dim=0)
    target = (tol * B.norm(dim=0)) ** 2
    iterations = 0
    with tqdm(total=maxiter, desc="CG", disable=not progress, leave=False) as bar:
        while iterations < maxiter:
            active = torch.nonzero(squared > target).flatten()
            if active.numel() == 0:
                break
            Da = D[:, active]
            AD = matmat(Da)
            curvature = (Da * AD).sum(dim=0)
            if float(curvature.min()) <= 0:
                raise NonPositiveCurvatureError(
                    "the curvature plus damping is not positive definite along a CG direction "
                    f"(d^T A d = {float(curvature.min()):.3g}); use damping='auto' or a larger damping"
                )
            alpha = rz[active] / curvature
            X[:, active] += alpha * Da
            R[:, active] -= alpha * AD
            Za = precondition(R[:, active])
            new = (R[:, active] * Za).sum(dim=0)
            D[:, active] = Za + (new / rz[active]) * Da
            rz[active] = new
            squared[active] = (R[:, active] ** 2).sum(dim=0)
            iterations += 1
            bar.update(1)
    norms = B.norm(dim=0).clamp_min(torch.finfo(B.dtype).tiny)
    residuals = squared.sqrt() / norms
    converged = bool((squared <= target).all())
    if not converged and warn:
        warnings.warn(
            f"conjugate gradients did not reach tol={tol:g} in {maxiter} iterations (largest relative "
            f"residual {float(residuals.max()):.3g}); raise maxiter or the damping",
            ConjugateGradientWarning,
            stacklevel=2,
        )
    return CGResult(X, iterations, residuals, converged)
