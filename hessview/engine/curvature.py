"""Curvature operators: the objective's curvature :math:`C` as a linear operator with one abstract product.

:math:`C = \\frac1n \\sum_j \\nabla^2_\\theta L_j + w I` (``kind="hessian"``) or the generalised Gauss-Newton
matrix :math:`\\frac1n \\sum_j J_j^T H^{out}_j J_j + w I` (``kind="ggn"``, :mod:`hessview.engine.ggn`).
A subclass defines :meth:`CurvatureOperator._matmat` only (curvlinops' ``_base.py`` pattern); an EK-FAC or
diagonal approximation would be one more subclass, and every inverse that needs products
(:class:`~hessview.engine.inverse.CGInverse`, Lanczos in :mod:`hessview.engine.lowrank`) takes any of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class CurvatureOperator(ABC):
    """A symmetric ``P x P`` curvature applied to ``(P, k)`` matrices.

    Attributes:
        n_params: ``P``.
        products: how many curvature-vector products have been computed (a ``(P, k)`` product counts ``k``).
    """

    n_params: int

    def __init__(self, n_params: int):
        self.n_params = int(n_params)
        self.products = 0

    @abstractmethod
    def _matmat(self, M: torch.Tensor) -> torch.Tensor:
        """``C M`` for ``M`` of shape ``(P, k)``."""

    def matmat(self, M: torch.Tensor) -> torch.Tensor:
        """``C M`` for ``M`` of shape ``(P, k)`` (or ``(P,)``), counting the products."""
        vector = M.ndim == 1
        M = M[:, None] if vector else M
        if M.shape[0] != self.n_params:
            raise ValueError(f"expected a ({self.n_params}, k) matrix, got shape {tuple(M.shape)}")
        self.products += M.shape[1]
        out = self._matmat(M)
        return out[:, 0] if vector else out

    def __matmul__(self, M: torch.Tensor) -> torch.Tensor:
        return self.matmat(M)

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``."""
        return (self.n_params, self.n_params)


class DenseCurvature(CurvatureOperator):
    """A curvature held as a dense matrix (the exact mode's ``hessian``).

    >>> C = DenseCurvature(torch.eye(2, dtype=torch.float64) * 3)
    >>> C @ torch.ones(2, dtype=torch.float64)
    tensor([3., 3.], dtype=torch.float64)
    """

    def __init__(self, matrix: torch.Tensor):
        super().__init__(matrix.shape[0])
        self.matrix = matrix

    def _matmat(self, M):  # noqa: D102 (documented in CurvatureOperator)
        return self.matrix @ M


class ShardedCurvature(CurvatureOperator):
    """Matrix-free curvature: the data part summed over the shards of a backend, plus ``w I``.

    ``backend.map("curvature_matmat", V, kind)`` returns each shard's ``(k, P)`` share of the mean
    over all training samples (:mod:`hessview.engine.distributed`, in process or on Dask).
    """

    def __init__(self, backend, n_params: int, kind: str, weight_decay: float):
        super().__init__(n_params)
        self.backend, self.kind, self.weight_decay = backend, kind, float(weight_decay)

    def _matmat(self, M):  # noqa: D102
        parts = self.backend.map("curvature_matmat", M.T.contiguous(), self.kind)
        return sum(parts).T + self.weight_decay * M
