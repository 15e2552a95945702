"""Dense curvature matrices: the exact Hessian block row by block row, and the GGN from per-sample Jacobians.

**Hessian.** The parameters are split into groups ``theta_1, ..., theta_G`` (the parameter tensors of one
module each, in registration order). The upper block triangle of :math:`H = \\nabla^2 R` is

.. math:: H_{a, \\geq a} = \\partial_{\\theta_a} \\nabla_{\\theta_{\\geq a}} R,

and the lower one is its transpose (:math:`H` is symmetric). Block row :math:`a` is computed by
Hessian-vector products (forward over reverse, ``torch.func.jvp`` of ``torch.func.grad``, vmapped over the
unit vectors of group :math:`a`; Pearlmutter, Neural Computation 6, 147 (1994)) of a function in which
only :math:`\\theta_a` carries a tangent and only :math:`\\theta_{\\geq a}` is differentiated. Nothing is
approximated, for any model; what it saves depends on the order of the groups. When modules are registered
in the order they are applied (``nn.Sequential``, most models), the tangents start at module :math:`a` and
the backward pass stops there, so the rows of early layers, whose activations are largest, do the most
work and the rows of the head almost none. Row :math:`i` of a product-by-product Hessian instead pays a
full forward tangent and a full backward pass through every layer for every :math:`i`.

**Input layer.** When the first parameter group is an ``nn.Linear`` applied once to an input that no
parameter acts on (an MLP's first layer, after ``nn.Flatten`` or not), the loss depends on its weights
only through the per-sample pre-activations :math:`a_s = W \\tilde x_s` (:math:`\\tilde x_s = (x_s, 1)`
with a bias), so with :math:`\\ell_s` the sample's loss and :math:`\\phi` the later parameters

.. math:: H_{WW} = \\sum_s (\\tilde x_s \\tilde x_s^T) \\otimes \\partial^2_{a_s a_s} \\ell_s, \\qquad
          H_{W\\phi} = \\sum_s \\tilde x_s \\otimes \\partial^2_{a_s \\phi} \\ell_s,

exact (the Kronecker structure of a linear layer's curvature, as in Martens & Grosse, ICML 2015, without
their approximation: nothing is averaged before the product). The second derivatives in :math:`a_s` come
from ``h + P_phi`` products of the network after the layer (``h`` its outputs), instead of ``h (d + 1)``
products of the whole network: on the 64-7-10 digits MLP 87 instead of 535, 3.6x less time for the
Hessian. It assumes samples do not interact (no batch statistics in the forward pass): one Hessian-vector
product of the whole objective with a seeded random vector checks the result, and the block rows are used
when it disagrees or when the layer does not qualify.

**GGN.** :math:`G = \\sum_j J_j^T H^{out}_j J_j` (scaled) is one matrix product of the per-sample output
Jacobians :math:`J_j` (``torch.func.jacrev``, vmapped over samples) with the output Hessian applied to
them (the :class:`~hessview.engine.losses.Loss` object's ``output_hessian_product``): the work of
``K`` backward passes per sample for ``K`` outputs, not ``P`` curvature-vector products. An input
``nn.Linear`` gets the same Kronecker form as in the Hessian, with :math:`B_s^T H^{out}_s B_s`
(:math:`B_s = \\partial f_s / \\partial a_s`) in place of :math:`\\partial^2_{a_s a_s} \\ell_s`: Jacobians
of ``h + P_phi`` columns, checked by one GGN-vector product (digits MLP: 4x less time, equal to 4e-16).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap
from tqdm.auto import tqdm

from hessview.engine.ggn import ggn_matmat
from hessview.engine.losses import get_loss
from hessview.engine.params import FlatModel

#: bytes of (vectors x samples x widest activation from the group's module on) per pass of the block rows:
#: on the paper's CNN 80 first-layer rows x 3 samples (4,560 activations each) cost 1.3x less per row and
#: sample than 80 x 10, while the later layers' groups, with smaller tangents, run whole shards per pass
HESSIAN_PASS_BYTES = 1e7
#: bytes of per-sample Jacobians (samples x outputs x P) held at once for the dense GGN
JACOBIAN_BYTES = 5e7


def activation_widths(flat: FlatModel, x: torch.Tensor, groups: list[tuple[int, int]]) -> list[int]:
    """Per group, the largest output (elements per sample) of any module called from the group's module on.

    The tangents of a group's block rows live in those activations, so this sets how many samples a pass can
    hold. Measured by hooks on one forward pass of one sample ``x``; a group whose module is never seen as
    called (functional parameters) gets the widest activation overall, or the input size if none is seen.

    >>> from torch import nn
    >>> flat = FlatModel(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)), torch.float64)
    >>> activation_widths(flat, torch.zeros(3, dtype=torch.float64), parameter_groups(flat))
    [8, 2]
    """
    events: list[tuple[str, int]] = []  # (module name, -1 when it starts, else its output size)
    handles = []

    def size(output) -> int:
        if isinstance(output, torch.Tensor):
            return output.numel()
        if isinstance(output, (tuple, list)):
            return sum(size(item) for item in output)
        return 0

    for name, module in flat.module.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, a, name=name: events.append((name, -1))))
        handles.append(
            module.register_forward_hook(lambda m, a, out, name=name: events.append((name, size(out))))
        )
    try:
        with torch.no_grad():
            flat(flat.theta, x.unsqueeze(0))
    finally:
        for handle in handles:
            handle.remove()
    fallback = max([numel for _, numel in events] + [x.numel()])
    widths = []
    for first, _ in groups:
        owner = flat.names[first].rpartition(".")[0]
        starts = [i for i, (name, numel) in enumerate(events) if name == owner and numel < 0]
        later = [numel for _, numel in events[starts[0] :]] if starts else []
        widths.append(max(later + [1]) if starts else fallback)
    return widths


def parameter_groups(flat: FlatModel) -> list[tuple[int, int]]:
    """``(first, stop)`` ranges of ``flat``'s parameter tensors, one per module (consecutive tensors).

    >>> from torch import nn
    >>> flat = FlatModel(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.float64)
    >>> flat.names, parameter_groups(flat)
    (['0.weight', '0.bias', '2.weight', '2.bias'], [(0, 2), (2, 4)])
    """
    groups: list[tuple[int, int]] = []
    owner = None
    for i, name in enumerate(flat.names):
        module = name.rpartition(".")[0]
        if groups and module == owner:
            groups[-1] = (groups[-1][0], i + 1)
        else:
            groups.append((i, i + 1))
        owner = module
    return groups


class _BlockRows:
    """Products of the Hessian of ``loss_sum(flat(theta, X), y)`` restricted to one parameter group."""

    def __init__(self, flat: FlatModel, loss_sum: Callable, first: int, stop: int):
        self.flat, self.loss_sum = flat, loss_sum
        self.first, self.stop = first, stop
        offsets = [0]
        for numel in flat.numels:
            offsets.append(offsets[-1] + numel)
        self.start, self.end = offsets[first], offsets[stop]  # the group's slice of theta
        pieces = torch.split(flat.theta, flat.numels)
        self.head = {flat.names[i]: pieces[i].view(flat.shapes[i]) for i in range(first)}
        self.own = flat.theta[self.start : self.end]
        self.tail = flat.theta[self.end :]

    def _unflatten(self, vector: torch.Tensor, first: int, stop: int) -> dict[str, torch.Tensor]:
        pieces = torch.split(vector, self.flat.numels[first:stop])
        return {
            self.flat.names[i]: piece.view(self.flat.shapes[i])
            for i, piece in zip(range(first, stop), pieces, strict=True)
        }

    def _objective(self, own, tail, X, y):
        params = {**self.head, **self._unflatten(own, self.first, self.stop), **self.flat.fixed}
        params.update(self._unflatten(tail, self.stop, len(self.flat.names)))
        return self.loss_sum(functional_call(self.flat.module, params, (X,)), y)

    def rows(self, V: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:math:`H_{a, \\geq a}` applied to the rows of ``V`` ``(k, P_a)``: ``(k, P - start)``."""
        if self.tail.numel():
            gradient = grad(self._objective, argnums=(0, 1))

            def product(v):
                _, (own, tail) = jvp(lambda o: gradient(o, self.tail, X, y), (self.own,), (v,))
                return torch.cat([own, tail])

        else:
            gradient = grad(self._objective)

            def product(v):
                return jvp(lambda o: gradient(o, self.tail, X, y), (self.own,), (v,))[1]

        return vmap(product)(V).detach()


