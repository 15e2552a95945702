"""Per-sample losses the engine supports.

``cross_entropy``: :math:`L(x, y) = -\\log \\mathrm{softmax}(f(x))_y` for integer labels ``y``.
``mse``: :math:`L(x, y) = \\lVert f(x) - y \\rVert^2` summed over output dimensions (so the mean over
samples is the usual mean squared error for a single output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("cross_entropy", "mse")


def per_sample_loss(name: str, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Vector of per-sample losses for a batch of model ``outputs`` and targets ``y``.

    >>> out = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    >>> per_sample_loss("cross_entropy", out, torch.tensor([1]))  # log 2
    tensor([0.6931], dtype=torch.float64)
    >>> per_sample_loss("mse", torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([5.])
    """
    if name == "cross_entropy":
        return F.cross_entropy(outputs, y, reduction="none")
    diff = (outputs - y.reshape(outputs.shape)).reshape(outputs.shape[0], -1)
    return (diff**2).sum(dim=1)
