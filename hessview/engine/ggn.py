"""Generalised Gauss-Newton (GGN) curvature, positive semi-definite by construction.

.. math:: G = \\frac{1}{n} \\sum_j J_j^T H^{out}_j J_j,

with :math:`J_j = \\partial f(x_j; \\theta) / \\partial \\theta` the ``K x P`` output Jacobian and
:math:`H^{out}_j = \\partial^2 L / \\partial f^2` the loss Hessian with respect to the outputs:
:math:`\\operatorname{diag}(p) - p p^T` for softmax cross-entropy (``p`` the predicted probabilities),
:math:`2 I` for the summed squared error. Both are positive semi-definite, hence so is ``G``; it drops the
term :math:`\\sum_k \\partial L/\\partial f_k \\, \\nabla^2 f_k` of the Hessian (Schraudolph, Neural
Computation 14, 1723 (2002); Martens, JMLR 21, 1 (2020)). Products :math:`G v` use a vmapped
Jacobian-vector product (as the transpose of a vector-Jacobian product), the output Hessian, and one
vector-Jacobian product.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import vjp, vmap

from hessview.engine.losses import get_loss

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def output_hessian_product(loss, outputs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:math:`H^{out} u` per sample, for ``outputs`` and ``u`` of shape ``(n, ...)``.

    >>> out = torch.zeros(1, 2, dtype=torch.float64)  # p = (1/2, 1/2)
    >>> output_hessian_product("cross_entropy", out, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    tensor([[ 0.2500, -0.2500]], dtype=torch.float64)
    """
    return get_loss(loss).output_hessian_product(outputs, u)


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
    # J v by the double-vjp trick: u -> J^T u is linear, so its own vjp with cotangent v is J v
    _, push = vjp(lambda u: pullback(u)[0], torch.zeros_like(out))
    jacobian_products = vmap(push)(V)[0]
    weighted = output_hessian_product(loss, out.detach().unsqueeze(0), jacobian_products)
    return scale * vmap(pullback)(weighted)[0].detach()
