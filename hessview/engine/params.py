"""A model as a pure function of one flat parameter vector.

The engine works with ``theta``, the concatenation of every trainable parameter, so that the Hessian is a
plain ``P x P`` matrix and per-sample gradients are rows of an ``n x P`` matrix.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn
from torch.func import functional_call


class FlatModel:
    """Wrap ``model`` so that ``flat(theta, X)`` evaluates it at the flat parameter vector ``theta``.

    The model is deep-copied, cast to ``dtype`` and put in eval mode (dropout off, batch-norm statistics
    frozen); the caller's model is never modified. Non-trainable parameters and buffers are held fixed.

    >>> flat = FlatModel(nn.Linear(3, 2), torch.float64)
    >>> flat.n_params
    8
    >>> flat(flat.theta, torch.zeros(4, 3, dtype=torch.float64)).shape
    torch.Size([4, 2])
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.module = copy.deepcopy(model).to(dtype).eval()
        trainable = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.numels = [p.numel() for _, p in trainable]
        self.fixed = {n: p.detach() for n, p in self.module.named_parameters() if not p.requires_grad}
        self.fixed.update(dict(self.module.named_buffers()))
        self.theta = (
            torch.cat([p.detach().reshape(-1) for _, p in trainable])
            if trainable
            else torch.empty(0, dtype=dtype)
        )
        self.dtype = dtype
        self.device = self.theta.device

    @property
    def n_params(self) -> int:
        """Number of trainable parameters ``P``."""
        return int(self.theta.numel())

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector into the model's named parameter tensors."""
        pieces = torch.split(theta, self.numels)
        return {n: t.view(s) for n, t, s in zip(self.names, pieces, self.shapes, strict=True)}

    def __call__(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Model outputs for inputs ``X`` (with batch dimension) at parameters ``theta``."""
        return functional_call(self.module, {**self.unflatten(theta), **self.fixed}, (X,))

    def fingerprint(self) -> str:
        """SHA-256 of the architecture, every parameter and buffer value, and which parameters are frozen."""
        digest = hashlib.sha256(repr(self.module).encode())
        frozen = sorted(n for n, p in self.module.named_parameters() if not p.requires_grad)
        if frozen:  # (all-trainable models keep the fingerprint they had before frozen ones were told apart)
            digest.update(("frozen: " + " ".join(frozen)).encode())
        for name, tensor in sorted(self.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
        return digest.hexdigest()
