"""Curvature from Hessian-vector products only, for networks with thousands of weights.

The dense path (:mod:`hessview.landscape.quench`) diagonalises the exact ``P x P`` Hessian at every step:
:math:`O(P^2)` memory and :math:`O(P^3)` time. Here every curvature question is answered with products
:math:`Hv` (:meth:`~hessview.landscape.network.RegularisedLoss.hvp`, a forward-mode derivative of the
gradient), so memory stays :math:`O(P)`:

* **Lowest eigenpairs** by LOBPCG (block Rayleigh-Ritz, ``scipy.sparse.linalg.lobpcg``) on a
  ``LinearOperator``, warm-started from the previous step's eigenvector. OPTIM and pele get the smallest
  eigenvector by minimising the Rayleigh quotient :math:`v^\\top H v / v^\\top v` of a single vector
  (Munro & Wales, Phys. Rev. B 59, 3969 (1999); pele's ``FindLowestEigenVector``); a block does the same
  for several vectors at once and copes with the many-fold degenerate lowest eigenvalues of
  over-parameterised networks.
* **Newton steps** :math:`H\\delta = -g` by truncated conjugate gradients with a trust radius
  (Steihaug, SIAM J. Numer. Anal. 20, 626 (1983)): CG stops at the trust radius or on meeting negative
  curvature, and the relative residual is :math:`\\min(0.1, |g|)` (Eisenstat-Walker forcing), which gives
  the superlinear convergence needed for gradients of :math:`10^{-9}`.
* **Hybrid eigenvector-following** for transition states (Munro & Wales 1999; OPTIM's ``BFGSTS``; pele's
  ``FindTransitionState``): with the followed eigenpair :math:`(\\lambda, v)` and gradient :math:`g`, step
  uphill along :math:`v` by the eigenvector-following step
  :math:`h_v = 2 g_v / (|\\lambda| (1 + \\sqrt{1 + 4 g_v^2 / \\lambda^2}))` (Cerjan & Miller 1981) and
  minimise in the space orthogonal to :math:`v` by a truncated-CG Newton step on
  :math:`Q H Q`, :math:`Q = I - v v^\\top` (pele minimises there with a few L-BFGS steps instead). Because
  :math:`v` is an eigenvector, :math:`H = \\lambda v v^\\top + Q H Q`, so near a first-order saddle the two
  parts together are the exact Newton step and convergence is quadratic.

What is stored for such points: only the :data:`N_LOWEST` lowest eigenvalues (ascending) and their
eigenvectors, so :attr:`Stationary.complete` is ``False`` and :attr:`Stationary.log_product` (the sum of
log eigenvalues over the whole spectrum) is not available (``nan``). The Morse index is counted among the
lowest eigenvalues; it is exact as long as at least one of them is positive, which is checked.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.sparse.linalg import LinearOperator, lobpcg

#: number of lowest eigenpairs stored for a stationary point analysed with Hessian-vector products
N_LOWEST = 6
#: residual norm asked of LOBPCG for the lowest eigenpairs
EIGEN_TOLERANCE = 1e-9
#: hybrid eigenvector-following gives up once the gradient norm exceeds this multiple of its start
RUNAWAY_FACTOR = 10.0
#: ... or once the gradient norm falls below this fraction of its start with no negative eigenvalue
WRONG_INDEX_FRACTION = 0.01
#: LOBPCG iterations at most (each costs ``k + 2`` Hessian-vector products)
MAX_LOBPCG = 500


def hessian_operator(loss, coords: np.ndarray) -> LinearOperator:
    """The Hessian at ``coords`` as a symmetric ``scipy`` ``LinearOperator`` (products only)."""
    coords = np.asarray(coords, dtype=np.float64)
    n = coords.size
    return LinearOperator(
        (n, n),
        matvec=lambda v: loss.hvp(coords, np.ravel(v)),
        matmat=lambda v: loss.hvp(coords, v),
        dtype=np.float64,
    )


def lowest_eigenpairs(
    loss,
    coords: np.ndarray,
    k: int = N_LOWEST,
    v0: np.ndarray | None = None,
    tol: float = EIGEN_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` lowest Hessian eigenvalues (ascending) and unit eigenvectors ``(P, k)`` at ``coords``.

    LOBPCG (Knyazev, SIAM J. Sci. Comput. 23, 517 (2001)): block Rayleigh-Ritz on the span of the current
    block, its residuals and the previous directions, with a block of ``k + 2`` vectors. A block method
    because the lowest eigenvalues of an over-parameterised network are often many-fold degenerate (every
    hidden unit the data hardly use contributes copies), which single-vector Lanczos (ARPACK) does not
    resolve. ``v0`` ``(P,)`` or ``(P, m)`` warm-starts the first columns (e.g. the lowest eigenvectors of
    the previous step); the other columns are a fixed random block, so the result is deterministic.
    ``tol``: residual norm :math:`\\lVert Hv - \\lambda v\\rVert` asked for.
    """
    n = np.asarray(coords).size
    k = int(min(k, n))
    block = min(n, k + 2)
    start = np.random.default_rng(0).normal(size=(n, block))
    if v0 is not None and np.any(v0):
        warm = np.asarray(v0, dtype=np.float64).reshape(n, -1)[:, :block]
        start[:, : warm.shape[1]] = warm
    operator = hessian_operator(loss, coords)
    if 3 * block >= n:  # LOBPCG needs a block well below n; such small problems are cheap densely
        dense = operator @ np.eye(n)
        values, vectors = np.linalg.eigh(0.5 * (dense + dense.T))
        return values[:k], vectors[:, :k]
    warm = start
    for attempt in range(3):
        # an orthonormal start; LOBPCG's small Rayleigh-Ritz problems can still fail on a warm block that
        # is already converged (nearly dependent Gram matrix): then retry from fresh random blocks
        start = np.linalg.qr(
            warm if attempt == 0 else np.random.default_rng(attempt).normal(size=warm.shape)
        )[0]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "not reaching the requested tolerance"
                values, vectors = lobpcg(operator, start, largest=False, tol=tol, maxiter=MAX_LOBPCG)
            break
        except Exception as error:  # scipy's lobpcg raises a bare Exception
            if attempt == 2:
                raise RuntimeError(f"LOBPCG failed for the lowest Hessian eigenpairs: {error}") from error
    order = np.argsort(values)[:k]
    return values[order], vectors[:, order]


