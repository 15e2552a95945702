"""Inverse curvature operators: one interface for every way of applying :math:`(C + \\delta I)^{-1}`.

``C`` is the curvature of the objective (Hessian or GGN of the mean loss, plus the weight decay ``w I``)
and :math:`\\delta \\ge 0` the damping. Every query of the toolbox (influence, RelatIF, RUE,
extrapolation, stability) is written once against :class:`InverseOperator`; the ways of applying the
inverse differ only here (the layout follows curvlinops' ``inverse.py``):

- :class:`EigenInverse`: the full eigendecomposition :math:`C = V \\Lambda V^T`, so
  :math:`(C + \\delta I)^{-1} = V (\\Lambda + \\delta)^{-1} V^T`, exact.
- :class:`CholeskyInverse`: the Cholesky factor :math:`C + \\delta I = L L^T` of a positive definite
  curvature, :math:`(C + \\delta I)^{-1} = L^{-T} L^{-1}`, exact; a factorisation costs :math:`P^3/3`
  floating point operations against about :math:`9 P^3` for an eigendecomposition with eigenvectors (Golub &
  Van Loan, *Matrix Computations*, 4th ed., 2013, sections 4.2 and 8.3), so a query that needs only the
  inverse does not wait for the spectrum.
- :class:`LowRankInverse`: the top-``r`` pairs exactly and the orthogonal complement as if its curvature
  were ``w`` (see :mod:`hessview.engine.lowrank`), approximate; :meth:`LowRankInverse.misrepresentation`
  bounds how badly.
- :class:`CGInverse`: conjugate gradients on matrix-free curvature products, exact to ``tol``.
- :class:`PCGInverse`: the same, preconditioned by the low-rank pairs (Frangella, Tropp & Udell, SIAM J.
  Matrix Anal. Appl. 44, 718 (2023)): as exact as CG, in far fewer products when the spectrum decays.

Operators are immutable: :meth:`InverseOperator.with_damping` returns a new one, so nothing derived from
an old damping can survive a change of damping.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from hessview.engine.cg import conjugate_gradient

Matmat = Callable[[torch.Tensor], torch.Tensor]


class InverseOperator(ABC):
    """:math:`(C + \\delta I)^{-1}` applied to ``(P, k)`` matrices.

    Attributes:
        damping: the :math:`\\delta` in use.
        eigenvalues, eigenvectors: the eigenpairs of ``C`` the operator knows (all of them, the top ``r``,
            or none: ``None``).
        exact: whether :meth:`apply` is exact (up to rounding or the solver's tolerance).
        cost: a sentence saying what one application costs.
    """

    damping: float
    eigenvalues: torch.Tensor | None
    eigenvectors: torch.Tensor | None
    exact: bool

    @abstractmethod
    def apply(self, M: torch.Tensor) -> torch.Tensor:
        """``(C + delta I)^{-1} M`` for ``M`` of shape ``(P, k)``."""

    @abstractmethod
    def with_damping(self, delta: float) -> InverseOperator:
        """The same inverse with another damping (a new operator; this one is unchanged)."""

    @property
    @abstractmethod
    def cost(self) -> str:
        """What one application to ``k`` vectors costs, in words."""

    def __matmul__(self, M: torch.Tensor) -> torch.Tensor:
        return self.apply(M)


def _check_positive(smallest: float, delta: float, what: str) -> None:
    if smallest <= 0:
        raise ValueError(
            f"{what} plus damping is not positive definite (smallest eigenvalue {smallest:.3g} with "
            f"delta = {delta:.3g}); use damping='auto' or a larger damping"
        )


@dataclass(frozen=True)
class EigenInverse(InverseOperator):
    """Exact inverse from the full eigendecomposition.

    .. math:: (C + \\delta I)^{-1} = V \\operatorname{diag}\\big(1 / (\\lambda + \\delta)\\big) V^T

    >>> lam, V = torch.tensor([2.0, 4.0], dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    >>> inv = EigenInverse(lam, V, 0.0)
    >>> inv.apply(torch.ones(2, 1, dtype=torch.float64)).flatten()
    tensor([0.5000, 0.2500], dtype=torch.float64)
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    damping: float = 0.0
    exact: bool = True
    matrix: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        shifted = self.eigenvalues + self.damping
        _check_positive(float(shifted.min()), self.damping, "the curvature")
        V = self.eigenvectors
        object.__setattr__(self, "matrix", (V / shifted) @ V.T)

    def apply(self, M):  # noqa: D102 (documented in InverseOperator)
        return self.matrix @ M

    def with_damping(self, delta):  # noqa: D102
        return EigenInverse(self.eigenvalues, self.eigenvectors, float(delta))

    @property
    def cost(self):  # noqa: D102
        return f"one dense {self.matrix.shape[0]} x {self.matrix.shape[0]} product (exact)"


def cholesky_factor(matrix: torch.Tensor, shift: float = 0.0) -> torch.Tensor | None:
    """Lower Cholesky factor of ``matrix + shift I``, or ``None`` when the factorisation breaks down.

    A breakdown means a pivot was not positive: the matrix is not (numerically) positive definite.

    >>> A = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    >>> cholesky_factor(A)
    tensor([[2.0000, 0.0000],
            [1.0000, 1.4142]], dtype=torch.float64)
    >>> cholesky_factor(A, shift=-3.0) is None
    True
    """
    shifted = matrix + shift * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    factor, info = torch.linalg.cholesky_ex(shifted)
    if int(info) != 0 or not bool(torch.isfinite(factor).all()):
        return None
    return factor


@dataclass(frozen=True)
class CholeskyInverse(InverseOperator):
    """Exact inverse of a positive definite damped curvature from its Cholesky factor.

    .. math:: C + \\delta I = L L^T, \\qquad (C + \\delta I)^{-1} = L^{-T} L^{-1}

    (``torch.cholesky_inverse``), formed once. Needs the ``P x P`` curvature, not its eigenpairs; raises
    ``ValueError`` when the factorisation breaks down (not positive definite).

    >>> C = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> CholeskyInverse(C, 0.0).apply(torch.ones(2, 1, dtype=torch.float64)).flatten()
    tensor([0.5000, 0.2500], dtype=torch.float64)
    """

    curvature: torch.Tensor = field(repr=False)
    damping: float = 0.0
    exact: bool = True
    eigenvalues: torch.Tensor | None = field(default=None, repr=False)
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)
    matrix: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        factor = cholesky_factor(self.curvature, self.damping)
        if factor is None:
            raise ValueError(
                f"the curvature plus damping is not positive definite (its Cholesky factorisation breaks "
                f"down with delta = {self.damping:.3g}); use damping='auto' or a larger damping"
            )
        object.__setattr__(self, "matrix", torch.cholesky_inverse(factor))

    def apply(self, M):  # noqa: D102
        return self.matrix @ M

    def with_damping(self, delta):  # noqa: D102
        return CholeskyInverse(self.curvature, float(delta))

    @property
    def cost(self):  # noqa: D102
        return f"one dense {self.matrix.shape[0]} x {self.matrix.shape[0]} product (exact, Cholesky)"


@dataclass(frozen=True)
class LowRankInverse(InverseOperator):
    """Top-``r`` pairs exactly, the orthogonal complement with curvature ``complement`` (the weight decay).

    .. math:: (C + \\delta I)^{-1} \\approx V \\operatorname{diag}\\Big(\\frac{1}{\\lambda + \\delta}\\Big)
              V^T + \\frac{1}{w + \\delta} (I - V V^T)

    >>> V = torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    >>> inv = LowRankInverse(torch.tensor([4.0], dtype=torch.float64), V, delta=0.0, complement=2.0)
    >>> inv.apply(torch.eye(3, dtype=torch.float64)).diagonal()
    tensor([0.2500, 0.5000, 0.5000], dtype=torch.float64)
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    delta: float
    complement: float
    exact: bool = False

    def __post_init__(self):
        shifted = float((self.eigenvalues + self.delta).min())
        if shifted <= 0 or self.complement + self.delta <= 0:
            raise ValueError(
                f"the low-rank curvature plus damping is not positive definite (smallest kept eigenvalue "
                f"+ delta = {shifted:.3g}, complement weight_decay + delta = "
                f"{self.complement + self.delta:.3g}); use damping='auto', more damping or weight_decay > 0"
            )

    @property
    def damping(self) -> float:  # noqa: D102
        return self.delta

    def apply(self, M):  # noqa: D102
        outside = 1.0 / (self.complement + self.delta)
        coefficients = 1.0 / (self.eigenvalues + self.delta) - outside
        V = self.eigenvectors
        return V @ (coefficients[:, None] * (V.T @ M)) + outside * M

    def with_damping(self, delta):  # noqa: D102
        return replace(self, delta=float(delta))

    @property
    def cost(self):  # noqa: D102
        P, r = self.eigenvectors.shape
        return f"two {P} x {r} products (top-{r} pairs, complement treated as weight_decay)"

    def misrepresentation(self) -> float:
        """How many times the complement's damped curvature may exceed what the inverse assumes for it.

        Every unkept eigenvalue :math:`\\lambda` of ``C`` has :math:`|\\lambda| \\le |\\lambda_r|`, the
        smallest kept one in magnitude, while the inverse uses :math:`w + \\delta` there, so the factor
        :math:`(|\\lambda_r| + \\delta) / (w + \\delta)` bounds the misrepresentation (1 when the
        complement really holds only the weight decay).

        >>> V = torch.eye(3, dtype=torch.float64)[:, :1]
        >>> LowRankInverse(torch.tensor([4.0], dtype=torch.float64), V, 0.0, 2.0).misrepresentation()
        2.0
        """
        smallest = float(self.eigenvalues.abs().min())
        return (smallest + self.delta) / (self.complement + self.delta)


@dataclass(frozen=True)
class CGInverse(InverseOperator):
    """Conjugate gradients on matrix-free products ``matmat(M) = C M``, to relative residual ``tol``."""

    matmat: Matmat = field(repr=False)
    damping: float = 0.0
    tol: float = 1e-6
    maxiter: int | None = None
    progress: bool = False
    eigenvalues: torch.Tensor | None = field(default=None, repr=False)
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)
    exact: bool = True

    def _damped(self, M: torch.Tensor) -> torch.Tensor:
        return self.matmat(M) + self.damping * M

    def apply(self, M):  # noqa: D102
        return conjugate_gradient(
            self._damped, M, tol=self.tol, maxiter=self.maxiter, progress=self.progress
        ).solution

    def with_damping(self, delta):  # noqa: D102
        return replace(self, damping=float(delta))

    @property
    def cost(self):  # noqa: D102
        return f"conjugate gradients to tol={self.tol:g}: one curvature product per iteration"


@dataclass(frozen=True)
class PCGInverse(CGInverse):
    """Conjugate gradients preconditioned by the known top eigenpairs.

    The preconditioner is :math:`V \\operatorname{diag}(1/(\\lambda + \\delta)) V^T + (I - V V^T) /
    (|\\lambda_r| + \\delta)` with :math:`|\\lambda_r|` the smallest kept eigenvalue in magnitude
    (Frangella, Tropp & Udell 2023): the preconditioned spectrum lies in
    :math:`[(\\lambda_{min} + \\delta)/(|\\lambda_r| + \\delta), 1]`, which CG resolves in few iterations.
    """

    def __post_init__(self):
        if self.eigenvalues is None or self.eigenvectors is None:
            raise ValueError("PCGInverse needs the eigenpairs to precondition with")
        _check_positive(float((self.eigenvalues + self.damping).min()), self.damping, "the kept curvature")

    def _precondition(self, R: torch.Tensor) -> torch.Tensor:
        lam, V = self.eigenvalues, self.eigenvectors
        outside = 1.0 / (float(lam.abs().min()) + self.damping)
        coefficients = 1.0 / (lam + self.damping) - outside
        return V @ (coefficients[:, None] * (V.T @ R)) + outside * R

    def apply(self, M):  # noqa: D102
        return conjugate_gradient(
            self._damped,
            M,
            tol=self.tol,
            maxiter=self.maxiter,
            progress=self.progress,
            preconditioner=self._precondition,
        ).solution

    @property
    def cost(self):  # noqa: D102
        r = 0 if self.eigenvectors is None else self.eigenvectors.shape[1]
        return f"preconditioned conjugate gradients (top-{r} pairs) to tol={self.tol:g}"
