"""Generalised Gauss-Newton (GGN) curvature, positive semi-definite by construction.

.. math:: G = \\frac{1}{n} \\sum_j J_j^T H^{out}_j J_j,

with :math:`J_j = \\partial f(x_j; \\theta) / \\partial \\theta` the ``K x P`` output Jacobian and
:math:`H^{out}_j = \\partial^2 L / \\partial f^2` the loss Hessian with respect to the outputs:
:math:`\\operatorname{diag}(p) - p p^T` for softmax cross-entropy (``p`` the predicted probabilities),
:math:`2 I` for the summed squared error. Both are positive semi-definite, hence so is ``G``; it drops the
term :math:`\\sum_k \\partial L/\\partial f_k \\, \\nabla^2 f_k` of the Hessian (Schraudolph, Neural
Computation 14, 1723 (2002); Martens, JMLR 21, 1 (2020)). Products :math:`G v` use one vmapped
Jacobian-vector product (forward mode), the output Hessian, and one vector-Jacobian product (reverse mode).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import jvp, vjp, vmap

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def output_hessian_product(loss: str, outputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:math:`H^{out} u` per sample, for ``outputs`` and ``u`` of shape ``(n, ...)``.

    >>> out = torch.zeros(1, 2, dtype=torch.float64)  # p = (1/2, 1/2)
    >>> output_hessian_product("cross_entropy", out, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    tensor([[ 0.2500, -0.2500]], dtype=torch.float64)
    """
    if loss == "cross_entropy":
        p = torch.softmax(outputs, dim=-1)
        return p * u - p * (p * u).sum(dim=-1, keepdim=True)
    return 2.0 * u


def ggn_matmat(
    model: Model, theta: torch.Tensor, X: torch.Tensor, loss: str, V: torch.Tensor, scale: float
) -> torch.Tensor:
    """``scale * sum_j J_j^T H^{out}_j J_j v`` for every row ``v`` of ``V`` ``(k, P)``; returns ``(k, P)``.

    >>> X = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    >>> linear = lambda t, x: x @ t[:, None]  # f = X theta, mse: G = 2 X^T X
    >>> ggn_matmat(linear, torch.zeros(2, dtype=torch.float64), X, "mse", torch.eye(2, dtype=X.dtype), 1.0)
    tensor([[ 2.,  4.],
            [ 4., 10.]], dtype=torch.float64)
    """

    def outputs(t):
        return model(t, X)

    out, pullback = vjp(outputs, theta)
    jacobian_products = vmap(lambda v: jvp(outputs, (theta,), (v,))[1])(V)
    weighted = output_hessian_product(loss, out.detach().unsqueeze(0), jacobian_products)
    return scale * vmap(pullback)(weighted)[0].detach()


def flat_ggn(
    model: Model, theta: torch.Tensor, X: torch.Tensor, loss: str, scale: float, *, chunk_size=None
) -> torch.Tensor:
    """The dense ``P x P`` GGN ``scale * sum_j J_j^T H^{out}_j J_j``, ``chunk_size`` rows per pass."""
    n = theta.numel()
    chunk = n if chunk_size is None else max(1, int(chunk_size))
    eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
    rows = torch.cat(
        [ggn_matmat(model, theta, X, loss, eye[i : i + chunk], scale) for i in range(0, n, chunk)]
    )
    return (rows + rows.T) / 2