def truncated_cg(apply, rhs: np.ndarray, *, radius: float, rtol: float, max_iterations: int) -> np.ndarray:
    """Approximate solution of :math:`A x = b` within ``|x| <= radius`` by Steihaug's truncated CG.

    Stops when the residual falls below ``rtol * |b|``, when a step would leave the trust region (the
    iterate is then extended to its boundary) or on negative curvature (extended to the boundary along
    the current direction, which is a descent direction of the model).
    """
    x = np.zeros_like(rhs)
    r = rhs.copy()
    p = r.copy()
    target = rtol * np.linalg.norm(rhs)
    rr = r @ r
    for _ in range(max_iterations):
        if np.sqrt(rr) <= target:
            break
        ap = apply(p)
        curvature = p @ ap
        if curvature <= 0:
            return x + _to_boundary(x, p, radius) * p
        alpha = rr / curvature
        if np.linalg.norm(x + alpha * p) >= radius:
            return x + _to_boundary(x, p, radius) * p
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def _to_boundary(x: np.ndarray, p: np.ndarray, radius: float) -> float:
    """The ``tau >= 0`` with ``|x + tau p| = radius``."""
    a, b, c = p @ p, 2 * (x @ p), x @ x - radius**2
    if a == 0:
        return 0.0
    return (-b + np.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)


def newton_step(loss, coords: np.ndarray, gradient: np.ndarray, radius: float = 1.0) -> np.ndarray:
    """A truncated-CG Newton step :math:`\\delta \\approx -H^{-1} g` (trust radius ``radius``)."""
    norm = float(np.linalg.norm(gradient))
    return truncated_cg(
        lambda v: loss.hvp(coords, v),
        -gradient,
        radius=radius,
        rtol=min(0.1, norm),
        max_iterations=10 * coords.size,
    )