class _Recorded(Exception):
    """Stops a forward pass once the input layer's input and output are recorded."""


class _InputLinear:
    """The first parameter group when it is an ``nn.Linear`` fed by the model's input (module docstring).

    :meth:`probe` returns ``None`` when the layer does not qualify: not ``nn.Linear``'s own forward, group
    other than its weight (and bias), not called exactly once, a parameterised module called before it, or
    an input that is not ``(n, d)`` or is passed by keyword.
    """

    def __init__(self, flat: FlatModel, loss_sum: Callable, layer: nn.Linear, stop: int):
        self.flat, self.loss_sum, self.layer, self.stop = flat, loss_sum, layer, stop
        self.own = sum(flat.numels[:stop])  # the layer's trainable entries lead theta
        self.bias = stop == 2  # a trainable bias (a frozen one is part of the fixed pre-activation)
        pieces = torch.split(flat.theta, flat.numels)
        self.params = {
            name: piece.view(shape)
            for name, piece, shape in zip(flat.names, pieces, flat.shapes, strict=True)
        }
        self.params.update(flat.fixed)
        self.tail = flat.theta[self.own :]

    @classmethod
    def probe(cls, flat: FlatModel, loss_sum: Callable, X: torch.Tensor, groups: list[tuple[int, int]]):
        first, stop = groups[0]
        owner = flat.names[first].rpartition(".")[0]
        layer = flat.module.get_submodule(owner)
        if type(layer).forward is not nn.Linear.forward:
            return None
        prefix = f"{owner}." if owner else ""
        expected = [f"{prefix}weight"] + ([f"{prefix}bias"] if layer.bias is not None else [])
        if flat.names[first:stop] not in (expected, expected[:1]):
            return None
        calls: list[str] = []
        owners = {name.rpartition(".")[0] for name in flat.names}
        handles = [
            module.register_forward_pre_hook(lambda m, a, name=name: calls.append(name))
            for name, module in flat.module.named_modules()
            if name in owners
        ]
        seen: list[torch.Tensor | None] = []
        handles.append(layer.register_forward_pre_hook(lambda m, a: seen.append(a[0] if a else None)))
        try:
            with torch.no_grad():
                flat(flat.theta, X[:2])
        finally:
            for handle in handles:
                handle.remove()
        if len(seen) != 1 or not calls or calls[0] != owner or calls.count(owner) != 1:
            return None
        if seen[0] is None or seen[0].dim() != 2 or seen[0].shape[0] != min(2, X.shape[0]):
            return None
        return cls(flat, loss_sum, layer, stop)

    def inputs(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's inputs ``x_s`` (with a column of ones for a trainable bias) and outputs ``a_s``."""
        seen: list[torch.Tensor] = []

        def record(module, args, out):
            seen.append((args[0], out.clone()))  # (a copy: nothing after the layer may change it in place)
            raise _Recorded  # the rest of the network is not needed: no activations of all of X beyond it

        handle = self.layer.register_forward_hook(record)
        try:
            with torch.no_grad():
                functional_call(self.flat.module, self.params, (X,))
        except _Recorded:
            pass
        finally:
            handle.remove()
        x, a = seen[0]
        if self.bias:
            x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        return x.detach(), a.detach()

    def _objective(self, a, tail, X, y):
        """The loss with the layer's output replaced by ``a`` and the later parameters by ``tail``."""
        return self.loss_sum(self._outputs(a, tail, X), y)

    def _outputs(self, a, tail, X):
        """The model's outputs with the layer's output replaced by ``a``, the later parameters by ``tail``."""
        numels = self.flat.numels[self.stop :]
        pieces = torch.split(tail, numels) if numels else []
        params = dict(self.params)
        for i, piece in zip(range(self.stop, len(self.flat.names)), pieces, strict=True):
            params[self.flat.names[i]] = piece.view(self.flat.shapes[i])
        handle = self.layer.register_forward_hook(lambda m, args, out: a.clone())  # (in-place activations)
        try:
            return functional_call(self.flat.module, params, (X,))
        finally:
            handle.remove()

    def products(self, Ta, Tt, a, X, y) -> tuple[torch.Tensor, torch.Tensor]:
        """Second derivatives of the objective in ``(a, tail)`` applied to tangents ``(Ta[k], Tt[k])``."""
        gradient = grad(self._objective, argnums=(0, 1))

        def product(ta, tt):
            return jvp(lambda a_, t_: gradient(a_, t_, X, y), (a, self.tail), (ta, tt))[1]

        da, dt = vmap(product)(Ta, Tt)
        return da.detach(), dt.detach()

    def _blocks(self, X):
        """The layer's inputs and outputs, the pairs ``j <= l`` and the three blocks to accumulate."""
        theta, h, tail = self.flat.theta, self.layer.out_features, self.tail.numel()
        x_all, a_all = self.inputs(X)
        e = x_all.shape[1]  # inputs per output, with the bias column
        upper = torch.triu_indices(e, e, device=theta.device)  # (j, l) pairs, j <= l: x_s x_s^T is symmetric
        Hxx = theta.new_zeros((upper.shape[1], h * h))  # sum_s (x_s x_s^T)_jl (second derivatives in a_s)_ik
        cross = theta.new_zeros((tail, h, e))  # sum_s (second derivatives in phi and a_s) x_s^T
        Htt = theta.new_zeros((tail, tail))
        return x_all, a_all, upper, Hxx, cross, Htt

    def hessian(
        self, X, y, *, row_chunk: int, pass_bytes: float, widths: list[int] | None = None
    ) -> torch.Tensor:
        """The exact ``P x P`` Hessian (module docstring), from ``h + P_phi`` products per sample pass.

        ``widths``: :func:`activation_widths` of the parameter groups, when the caller has them (the later
        groups' set the samples per pass).
        """
        theta = self.flat.theta
        if widths is None:
            widths = activation_widths(self.flat, X[0], parameter_groups(self.flat))
        n, tail = X.shape[0], self.tail.numel()
        h = self.layer.out_features
        x_all, a_all, upper, Hxx, cross, Htt = self._blocks(X)
        k_total = h + tail  # tangents: the h columns of a (every sample at once), then the tail's units
        width = max(widths[1:] + [h])
        for i in range(0, k_total, row_chunk):
            ks = torch.arange(i, min(i + row_chunk, k_total), device=theta.device)
            samples = even_size(n, max(1, int(pass_bytes // (len(ks) * width * theta.element_size()))))
            Tt = theta.new_zeros((len(ks), tail))
            rows = ks >= h
            Tt[rows.nonzero().squeeze(1), ks[rows] - h] = 1
            for j in range(0, n, samples):
                x, a = x_all[j : j + samples], a_all[j : j + samples]
                Ta = a.new_zeros((len(ks), *a.shape))
                Ta[(~rows).nonzero().squeeze(1), :, ks[~rows]] = 1
                da, dt = self.products(Ta, Tt, a, X[j : j + samples], y[j : j + samples])
                if (~rows).any():  # da[k, s, :] = d2 l_s / da_s da_s,k for the a-columns k (contiguous)
                    block = da[~rows].permute(1, 2, 0)  # (s, h, m)
                    _add_pairs(Hxx, upper, x, block, int(ks[0]), pass_bytes)
                if rows.any():
                    cross[ks[rows] - h] += torch.einsum("ksi,sj->kij", da[rows], x)
                    Htt[ks[rows] - h] += dt[rows]
        return self._assemble(Hxx, upper, cross, Htt, pass_bytes)

    def ggn(self, X, loss, scale: float, *, jacobian_bytes: float, pass_bytes: float) -> torch.Tensor:
        """The exact ``P x P`` GGN in the same Kronecker form, from per-sample Jacobians in ``(a_s, phi)``.

        With :math:`B_s = \\partial f_s / \\partial a_s` (``K x h``) and :math:`J^\\phi_s` (``K x P_phi``),
        :math:`G_{WW} = \\sum_s (\\tilde x_s \\tilde x_s^T) \\otimes B_s^T H^{out}_s B_s`,
        :math:`G_{W\\phi} = \\sum_s \\tilde x_s \\otimes B_s^T H^{out}_s J^\\phi_s` and
        :math:`G_{\\phi\\phi} = \\sum_s (J^\\phi_s)^T H^{out}_s J^\\phi_s`, all times ``scale``: Jacobians of
        ``h + P_phi`` columns instead of ``h (d + 1) + P_phi``.
        """
        theta, h, n, tail = self.flat.theta, self.layer.out_features, X.shape[0], self.tail.numel()
        x_all, a_all, upper, Hxx, cross, Htt = self._blocks(X)

        def outputs(a, t, x):
            return self._outputs(a.unsqueeze(0), t, x.unsqueeze(0))[0]

        jacobian = vmap(jacrev(outputs, argnums=(0, 1)), in_dims=(0, None, 0))
        n_outputs = self.flat(theta, X[:1])[0].numel()
        batch = max(1, int(jacobian_bytes // (n_outputs * (h + tail) * theta.element_size())))
        for i in range(0, n, batch):
            x, a, Xb = x_all[i : i + batch], a_all[i : i + batch], X[i : i + batch]
            Ja, Jt = (J.detach().reshape(len(x), n_outputs, -1) for J in jacobian(a, self.tail, Xb))
            out = self.flat(theta, Xb).detach()
            J = torch.cat([Ja, Jt], dim=2)  # (s, K, h + P_phi)
            HJ = vmap(loss.output_hessian_product, in_dims=(None, -1), out_dims=-1)(
                out, J.reshape(len(x), *out.shape[1:], -1)
            ).reshape(J.shape)
            _add_pairs(Hxx, upper, x, torch.einsum("ski,skm->sim", Ja, HJ[:, :, :h]), 0, pass_bytes)
            cross += torch.einsum("ski,skr,sj->rij", Ja, HJ[:, :, h:], x)
            Htt += torch.einsum("skr,skq->rq", Jt, HJ[:, :, h:])
        for block in (Hxx, cross, Htt):
            block *= scale
        return self._assemble(Hxx, upper, cross, Htt, pass_bytes)

    def _assemble(self, Hxx, upper, cross, Htt, pass_bytes: float = HESSIAN_PASS_BYTES) -> torch.Tensor:
        """The blocks in one ``P x P`` matrix, in theta's order: ``W[i, j]`` at ``i d + j``, then ``b``.

        Straight into the result, through views, ``pass_bytes`` of pairs ``j <= l`` at a time: no other
        ``P x P``-sized copy (the memory guard counts the Hessian, its eigenvectors and a workspace).
        """
        theta, h, own = self.flat.theta, self.layer.out_features, self.own
        P, tail, e = theta.numel(), self.tail.numel(), cross.shape[2]
        d = e - 1 if self.bias else e
        H = theta.new_zeros((P, P))
        blocks = H[: h * d, : h * d].view(h, d, h, d).permute(1, 3, 0, 2)  # [j, l, i, k] = H[W_ij, W_kl]
        if self.bias:
            rows = H[h * d : own, : h * d].view(h, h, d).permute(2, 0, 1)  # [l, i, k] = H[b_i, W_kl]
        step = max(1, int(pass_bytes // (h * h * theta.element_size())))
        for p in range(0, upper.shape[1], step):
            S = Hxx[p : p + step].view(-1, h, h)
            S = (S + S.transpose(1, 2)) / 2  # the second derivatives in a_s are symmetric in (i, k)
            J, L = upper[:, p : p + step]  # pairs j <= l of the layer's inputs (index d: the bias column)
            weights = L < d
            blocks[J[weights], L[weights]] = S[weights]
            blocks[L[weights], J[weights]] = S[weights]
            if self.bias:
                rows[J[(L == d) & (J < d)]] = S[(L == d) & (J < d)]
                if ((L == d) & (J == d)).any():
                    H[h * d : own, h * d : own] = S[(L == d) & (J == d)][0]
        if self.bias:
            H[: h * d, h * d : own] = H[h * d : own, : h * d].T
        order = [i * e + j for i in range(h) for j in range(d)] + (
            [i * e + d for i in range(h)] if self.bias else []
        )
        W_tail = cross.reshape(tail, h * e)[:, torch.tensor(order, device=theta.device)]
        H[own:, :own] = W_tail
        H[:own, own:] = W_tail.T
        H[own:, own:] = (Htt + Htt.T) / 2
        return H


def _add_pairs(Hxx, upper, x, block, k0: int, pass_bytes: float) -> None:
    """``Hxx[(j, l), (i, k0 + c)] += sum_s x_sj x_sl block[s, i, c]`` for the pairs ``j <= l`` of ``upper``.

    A slice of pairs at a time, so that the ``(s x pairs)`` products and ``(pairs x h m)`` results stay
    within ``pass_bytes``; added in place through a view (an index would copy the columns of ``Hxx``).
    """
    s, h, m = block.shape
    flat_block = block.reshape(s, h * m)
    step = max(1, int(pass_bytes // ((s + h * m) * x.element_size())))
    for p in range(0, upper.shape[1], step):
        J, L = upper[0, p : p + step], upper[1, p : p + step]
        Hxx_view = Hxx[p : p + step].view(-1, h, h)[:, :, k0 : k0 + m]
        Hxx_view += ((x[:, J] * x[:, L]).T @ flat_block).view(-1, h, m)


def ggn_agrees(
    flat: FlatModel, loss, X, scale: float, G: torch.Tensor, *, samples: int, seed: int = 0
) -> bool:
    """Whether ``G v`` equals the GGN-vector product of every parameter for a seeded random ``v``.

    Same tolerance as :func:`hessian_agrees`; the product is :func:`~hessview.engine.ggn.ggn_matmat`.
    """
    v = _probe_vector(flat, seed)
    product = torch.zeros_like(v)
    for j in range(0, X.shape[0], samples):
        product += ggn_matmat(flat, flat.theta, X[j : j + samples], loss, v[None], scale)[0]
    return _agree(G @ v - product, G, v, X.shape[0])


def _probe_vector(flat: FlatModel, seed: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(flat.n_params, generator=generator, dtype=flat.theta.dtype).to(flat.theta.device)


def _agree(difference: torch.Tensor, M: torch.Tensor, v: torch.Tensor, n: int) -> bool:
    tolerance = 10 * math.sqrt(n + M.shape[0]) * torch.finfo(M.dtype).eps
    scale = float(torch.linalg.matrix_norm(M) * torch.linalg.vector_norm(v))
    return float(torch.linalg.vector_norm(difference)) <= tolerance * scale


def hessian_agrees(
    flat: FlatModel, loss_sum: Callable, X, y, H: torch.Tensor, *, samples: int, seed: int = 0
) -> bool:
    """Whether ``H v`` equals the whole objective's Hessian-vector product for a seeded random ``v``.

    Forward over reverse, ``samples`` samples per pass (one vector); agreement to
    :math:`10 \\sqrt{n + P}\\,\\epsilon\\, \\|H\\|_F \\|v\\|`. Rounding alone leaves about
    :math:`0.3`-:math:`0.4\\,\\epsilon` of that scale (a 38-parameter MLP on 300 samples, float32 and
    float64), so a correct matrix passes with a wide margin; a parameter acting before the layer or tied
    weights leave errors of order one, and samples that interact through batch statistics are caught
    once their effect on the Hessian exceeds about :math:`10^2\\sqrt{n + P}\\,\\epsilon` relative (in
    float32 a batch-mean coupling of ``1e-3``, which makes the Hessian ``7e-4`` wrong, is caught; one of
    ``1e-5``, ``7e-6`` wrong, is not).
    """
    v = _probe_vector(flat, seed)
    product = torch.zeros_like(v)
    for j in range(0, X.shape[0], samples):
        Xj, yj = X[j : j + samples], y[j : j + samples]
        gradient = grad(lambda t, Xj=Xj, yj=yj: loss_sum(flat(t, Xj), yj))
        product += jvp(gradient, (flat.theta,), (v,))[1].detach()
    return _agree(H @ v - product, H, v, X.shape[0])


def dense_hessian(
    flat: FlatModel,
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    row_chunk: int = 128,
    pass_bytes: float = HESSIAN_PASS_BYTES,
    progress: bool = False,
    input_layer: bool = True,
) -> torch.Tensor:
    """Exact Hessian of ``loss_sum(flat(theta, X), y)`` in ``theta``, block row by block row.

    Args:
        flat: the model as a function of its flat parameters.
        loss_sum: maps the outputs for ``X`` and the targets ``y`` to a scalar (a sum over samples).
        X: the inputs, first dimension indexing samples; passes of several samples are summed.
        y: the targets, one per sample.
        row_chunk: unit vectors per vectorised pass.
        pass_bytes: vectors x samples x activation width x itemsize per pass (sets the samples per pass;
            the width is :func:`activation_widths`'s).
        progress: show a progress bar over block rows.
        input_layer: use the Kronecker form of an input ``nn.Linear`` when the model has one (module
            docstring; checked by a Hessian-vector product); ``False``: block rows only.

    Returns:
        The symmetric ``P x P`` Hessian: block rows :math:`H_{a, \\geq a}` computed, the rest mirrored,
        diagonal blocks symmetrised.

    >>> from torch import nn
    >>> flat = FlatModel(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)), torch.float64)
    >>> X, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64)
    >>> def loss_sum(out, y):
    ...     return ((out - y) ** 2).sum()
    >>> H = dense_hessian(flat, loss_sum, X, y)
    >>> truth = torch.autograd.functional.hessian(lambda t: loss_sum(flat(t, X), y), flat.theta)
    >>> bool(torch.allclose(H, truth, rtol=1e-12, atol=1e-14))
    True
    """
    P, n = flat.n_params, X.shape[0]
    if P == 0 or n == 0:
        return flat.theta.new_zeros((P, P))
    row_chunk = max(1, int(row_chunk))
    groups = parameter_groups(flat)
    widths = activation_widths(flat, X[0], groups)
    layer = _InputLinear.probe(flat, loss_sum, X, groups) if input_layer else None
    if layer is not None:  # (no P x P matrix of zeros is held meanwhile)
        H = layer.hessian(X, y, row_chunk=row_chunk, pass_bytes=pass_bytes, widths=widths)
        samples = even_size(n, max(1, int(pass_bytes // (max(widths) * flat.theta.element_size()))))
        if hessian_agrees(flat, loss_sum, X, y, H, samples=samples):
            return H
        H.zero_()  # samples interact, or a parameter acts before the layer: block rows, exact for any model
    else:
        H = flat.theta.new_zeros((P, P))
    bar = tqdm(groups, desc="Hessian block rows", disable=not progress or len(groups) == 1, leave=False)
    for (first, stop), width in zip(bar, widths, strict=True):
        block = _BlockRows(flat, loss_sum, first, stop)
        sample_bytes = width * flat.theta.element_size()
        size = block.end - block.start
        for i in range(0, size, row_chunk):
            k = min(row_chunk, size - i)  # unit vectors i .. i + k - 1 of the group (not a size x size eye)
            V = flat.theta.new_zeros((k, size))
            V[torch.arange(k), torch.arange(i, i + k)] = 1
            samples = even_size(n, max(1, int(pass_bytes // (V.shape[0] * sample_bytes))))
            rows = H[block.start + i : block.start + i + V.shape[0], block.start :]
            for j in range(0, n, samples):
                rows += block.rows(V, X[j : j + samples], y[j : j + samples])
        diagonal = H[block.start : block.end, block.start : block.end]
        H[block.start : block.end, block.start : block.end] = (diagonal + diagonal.T) / 2
        H[block.end :, block.start : block.end] = H[block.start : block.end, block.end :].T
    return H


def dense_ggn(
    flat: FlatModel,
    loss,
    X: torch.Tensor,
    scale: float,
    *,
    jacobian_bytes: float = JACOBIAN_BYTES,
    pass_bytes: float = HESSIAN_PASS_BYTES,
    input_layer: bool = True,
) -> torch.Tensor:
    """``scale * sum_j J_j^T H^out_j J_j`` from per-sample output Jacobians, ``loss`` a name or Loss object.

    An input ``nn.Linear`` (module docstring) gets its blocks in Kronecker form (:meth:`_InputLinear.ggn`),
    checked by one GGN-vector product with a seeded random vector (:func:`ggn_agrees`); ``input_layer=False``
    or a failed check: Jacobians of every parameter.

    >>> X = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    >>> flat = FlatModel(torch.nn.Linear(2, 1, bias=False), torch.float64)  # f = x . theta, mse: G = 2 X^T X
    >>> dense_ggn(flat, "mse", X, 1.0)
    tensor([[ 2.,  4.],
            [ 4., 10.]], dtype=torch.float64)
    """
    loss = get_loss(loss)
    P, n, theta = flat.n_params, X.shape[0], flat.theta
    if P == 0 or n == 0:
        return theta.new_zeros((P, P))
    groups = parameter_groups(flat)
    layer = _InputLinear.probe(flat, None, X, groups) if input_layer else None
    if layer is not None:
        G = layer.ggn(X, loss, scale, jacobian_bytes=jacobian_bytes, pass_bytes=pass_bytes)
        samples = even_size(n, max(1, int(jacobian_bytes // (P * theta.element_size()))))
        if ggn_agrees(flat, loss, X, scale, G, samples=samples):
            return G
        del G  # samples interact, or a parameter acts before the layer: Jacobians of every parameter
    G = theta.new_zeros((P, P))
    jacobian = vmap(jacrev(lambda t, x: flat(t, x.unsqueeze(0))[0]), in_dims=(None, 0))
    n_outputs = flat(theta, X[:1])[0].numel()
    batch = max(1, int(jacobian_bytes // (n_outputs * P * theta.element_size())))
    for i in range(0, n, batch):
        Xb = X[i : i + batch]
        J = jacobian(theta, Xb).detach()  # (b, *output shape, P)
        outputs = flat(theta, Xb).detach()
        HJ = vmap(loss.output_hessian_product, in_dims=(None, -1), out_dims=-1)(outputs, J)
        G += J.reshape(-1, P).T @ HJ.reshape(-1, P)
    G *= scale
    return (G + G.T) / 2


def even_size(n: int, most: int) -> int:
    """The size of the fewest equal pieces of at most ``most`` covering ``n`` (no small remainder piece).

    >>> even_size(10_000, 4882), even_size(2000, 976), even_size(7, 10)
    (3334, 667, 7)
    """
    pieces = -(-n // max(1, most))
    return -(-n // max(1, pieces))
