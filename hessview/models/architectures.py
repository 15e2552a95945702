"""Network architectures: the paper's 740-parameter 1D CNN and a small CNN for Ising configurations."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional


class Conv1dIm2col(nn.Conv1d):
    """``nn.Conv1d`` (stride 1, zero padding) computed as an im2col matrix product.

    Same parameters and results as ``nn.Conv1d``; exists because PyTorch's CPU float64 convolution with
    one input channel falls back to a path about 50x slower than this product. The engine's Hessian
    (forward-over-reverse) differentiates it; vmapped reverse-over-reverse products could not
    (``unfold_backward`` has no batching rule).

    >>> conv = Conv1dIm2col(2, 3, kernel_size=4, padding=1).double()
    >>> x = torch.randn(5, 2, 20, dtype=torch.float64)
    >>> bool(torch.allclose(conv(x), functional.conv1d(x, conv.weight, conv.bias, padding=1)))
    True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the convolution of ``x`` of shape ``(n, C_in, length)``."""
        pad = self.padding[0]
        if pad:
            x = functional.pad(x, (pad, pad))
        columns = x.unfold(-1, self.kernel_size[0], 1).transpose(-3, -2).flatten(-2)
        return (columns @ self.weight.flatten(1).T + self.bias).transpose(-1, -2)


class LogSumExpPool1d(nn.Module):
    r"""A smooth max-pool: :math:`y = t \log \frac1k \sum_{i \in \text{window}} e^{x_i / t}` (stride ``k``).

    The log of the mean of exponentials over each window of ``k`` values lies between their mean
    (:math:`t \to \infty`) and their maximum (:math:`t \to 0`), and is infinitely differentiable, so a
    network built from it has a well-defined Hessian everywhere (a max-pool has kinks where two inputs
    tie).  It has no parameters.  Like ``nn.MaxPool1d(k)``, a trailing remainder shorter than ``k`` is
    dropped.

    >>> pool = LogSumExpPool1d(2, temperature=1.0)
    >>> pool(torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))
    tensor([[[0., 1.]]])
    """

    def __init__(self, kernel_size: int, temperature: float = 0.1):
        super().__init__()
        if not kernel_size >= 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kernel_size = int(kernel_size)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool the last axis of ``x`` in windows of ``kernel_size``."""
        k, t = self.kernel_size, self.temperature
        windows = x[..., : x.shape[-1] // k * k].unflatten(-1, (-1, k))
        return t * (torch.logsumexp(windows / t, dim=-1) - math.log(k))

    def extra_repr(self) -> str:  # noqa: D102 (nn.Module's)
        return f"kernel_size={self.kernel_size}, temperature={self.temperature}"


class CNN1D_tiny_ED(nn.Module):  # noqa: N801 (the paper's name)
    """The 740-parameter CNN of Dawid et al., MLST 3, 015002 (2022), for 924-amplitude ground states.

    Conv1d(1->5, k=15, pad 1) -> MaxPool(4) -> ReLU; Conv1d(5->8, k=5) -> MaxPool(4) -> ReLU;
    Conv1d(8->10, k=2, pad 1) -> AvgPool(4) -> ReLU; flatten (140) -> Dropout(0.5) -> Linear(140->2).
    Input ``(n, 1, 924)``; output ``(n, 2)`` logits.  Layer names match the published state_dict.

    ``smooth=True`` is hessview's smooth variant (not the paper's): every ReLU becomes a softplus and
    every max-pool a :class:`LogSumExpPool1d` with temperature ``pool_temperature``.  The parameters and
    their names are the same, so either variant loads the other's state_dict; only the function differs.
    ReLU kinks and max-pool ties make the paper's network piecewise smooth: a minimum may sit on a kink,
    where the gradient never vanishes and the Hessian is not defined, so influence functions and RUE
    (which assume a twice-differentiable minimum) are on firmer ground with the smooth variant.

    >>> model = CNN1D_tiny_ED()
    >>> sum(p.numel() for p in model.parameters()), tuple(model(torch.zeros(3, 1, 924)).shape)
    (740, (3, 2))
    >>> smooth = CNN1D_tiny_ED(smooth=True)
    >>> _ = smooth.load_state_dict(model.state_dict()); tuple(smooth(torch.zeros(3, 1, 924)).shape)
    (3, 2)
    """

    def __init__(self, num_classes: int = 2, *, smooth: bool = False, pool_temperature: float = 0.1):
        super().__init__()
        if not isinstance(smooth, bool):
            raise TypeError(f"smooth must be True or False, got {smooth!r}")
        self.smooth = smooth

        def pool(k):
            return LogSumExpPool1d(k, pool_temperature) if smooth else nn.MaxPool1d(k)

        def act():
            return nn.Softplus() if smooth else nn.ReLU()

        self.layer1 = nn.Sequential(Conv1dIm2col(1, 5, kernel_size=15, padding=1), pool(4), act())
        self.layer2 = nn.Sequential(nn.Conv1d(5, 8, kernel_size=5), pool(4), act())
        self.layer3 = nn.Sequential(nn.Conv1d(8, 10, kernel_size=2, padding=1), nn.AvgPool1d(4), act())
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(140, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for inputs of shape ``(n, 1, 924)``."""
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc1(self.dropout(x.flatten(1)))


class IsingCNN(nn.Module):
    """A small CNN for ``L x L`` Ising configurations (periodic lattice), 2 classes.

    Conv2d(1->4, 3x3, circular padding) -> Softplus -> mean over the lattice -> Linear(4->2): 50
    parameters.  A filter that sums a 3x3 block fires on locally ordered regions of one sign, so the
    mean over the lattice measures local order, which tells the ordered from the disordered phase.
    Softplus rather than ReLU keeps the training objective smooth, so that it has true stationary
    points (a ReLU network's minimum may sit on a kink where the gradient never vanishes).  Accepts
    ``(n, L, L)`` or ``(n, 1, L, L)``.

    >>> model = IsingCNN(L=16)
    >>> sum(p.numel() for p in model.parameters()), tuple(model(torch.ones(5, 16, 16)).shape)
    (50, (5, 2))
    """

    def __init__(self, L: int = 16, channels: int = 4, num_classes: int = 2):
        super().__init__()
        if L < 3:
            raise ValueError(f"L must be >= 3, got {L}")
        self.L = L
        self.conv = nn.Conv2d(1, channels, kernel_size=3, padding=1, padding_mode="circular")
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for spins of shape ``(n, L, L)`` or ``(n, 1, L, L)``."""
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.shape[-2:] != (self.L, self.L):
            raise ValueError(f"expected {self.L}x{self.L} configurations, got {tuple(x.shape)}")
        return self.fc(functional.softplus(self.conv(x)).mean(dim=(-2, -1)))
