"""The regularised loss of a single-hidden-layer tanh network over its flat weight vector.

The form the Wales group uses for loss landscapes of neural networks (GMIN's ``NN`` potential;
Niroomand & Wales, arXiv:2304.02381):

.. math::

    L(\\theta) = -\\frac{1}{n}\\sum_{k=1}^{n} \\log \\operatorname{softmax}\\big(W_2 \\tanh(W_1 x_k + b_1)
    + b_2\\big)_{y_k} + \\frac{\\lambda}{2}\\lVert\\theta\\rVert^2,

with :math:`\\theta = (W_1, b_1, W_2, b_2)` flattened in that order (row-major). Everything is float64.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # threadpoolctl only saves time; without it BLAS keeps its own thread count

    def threadpool_limits(limits):  # noqa: D103
        return contextlib.nullcontext()


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch and BLAS on one thread inside the block, restoring the previous settings after.

    The arrays here are tiny: more threads only add overhead (scipy's L-BFGS-B spends most of its time
    waking OpenBLAS threads otherwise) and contend with other processes.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class TanhNetwork:
    """Shape of the network: ``n_inputs -> hidden (tanh) -> n_classes (softmax)``.

    >>> net = TanhNetwork(n_inputs=3, hidden=2, n_classes=2)
    >>> net.n_params  # 2*3 + 2 + 2*2 + 2
    14
    """

    n_inputs: int
    hidden: int
    n_classes: int

    @property
    def n_params(self) -> int:
        """Number of weights and biases."""
        return self.hidden * (self.n_inputs + 1) + self.n_classes * (self.hidden + 1)

    def unpack(self, theta):
        """Split a flat vector (or a batch ``(..., P)``) into ``W1, b1, W2, b2``."""
        h, d, c = self.hidden, self.n_inputs, self.n_classes
        lead = theta.shape[:-1]
        i = 0
        w1 = theta[..., i : i + h * d].reshape(*lead, h, d)
        i += h * d
        b1 = theta[..., i : i + h]
        i += h
        w2 = theta[..., i : i + c * h].reshape(*lead, c, h)
        i += c * h
        b2 = theta[..., i : i + c]
        return w1, b1, w2, b2

    def pack(self, w1, b1, w2, b2) -> np.ndarray:
        """Inverse of :meth:`unpack` for numpy arrays of one network."""
        return np.concatenate([np.ravel(w1), np.ravel(b1), np.ravel(w2), np.ravel(b2)])

    def hidden_unit_vectors(self, theta: np.ndarray) -> np.ndarray:
        """Each hidden unit's own weights ``(W1[j], b1[j], W2[:, j])`` as rows of an ``(h, d+1+c)`` array.

        These rows are what the network's symmetries permute (and negate, for tanh sign flips).
        """
        w1, b1, w2, _ = self.unpack(np.asarray(theta))
        return np.concatenate([w1, b1[:, None], w2.T], axis=1)

    def from_hidden_unit_vectors(self, units: np.ndarray, b2: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`hidden_unit_vectors` (the output bias is passed separately)."""
        d = self.n_inputs
        return self.pack(units[:, :d], units[:, d], units[:, d + 1 :].T, b2)

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs before the softmax; ``theta`` may carry leading batch dimensions."""
        w1, b1, w2, b2 = self.unpack(theta)
        hidden = torch.tanh(torch.einsum("...hd,nd->...nh", w1, x) + b1[..., None, :])
        return torch.einsum("...ch,...nh->...nc", w2, hidden) + b2[..., None, :]


#: networks with more weights than this use Hessian-vector products (``hessian="auto"``). A transition-state
#: search is faster with the dense Hessian up to about a thousand weights and about eight times slower at
#: two thousand (``benchmarks/bench_landscape.py --hvp``, benchmarks/RESULTS.md); the dense path also keeps
#: the full spectrum that kinetics and thermodynamics need.
DENSE_MAX_PARAMS = 1500

HESSIAN_MODES = ("auto", "dense", "hvp")


def resolve_hessian_mode(hessian: str, n_params: int) -> str:
    """``"dense"`` or ``"hvp"`` for the requested ``hessian`` mode and a network of ``n_params`` weights.

    >>> [resolve_hessian_mode(mode, n) for mode, n in [("auto", 1000), ("auto", 5000), ("hvp", 10)]]
    ['dense', 'hvp', 'hvp']
    """
    if not isinstance(hessian, str) or hessian not in HESSIAN_MODES:
        raise ValueError(f"hessian must be one of {HESSIAN_MODES}, got {hessian!r}")
    if hessian == "auto":
        return "dense" if n_params <= DENSE_MAX_PARAMS else "hvp"
    return hessian


class RegularisedLoss:
    """Mean softmax cross-entropy plus ``weight_decay / 2 * ||theta||^2`` on fixed data.

    Args:
        network: the network's shape.
        X: inputs ``(n, n_inputs)``.
        y: integer class labels ``(n,)``.
        weight_decay: the L2 coefficient :math:`\\lambda \\ge 0`.
        hessian: how curvature is computed: ``"dense"`` (the exact ``P x P`` Hessian and its full
            eigen-decomposition), ``"hvp"`` (Hessian-vector products only: Lanczos for the lowest
            eigenpairs, Krylov solves for Newton steps; see :mod:`hessview.landscape.krylov`) or ``"auto"``
            (dense up to :data:`DENSE_MAX_PARAMS` weights). The resolved mode is ``hessian_mode``.
    """

    def __init__(
        self, network: TanhNetwork, X: np.ndarray, y: np.ndarray, weight_decay: float, hessian: str = "auto"
    ):
        self.hessian_mode = resolve_hessian_mode(hessian, network.n_params)
        self.network = network
        self.x = torch.as_tensor(np.asarray(X, dtype=np.float64))
        self.y = torch.as_tensor(np.asarray(y, dtype=np.int64))
        self.weight_decay = float(weight_decay)
        self._onehot = torch.nn.functional.one_hot(self.y, network.n_classes).to(torch.float64)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        """Loss of one flat vector or a batch ``(B, P)`` of them (returns shape ``theta.shape[:-1]``)."""
        logits = self.network.logits(theta, self.x)
        log_p = torch.log_softmax(logits, dim=-1)
        picked = torch.gather(log_p, -1, self.y.expand(*logits.shape[:-1]).unsqueeze(-1))
        return -picked.squeeze(-1).mean(-1) + 0.5 * self.weight_decay * (theta * theta).sum(-1)

    def value(self, theta: np.ndarray) -> float:
        """Loss at a numpy point."""
        with torch.no_grad():
            return float(self(torch.as_tensor(theta, dtype=torch.float64)))

    def _value_and_gradient(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and its gradient by the chain rule written out (backpropagation without a graph).

        With :math:`a = \\tanh(W_1 x + b_1)`, :math:`\\delta = (\\operatorname{softmax} - e_y)/n`:
        :math:`\\partial W_2 = \\delta^\\top a`, :math:`\\partial b_2 = \\sum \\delta`,
        :math:`\\partial W_1 = ((\\delta W_2) \\odot (1 - a^2))^\\top x`, plus :math:`\\lambda\\theta`.
        Several times faster than autograd for these tiny tensors; the tests check it against autograd.
        """
        w1, b1, w2, b2 = self.network.unpack(theta)
        hidden = torch.tanh(self.x @ w1.transpose(-1, -2) + b1[..., None, :])
        logits = hidden @ w2.transpose(-1, -2) + b2[..., None, :]
        log_p = torch.log_softmax(logits, dim=-1)
        n = self.x.shape[0]
        onehot = self._onehot
        value = -(log_p * onehot).sum((-1, -2)) / n + 0.5 * self.weight_decay * (theta * theta).sum(-1)
        delta = (torch.exp(log_p) - onehot) / n
        g_w2 = delta.transpose(-1, -2) @ hidden
        g_b2 = delta.sum(-2)
        d_z = (delta @ w2) * (1.0 - hidden * hidden)
        g_w1 = d_z.transpose(-1, -2) @ self.x
        g_b1 = d_z.sum(-2)
        lead = theta.shape[:-1]
        grad = (
            torch.cat([g_w1.reshape(*lead, -1), g_b1, g_w2.reshape(*lead, -1), g_b2], dim=-1)
            + self.weight_decay * theta
        )
        return value, grad

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and gradient at a numpy point (the interface scipy's optimisers expect)."""
        value, grad = self._value_and_gradient(torch.from_numpy(np.asarray(theta, dtype=np.float64)))
        return float(value), grad.numpy()

    def batch_value_and_gradient(self, thetas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Losses ``(B,)`` and gradients ``(B, P)`` of a batch of independent points."""
        values, grads = self._value_and_gradient(torch.from_numpy(np.asarray(thetas, np.float64)))
        return values.numpy(), grads.numpy()

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        """Exact Hessian ``(P, P)`` at a numpy point.

        Forward-mode differentiation (``torch.func.jacfwd``) of the closed-form gradient of
        :meth:`_value_and_gradient`: exact to round-off, and about ten times faster for these tiny
        networks than nested reverse mode (the tests check it against ``torch.func.hessian``).
        """
        h = torch.func.jacfwd(lambda t: self._value_and_gradient(t)[1])(
            torch.as_tensor(np.asarray(theta, dtype=np.float64))
        )
        return 0.5 * (h + h.T).detach().numpy()

    def hvp(self, theta: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Hessian-vector products :math:`H v` at a numpy point for ``vectors`` ``(P,)`` or ``(P, m)``.

        Pearlmutter's :math:`\\mathcal{R}` operator (Neural Comput. 6, 147 (1994)), the directional
        derivative :math:`H v = \\frac{d}{d\\epsilon}\\nabla L(\\theta + \\epsilon v)|_{\\epsilon=0}`,
        applied by hand to the closed-form gradient of :meth:`_value_and_gradient`. With
        :math:`v = (V_1, c_1, V_2, c_2)`, :math:`z = W_1 x + b_1`, :math:`a = \\tanh z`,
        :math:`o = W_2 a + b_2`, :math:`p = \\operatorname{softmax} o`:
        :math:`\\mathcal{R}z = V_1 x + c_1`, :math:`\\mathcal{R}a = (1 - a^2)\\mathcal{R}z`,
        :math:`\\mathcal{R}o = W_2\\mathcal{R}a + V_2 a + c_2`,
        :math:`\\mathcal{R}\\delta = p \\odot (\\mathcal{R}o - p^\\top\\mathcal{R}o)/n`, then the
        gradient formulas differentiated by the product rule, plus :math:`\\lambda v`. Exact to round-off
        (the tests check it against autograd), costs about two gradient evaluations per vector, and never
        forms the ``P x P`` matrix. Several vectors are handled in one batched pass.
        """
        theta_t = torch.as_tensor(np.asarray(theta, dtype=np.float64))
        v = torch.as_tensor(np.asarray(vectors, dtype=np.float64))
        single = v.ndim == 1
        vt = v[None, :] if single else v.T  # (m, P)
        w1, b1, w2, b2 = self.network.unpack(theta_t)
        v1, c1, v2, c2 = self.network.unpack(vt)
        x, n = self.x, self.x.shape[0]
        hidden = torch.tanh(x @ w1.T + b1)  # (n, h)
        log_p = torch.log_softmax(hidden @ w2.T + b2, dim=-1)
        p = torch.exp(log_p)  # (n, c)
        delta = (p - self._onehot) / n
        slope = 1.0 - hidden * hidden
        r_hidden = slope * (torch.einsum("mhd,nd->mnh", v1, x) + c1[:, None, :])  # (m, n, h)
        r_out = r_hidden @ w2.T + torch.einsum("mch,nh->mnc", v2, hidden) + c2[:, None, :]
        r_delta = p * (r_out - (p * r_out).sum(-1, keepdim=True)) / n  # (m, n, c)
        g_w2 = r_delta.transpose(-1, -2) @ hidden + torch.einsum("nc,mnh->mch", delta, r_hidden)
        g_b2 = r_delta.sum(-2)
        back = delta @ w2  # (n, h)
        r_dz = (
            r_delta @ w2 + torch.einsum("nc,mch->mnh", delta, v2)
        ) * slope - 2.0 * back * hidden * r_hidden
        g_w1 = r_dz.transpose(-1, -2) @ x
        g_b1 = r_dz.sum(-2)
        m = vt.shape[0]
        out = torch.cat([g_w1.reshape(m, -1), g_b1, g_w2.reshape(m, -1), g_b2], dim=-1)
        out = out + self.weight_decay * vt
        return out[0].numpy() if single else out.T.numpy()

    def predict_proba(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` of the network ``theta`` on inputs ``X``."""
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(X, dtype=np.float64))
            logits = self.network.logits(torch.as_tensor(theta, dtype=torch.float64), x)
            return torch.softmax(logits, dim=-1).numpy()
