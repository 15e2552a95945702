"""The one place the landscape takes its Hessians from (switch to the shared engine when it lands)."""

from __future__ import annotations

import torch


def flat_hessian(func, theta: torch.Tensor) -> torch.Tensor:
    """Exact Hessian ``(P, P)`` of the scalar function ``func`` at the flat vector ``theta``."""
    return torch.func.hessian(func)(theta)
