"""Data shards and the backends that run the data-parallel work over them, in process or on Dask.

Every sum over training samples the toolbox needs (Hessian or GGN blocks, curvature-vector products,
per-sample gradients and their products with a matrix) splits into independent pieces, one per
:class:`Shard` of consecutive samples; the pieces are summed or concatenated in shard order, so an
in-process run and a Dask run of the same shards give the same numbers up to rounding. Every product
runs under one lock per process: ``torch.func`` transforms (vmap, grad, jvp) keep interpreter levels that
break when two threads transform at once, and Dask workers, threaded or in-process, run tasks side by side.
:class:`LocalBackend` (the default) needs nothing else; :class:`DaskBackend` sends each shard to a
``dask.distributed`` worker once (``client.scatter``) and then submits one task per shard and call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hessview.engine.dense import dense_ggn, dense_hessian, even_size
from hessview.engine.ggn import ggn_matmat
from hessview.engine.hessian import default_chunks, hessian_matmat_forward, per_sample_gradients
from hessview.engine.losses import per_sample_loss
from hessview.engine.params import FlatModel

CURVATURES = ("hessian", "ggn")
# per-sample gradients per vectorised pass: as many as fill 25 MB (at most 512). Small blocks stay in cache:
# 32 gradients of the scale benchmark's 103k-parameter CNN per pass cost 2.5x less than 512
GRADIENT_BYTES = 2.5e7
# vectors x samples x input size x 8 bytes per curvature-product pass: 2 MB (~1,000 16x16 lattices per
# single-vector pass) is 2x cheaper per product than one pass over 5,000 lattices (scale benchmark CNN)
PASS_BYTES = 2e6
TRANSFORM_LOCK = threading.Lock()  # one torch.func computation at a time in this process


@dataclass
class Shard:
    """Samples ``start : start + len(X)`` of the training set and the work that touches only them.

    Sums are scaled by ``1 / n_total`` so that adding the shards' results gives the mean over all samples.
    """

    flat: FlatModel
    X: torch.Tensor
    y: torch.Tensor
    loss: str
    n_total: int
    start: int

    @property
    def theta(self) -> torch.Tensor:
        """The flat parameters."""
        return self.flat.theta

    def _objective(self, theta, X, y):
        return per_sample_loss(self.loss, self.flat(theta, X), y).sum() / self.n_total

    def _sample_loss(self, theta, x, y):
        return per_sample_loss(self.loss, self.flat(theta, x.unsqueeze(0)), y.unsqueeze(0))[0]

    def _matmat(self, X, y, V: torch.Tensor, curvature: str) -> torch.Tensor:
        if curvature == "ggn":
            return ggn_matmat(self.flat, self.theta, X, self.loss, V, 1 / self.n_total)
        if V.shape[0] == 1:
            return self._hessian_vector_reverse(X, y, V[0])[None]
        return hessian_matmat_forward(lambda t: self._objective(t, X, y), self.theta, V)

    def _hessian_vector_reverse(self, X, y, v: torch.Tensor) -> torch.Tensor:
        """One product :math:`Hv = \\nabla_\\theta (\\nabla_\\theta f \\cdot v)` by double backward.

        For a single vector (Lanczos) reverse over reverse beats the vmapped forward-over-reverse product,
        whose vmap pays off only over many rows: 1.0 s against 1.4 s per product over 5,000 lattices of the
        scale benchmark's 103k-parameter CNN, in passes of 1,000 (Pearlmutter 1994).
        """
        theta = self.theta.detach().requires_grad_(True)
        with torch.enable_grad():
            (gradient,) = torch.autograd.grad(self._objective(theta, X, y), theta, create_graph=True)
            (product,) = torch.autograd.grad(gradient @ v, theta)
        return product

    def dense_curvature(self, curvature: str, row_chunk: int, progress: bool = False) -> torch.Tensor:
        """The shard's ``P x P`` Hessian or GGN of ``(1/n_total) sum_j L_j``, exact.

        The Hessian block row by block row of parameter groups (:func:`~hessview.engine.dense.dense_hessian`,
        ``row_chunk`` unit vectors per vectorised pass), the GGN as one product of per-sample Jacobians
        (:func:`~hessview.engine.dense.dense_ggn`).
        """
        if curvature == "ggn":
            return dense_ggn(self.flat, self.loss, self.X, 1 / self.n_total)
        return dense_hessian(
            self.flat, self._loss_sum, self.X, self.y, row_chunk=row_chunk, progress=progress
        )

    def _loss_sum(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return per_sample_loss(self.loss, outputs, y).sum() / self.n_total

    def curvature_matmat(self, V: torch.Tensor, curvature: str) -> torch.Tensor:
        """``C v`` for each row ``v`` of ``V`` ``(k, P)``, ``C`` the shard's Hessian or GGN; matrix-free."""
        samples, vectors = default_chunks(self.X.shape[0], self.X[0].numel(), V.shape[0], PASS_BYTES)
        samples = even_size(self.X.shape[0], samples)
        out = torch.zeros_like(V)
        for i in range(0, self.X.shape[0], samples):
            X, y = self.X[i : i + samples], self.y[i : i + samples]
            for j in range(0, V.shape[0], vectors):
                out[j : j + vectors] += self._matmat(X, y, V[j : j + vectors], curvature)
        return out

    def _gradient_batches(self):
        batch = gradient_batch(self.theta.numel(), self.theta.element_size())
        for i in range(0, self.X.shape[0], batch):
            X, y = self.X[i : i + batch], self.y[i : i + batch]
            yield i, per_sample_gradients(self._sample_loss, self.theta, X, y, batch_size=batch)

    def gradients(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample loss gradients ``(n_shard, P)``, written batch by batch into ``out`` when given."""
        if out is None:
            out = self.theta.new_empty((self.X.shape[0], self.theta.numel()))
        for i, G in self._gradient_batches():
            out[i : i + G.shape[0]] = G
        return out

    def gradient_summary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the per-sample gradients ``(P,)``, their norms ``(n_shard,)``) without keeping them."""
        total = torch.zeros_like(self.theta)
        norms = []
        for _, G in self._gradient_batches():
            total += G.sum(dim=0)
            norms.append(G.norm(dim=1))
        return total, torch.cat(norms)

    def gradient_products(self, A: torch.Tensor) -> torch.Tensor:
        """``G A`` ``(n_shard, k)`` for ``A`` ``(P, k)``, ``G`` the per-sample gradients."""
        return torch.cat([G @ A for _, G in self._gradient_batches()])

    def weighted_gradient_sum(self, W: torch.Tensor) -> torch.Tensor:
        """``W[:, shard] G`` ``(B, P)`` for sample weights ``W`` ``(B, n_total)`` over the whole set."""
        total = W.new_zeros((W.shape[0], self.theta.numel()))
        for i, G in self._gradient_batches():
            total += W[:, self.start + i : self.start + i + G.shape[0]] @ G
        return total

    def inverse_gradient_norms(self, inverse) -> torch.Tensor:
        """``||C^{-1} g_j||`` for every sample, ``inverse.apply`` giving ``C^{-1} M`` for ``M`` ``(P, k)``."""
        return torch.cat([inverse.apply(G.T).norm(dim=0) for _, G in self._gradient_batches()])


def gradient_batch(n_params: int, itemsize: int = 8) -> int:
    """Per-sample gradients per vectorised pass: ``GRADIENT_BYTES`` worth, between 1 and 512.

    >>> gradient_batch(103_082), gradient_batch(740)
    (30, 512)
    """
    return max(1, min(512, int(GRADIENT_BYTES // (itemsize * max(1, n_params)))))


def make_shards(flat: FlatModel, X, y, loss: str, shard_size: int, n_total: int | None = None) -> list[Shard]:
    """Consecutive shards of at most ``shard_size`` samples, as equal in size as possible.

    ``n_total``: the size of the whole training set when ``X`` is a subset of it (sums stay means over it).
    """
    n = X.shape[0]
    shard_size = max(1, even_size(n, shard_size))  # no shard at all when n = 0 (every sample screened)
    return [
        Shard(flat, X[i : i + shard_size], y[i : i + shard_size], loss, n_total or n, i)
        for i in range(0, n, shard_size)
    ]


def _call(shard: Shard, method: str, *args):
    with TRANSFORM_LOCK:
        return getattr(shard, method)(*args)


class LocalBackend:
    """Runs each shard's work in this process, one shard after another."""

    n_workers = 1

    def __init__(self, shards: list[Shard]):
        self.shards = shards

    def map(self, method: str, *args, progress: bool = False, desc: str | None = None) -> list:
        """``[shard.method(*args) for shard in shards]``."""
        shards = tqdm(self.shards, desc=desc, disable=not progress or len(self.shards) == 1, leave=False)
        return [_call(shard, method, *args) for shard in shards]

    def sum(self, method: str, *args, progress: bool = False, desc: str | None = None):
        """``shard.method(*args)`` of every shard added up as each comes (one at a time); None: no shard."""
        shards = tqdm(self.shards, desc=desc, disable=not progress or len(self.shards) == 1, leave=False)
        total = None
        for shard in shards:
            part = _call(shard, method, *args)
            total = part if total is None else total.add_(part)
            del part  # not held while the next is computed
        return total

    def fill(self, method: str, out: torch.Tensor) -> torch.Tensor:
        """Rows ``shard.method(out=...)`` of every shard written in place into ``out`` ``(n_total, ...)``."""
        for shard in self.shards:
            _call(shard, method, out[shard.start : shard.start + shard.X.shape[0]])
        return out


class DaskBackend:
    """Runs each shard's work as a task on a ``dask.distributed`` cluster.

    The shards (model copy and samples) are scattered to the workers once; each call then ships only its
    arguments. Torch in a worker uses its own thread setting: with one thread per worker, call
    ``client.run(torch.set_num_threads, 1)`` first.
    """

    def __init__(self, client, shards: list[Shard]):
        self.client = client
        self.spans = [(shard.start, shard.X.shape[0]) for shard in shards]
        self.shards = client.scatter(shards)

    @property
    def n_workers(self) -> int:
        """Workers the scheduler knows now."""
        return n_workers(self.client)

    def map(self, method: str, *args, progress: bool = False, desc: str | None = None) -> list:
        """Submit ``shard.method(*args)`` for every shard; gather the results in shard order."""
        futures = [self.client.submit(_call, shard, method, *args, pure=False) for shard in self.shards]
        if progress and len(futures) > 1:
            from distributed import as_completed

            for _ in tqdm(as_completed(futures), total=len(futures), desc=desc, leave=False):
                pass
        return self.client.gather(futures)

    def sum(self, method: str, *args, progress: bool = False, desc: str | None = None):
        """``shard.method(*args)`` of every shard added up in shard order, each released once added."""
        futures = [self.client.submit(_call, shard, method, *args, pure=False) for shard in self.shards]
        total = None
        for future in tqdm(futures, desc=desc, disable=not progress or len(futures) == 1, leave=False):
            part = future.result()
            future.release()
            total = part if total is None else total.add_(part)
            del part  # not held while the next is computed
        return total

    def fill(self, method: str, out: torch.Tensor) -> torch.Tensor:
        """Rows ``shard.method()`` of every shard copied into ``out`` ``(n_total, ...)`` as each arrives.

        Only the shards not yet copied are held in this process besides ``out``.
        """
        futures = [self.client.submit(_call, shard, method, pure=False) for shard in self.shards]
        for (start, size), future in zip(self.spans, futures, strict=True):
            out[start : start + size] = future.result()
            future.release()
        return out


def n_workers(client) -> int:
    """Number of workers of a ``dask.distributed`` client (at least 1)."""
    return max(1, len(client.scheduler_info().get("workers", {})))


def check_client(client) -> None:
    """Refuse anything that is not a ``dask.distributed.Client``-like object."""
    if client is not None and not all(hasattr(client, name) for name in ("submit", "scatter", "gather")):
        raise TypeError(f"client must be a dask.distributed.Client or None, not {type(client).__name__}")
