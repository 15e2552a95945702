"""Top curvature eigenpairs by Lanczos, and the low-rank-plus-damping inverse built from them.

``method="lowrank"`` never forms the ``P x P`` matrix. ARPACK's implicitly restarted Lanczos
(:func:`scipy.sparse.linalg.eigsh`, Lehoucq, Sorensen & Yang 1998) finds the ``r`` eigenpairs of largest
:math:`|\\lambda|` from curvature-vector products alone; each product is one pass over the training data.

The inverse keeps those pairs exactly and treats the orthogonal complement as isotropic:

.. math:: (C + \\delta I)^{-1} \\approx V \\operatorname{diag}\\Big(\\frac{1}{\\lambda + \\delta}\\Big) V^T
          + \\frac{1}{w + \\delta} (I - V V^T),

with ``w`` the weight decay. Every complement eigenvalue of ``C`` (data curvature plus ``w``) lies within
:math:`\\pm\\min|\\lambda_{kept}|` and, for trained networks, sits in the spectrum's bulk near ``w``
(Sagun et al. 2017; Ghorbani, Krishnan & Xiao, ICML 2019): we take the data curvature there to be zero, so
the complement's curvature is exactly the part of the objective known in every direction, ``w``. This is
pyDVL's Arnoldi inverse (which drops the complement entirely) plus the complement term, and it equals the
exact damped inverse when the data curvature has rank ``<= r``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from tqdm.auto import tqdm

from hessview.engine.inverse import LowRankInverse

__all__ = ["LowRankInverse", "top_eigenpairs"]


def top_eigenpairs(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n_params: int,
    rank: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    tol: float = 1e-6,
    seed: int = 0,
    krylov_dim: int | None = None,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``rank`` eigenpairs of largest :math:`|\\lambda|` of a symmetric operator given by ``matvec``.

    Returns eigenvalues in ascending order and the eigenvectors as columns ``(P, rank)``, on ``device``
    (where ``matvec`` takes and returns its vectors; ARPACK itself runs on the CPU); the Lanczos
    start vector is drawn from ``seed``. ``krylov_dim`` is ARPACK's ``ncv``, the Lanczos vectors kept
    between restarts; the default ``min(P, max(4 rank, 20))`` needs fewer products than ARPACK's
    ``max(2 rank + 1, 20)`` when the wanted eigenvalues reach into the spectrum's bulk: for the top 10 of
    the scale benchmark's 103k-parameter CNN on 1,000 lattices, 112 products at ``ncv`` 40 against 143 at 21
    (113 to 118 for 30 to 50, 146 at 60).

    >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    >>> lam, V = top_eigenpairs(lambda v: A @ v, 10, 3)
    >>> lam.round(decimals=8)
    tensor([ 8.,  9., 10.], dtype=torch.float64)
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < n_params:
        raise ValueError(f"rank must be an integer in [1, {n_params - 1}] (P - 1), not {rank!r}")
    if krylov_dim is None:
        krylov_dim = min(n_params, max(4 * rank, 20))
    if isinstance(krylov_dim, bool) or not isinstance(krylov_dim, int) or not rank < krylov_dim <= n_params:
        raise ValueError(
            f"krylov_dim must be an integer in [{rank + 1}, {n_params}] (rank + 1 to P), not {krylov_dim!r}"
        )
    bar = tqdm(desc="Lanczos products", disable=not progress, leave=False)

    def apply(x: np.ndarray) -> np.ndarray:
        bar.update(1)
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)).to(device, dtype)
        return matvec(v).detach().cpu().to(torch.float64).numpy()

    operator = LinearOperator((n_params, n_params), matvec=apply, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(n_params)
    try:
        lam, V = eigsh(operator, k=rank, which="LM", tol=tol, v0=start, ncv=krylov_dim)
    except ArpackNoConvergence as err:
        raise RuntimeError(
            f"Lanczos found only {len(err.eigenvalues)} of {rank} eigenpairs to tol={tol:g}; "
            "use a smaller rank or a larger lanczos_tol"
        ) from err
    finally:
        bar.close()
    order = np.argsort(lam)
    V = torch.from_numpy(V[:, order]).to(device, dtype).contiguous()
    return torch.from_numpy(lam[order]).to(device, dtype), V