def newton_polish_hvp(loss, coords: np.ndarray, gtol: float, max_steps: int = 10):
    """Newton steps (truncated CG) while the gradient norm falls; returns ``(coords, value, gradient)``."""
    value, gradient = loss.value_and_gradient(coords)
    for _ in range(max_steps):
        if np.linalg.norm(gradient) < gtol:
            break
        candidate = coords + newton_step(loss, coords, gradient)
        new_value, new_gradient = loss.value_and_gradient(candidate)
        if np.linalg.norm(new_gradient) >= np.linalg.norm(gradient):
            break
        coords, value, gradient = candidate, new_value, new_gradient
    return coords, value, gradient


def hybrid_eigenvector_following(
    loss,
    start: np.ndarray,
    guess: np.ndarray,
    *,
    gtol: float = 1e-9,
    max_iterations: int = 200,
    max_step: float = 0.2,
):
    """Refine ``start`` to a first-order saddle with Hessian-vector products only; returns ``(coords, v)``.

    Each iteration computes the lowest eigenpairs by LOBPCG (warm-started), follows the lowest mode once
    there is a negative eigenvalue and otherwise the one of the lowest :data:`N_LOWEST` that overlaps most
    with the previously followed direction (initially ``guess``; if none overlaps it by 0.5, the
    direction itself with its Rayleigh quotient as curvature), steps uphill along it and takes a
    truncated-CG Newton step in the orthogonal space. Returns ``None`` when no point with gradient below
    ``gtol`` was reached in ``max_iterations``, or as soon as the gradient norm exceeds
    :data:`RUNAWAY_FACTOR` times its starting value (the walk has left the saddle's region, typically
    climbing a direction that only the weight decay curves) or falls below :data:`WRONG_INDEX_FRACTION`
    of it with no negative eigenvalue (it is converging to a minimum, as the dense path would report);
    the caller checks the Morse index.
    """
    coords = np.asarray(start, dtype=np.float64).copy()
    direction = np.asarray(guess, dtype=np.float64) / np.linalg.norm(guess)
    block = direction
    first = None
    for _ in range(max_iterations):
        _, gradient = loss.value_and_gradient(coords)
        gnorm = float(np.linalg.norm(gradient))
        if gnorm < gtol:
            return coords, direction
        first = gnorm if first is None else first
        if gnorm > RUNAWAY_FACTOR * max(first, 1e-3):
            return None
        # loose eigenvectors while far away; the final analysis asks for EIGEN_TOLERANCE
        values, vectors = lowest_eigenpairs(loss, coords, 3, block, tol=max(1e-8, 1e-3 * gnorm))
        block = vectors
        if values[0] >= 0 and gnorm < WRONG_INDEX_FRACTION * first:
            return None
        overlaps = np.abs(vectors.T @ direction)
        followed = 0 if values[0] < 0 else int(np.argmax(overlaps))
        if values[0] >= 0 and overlaps[followed] < 0.5:
            # the guess is far from every low mode: follow it with its Rayleigh quotient (as the dimer does)
            lam = float(direction @ loss.hvp(coords, direction))
        else:
            v = vectors[:, followed]
            direction = v if v @ direction >= 0 else -v
            lam = values[followed]
        g_v = float(direction @ gradient)
        b = max(abs(lam), 1e-12)
        h_v = 2.0 * g_v / (b * (1.0 + np.sqrt(1.0 + 4.0 * g_v**2 / b**2)))
        h_v = float(np.clip(h_v, -max_step, max_step))
        g_perp = gradient - g_v * direction

        def projected(u, v=direction, x=coords):
            u = u - (v @ u) * v
            hu = loss.hvp(x, u)
            return hu - (v @ hu) * v

        h_perp = truncated_cg(
            projected,
            -g_perp,
            radius=max_step,
            rtol=min(0.1, float(np.linalg.norm(gradient))),
            max_iterations=10 * coords.size,
        )
        coords = coords + h_v * direction + h_perp
    return None
