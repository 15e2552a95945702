"""Training samples whose loss curvature vanishes in float64, and a check that leaving them out is exact.

For softmax cross-entropy the Hessian of one sample's loss is

.. math:: H_j = J_j^\\top (\\operatorname{diag} p_j - p_j p_j^\\top) J_j
    + \\sum_k (p_{jk} - [k = y_j]) \\nabla^2_\\theta f_{jk},

and every entry of :math:`\\operatorname{diag} p - p p^\\top` and of :math:`p - e_y` is at most
:math:`\\varepsilon_j = 1 - p_{j y_j}` in absolute value. A sample the model fits with
:math:`\\varepsilon_j` below float64's machine epsilon therefore adds nothing to the Hessian (or the GGN)
that a float64 sum could hold, unless its Jacobians are huge. Well-trained classifiers fit most of their
samples that well, so the exact Hessian is assembled from the others only, and the omission is checked:
Hutchinson's estimate :math:`\\lVert C \\rVert_F^2 \\approx \\operatorname{mean}_v \\lVert C v \\rVert^2` over
Rademacher vectors :math:`v` (Hutchinson, Commun. Stat. Simul. 18, 1059 (1989)) of the left-out samples'
curvature must stay below ``rtol`` times the Frobenius norm of the rest; otherwise they are added after all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SATURATION = 2.0**-53  #: float64 unit roundoff: samples with ``1 - p(label)`` below it are left out
RTOL = 1e-12  #: largest accepted ||left-out curvature||_F / ||kept curvature||_F
N_PROBES = 4


def saturated(probabilities: torch.Tensor, y: torch.Tensor, threshold: float = SATURATION) -> torch.Tensor:
    """Mask of the samples with ``1 - p(label) < threshold``: ``probabilities`` ``(n, C)``, labels ``(n,)``.

    >>> p = torch.tensor([[1.0, 0.0], [0.7, 0.3], [0.0, 1.0]], dtype=torch.float64)
    >>> saturated(p, torch.tensor([0, 0, 0])).tolist()
    [True, False, False]
    """
    return (1 - probabilities.gather(1, y[:, None])[:, 0]) < threshold


def frobenius_estimate(
    matmat: Callable[[torch.Tensor], torch.Tensor],
    n_params: int,
    *,
    dtype: torch.dtype = torch.float64,
    n_probes: int = N_PROBES,
    seed: int = 0,
) -> float:
    """Hutchinson's estimate of ``||C||_F``; ``matmat(V)`` returns ``C v`` for each row ``v`` of ``V``.

    >>> C = torch.diag(torch.tensor([3.0, 4.0], dtype=torch.float64))
    >>> frobenius_estimate(lambda V: V @ C, 2)  # exact for a diagonal matrix and sign vectors
    5.0
    """
    generator = torch.Generator().manual_seed(seed)
    probes = torch.randint(0, 2, (n_probes, n_params), generator=generator).to(dtype) * 2 - 1
    return float((matmat(probes).square().sum(dim=1).mean()).sqrt())
