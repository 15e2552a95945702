"""Retraining without chosen training points: the ground truth that influence functions predict.

The toolbox's objective without the points ``S`` is the mean over the remaining points,

.. math:: R_{-S}(\\theta) = \\frac{1}{n - |S|} \\sum_{j \\notin S} L(x_j, y_j; \\theta)
          + \\frac{w}{2} \\lVert\\theta\\rVert^2,

minimised by full-batch L-BFGS (PyTorch's, strong-Wolfe line search) warm-started at the fitted
``theta`` until :math:`\\lVert \\nabla R_{-S} \\rVert_2 \\le` ``tol``. Where the line search stalls in
float64 rounding first (the decrease it must resolve, about :math:`g^2/\\lambda`, falls below
:math:`\\epsilon R`: near 1e-10 to 1e-8 of the median per-sample gradient norm on small networks), fixed
Newton steps solved by conjugate gradients finish the job from gradients and curvature products alone
(:func:`newton_polish`). One retraining is one call of :func:`retrain_theta`, a module-level function of
picklable arguments, so that a ``dask.distributed`` worker runs it as one task (:func:`retrain_many`). The
model copy is evaluated under :data:`~hessview.engine.distributed.TRANSFORM_LOCK` (``functional_call``
swaps the copy's parameters, so two threads must not evaluate it at once).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from hessview.engine.cg import NonPositiveCurvatureError, conjugate_gradient
from hessview.engine.distributed import TRANSFORM_LOCK, n_workers
from hessview.engine.errors import ApproximationWarning
from hessview.engine.losses import get_loss
from hessview.engine.params import FlatModel

# default tol: this times the median per-sample gradient norm at theta. A looser tolerance stops the
# warm-started L-BFGS early, nearer the linear prediction, and inflates the LDS (0.83 instead of 0.80 at
# 1e-6 on the test suite's MLP, 0.002 off at 1e-8); float64 line searches stall near 1e-8 to 4e-8 of it
# on small networks, so 1e-7 is reached (the ApproximationWarning says when not)
DEFAULT_RTOL = 1e-7
DEFAULT_MAXITER = 1000
POLISH_CG_RTOL = 1e-3  # relative residual of each Newton step's CG solve (newton_polish)
# iterations of maxiter kept for the polish (at most a fifth): L-BFGS that is slow rather than stalled
# (a 4-unit MLP with one input scaled 3000x: 1.5e-6 after all 1000 iterations) still ends polished
POLISH_RESERVE = 100
HISTORY = 20  # L-BFGS history (pairs of P-vectors)
ESTIMATE_PRINT_SECONDS = 10.0  # print the time/memory estimate when a run is expected to take longer
CACHE_BYTES = 2.5e8  # retrained parameter vectors kept per toolbox


class _Converged(Exception):
    """Raised from the L-BFGS closure once the gradient norm is below the tolerance."""


@dataclass(frozen=True)
class RetrainProblem:
    """What a worker needs to retrain: the model copy, the training data, loss, weight decay, preconditioner.

    ``preconditioner`` ``M`` (``P x P``, optional): L-BFGS then runs in the coordinates ``z`` of
    :math:`\\theta = \\theta_0 + M z`, that is with the initial inverse-Hessian guess :math:`M M^T`;
    the minimiser is the same. With :math:`M = V |\\Lambda|^{-1/2}` from the fitted curvature the
    problem starts well conditioned: on the Ising demo's CNN (50 parameters, condition number 1.4e4) a
    retraining on half the data took 63-260 evaluations instead of over 1,100-1,700 (not converged).
    """

    flat: FlatModel
    X: torch.Tensor
    y: torch.Tensor
    loss: str
    weight_decay: float
    preconditioner: torch.Tensor | None = None
    #: ``F`` with ``F F^T = |C + w I|^{-1}`` of the fitted objective (``P x P``, the same tensor as
    #: ``preconditioner`` when that is set): preconditions :func:`newton_polish`
    inverse_factor: torch.Tensor | None = None


@dataclass(frozen=True)
class Retrained:
    """One retraining: the new flat parameters, the gradient norm reached, L-BFGS iterations, convergence."""

    theta: torch.Tensor
    gradient_norm: float
    n_iter: int
    converged: bool


def retrain_theta(
    problem: RetrainProblem, keep: torch.Tensor, theta0: torch.Tensor, tol: float, maxiter: int
) -> Retrained:
    """Minimise :math:`R_{-S}` over the kept points ``keep`` (indices) from ``theta0`` by L-BFGS.

    PyTorch's L-BFGS (strong-Wolfe line search) runs in the coordinates of ``problem.preconditioner``
    when it is given (see :class:`RetrainProblem`). It ends early when its direction stops descending
    (stale curvature pairs) or its line search stalls in float64 rounding; it is then restarted from the
    best point with a fresh history, alternating preconditioned and plain coordinates (the
    preconditioner, the curvature at ``theta0``, can mislead far from it), while a round of restarts
    still halves the gradient norm. When the restarts stall above ``tol``, or use up all of ``maxiter``
    but ``POLISH_RESERVE`` (at most a fifth), :func:`newton_polish` continues from the best point with
    the rest. Stops when the gradient's 2-norm with respect to theta is at most
    ``tol`` or after ``maxiter`` iterations (L-BFGS iterations, then the polish's gradients and curvature
    products) in all (then ``converged`` is False); returns the iterate with the smallest gradient norm
    seen.
    """
    if maxiter < 1:
        raise ValueError(f"maxiter must be at least 1, not {maxiter}")
    X, y = problem.X[keep], problem.y[keep]
    coordinates = [None] if problem.preconditioner is None else [problem.preconditioner, None]
    best = {"norm": math.inf, "theta": theta0.detach().clone()}
    n_iter, attempt, stale = 0, 0, 0
    lbfgs_budget = maxiter - min(POLISH_RESERVE, maxiter // 5)  # the rest is kept for the polish
    while n_iter < lbfgs_budget and best["norm"] > tol and stale < len(coordinates):
        before = best["norm"]
        M = coordinates[attempt % len(coordinates)]
        attempt += 1
        start = best["theta"].clone()
        param = (start.clone() if M is None else torch.zeros_like(start)).requires_grad_(True)

        def closure(param=param, start=start, M=M):
            param.grad = None
            with TRANSFORM_LOCK, torch.enable_grad():
                theta = param if M is None else start + M @ param
                theta.retain_grad()
                value = _objective(problem, X, y, theta)
                value.backward()
            norm = float(theta.grad.norm())
            if norm < best["norm"]:
                best.update(norm=norm, theta=theta.detach().clone())
            if norm <= tol:
                raise _Converged
            return value

        optimiser = torch.optim.LBFGS(
            [param],
            lr=1.0,
            max_iter=lbfgs_budget - n_iter,
            max_eval=int((lbfgs_budget - n_iter) * 1.5) + 1,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            history_size=HISTORY,
            line_search_fn="strong_wolfe",
        )
        try:
            optimiser.step(closure)
        except _Converged:
            pass
        n_iter += max(1, int(optimiser.state[param].get("n_iter", 0)))
        stale = 0 if best["norm"] < 0.5 * before else stale + 1
    if best["norm"] > tol and n_iter < maxiter:
        theta, norm, spent = newton_polish(problem, keep, best["theta"], tol, maxiter - n_iter)
        if norm < best["norm"]:
            best.update(norm=norm, theta=theta)
        n_iter += spent
    return Retrained(best["theta"], best["norm"], n_iter, best["norm"] <= tol)


def _objective(problem: RetrainProblem, X, y, theta: torch.Tensor) -> torch.Tensor:
    """:math:`R_{-S}(\\theta)` on the kept points ``X, y`` (call under the lock, with grad enabled)."""
    loss = get_loss(problem.loss)
    return loss.per_sample(problem.flat(theta, X), y).mean() + problem.weight_decay / 2 * (theta @ theta)


def _value_and_gradient(problem: RetrainProblem, X, y, theta: torch.Tensor):
    """``(leaf, R_{-S}, its gradient)`` at ``theta``, the gradient with its graph (for curvature products)."""
    leaf = theta.detach().clone().requires_grad_(True)
    with TRANSFORM_LOCK, torch.enable_grad():  # only the forward pass uses the shared model copy
        value = _objective(problem, X, y, leaf)
        (gradient,) = torch.autograd.grad(value, leaf, create_graph=True)
    return leaf, float(value.detach()), gradient


def newton_polish(
    problem: RetrainProblem, keep: torch.Tensor, theta: torch.Tensor, tol: float, budget: int
) -> tuple[torch.Tensor, float, int]:
    """Newton steps on :math:`R_{-S}`, each solved by conjugate gradients, after L-BFGS has stalled.

    Each step solves :math:`\\nabla^2 R_{-S}(\\theta)\\, s = \\nabla R_{-S}(\\theta)` to a relative residual
    of ``POLISH_CG_RTOL`` with Hessian-vector products of the kept points (double backward), preconditioned
    by the fitted :math:`|C + wI|^{-1}` when the problem carries it, and moves to :math:`\\theta - s`. It uses
    gradients and curvature products, so it goes on where a line search can no longer tell two losses
    apart; near the minimum the gradient norm falls quadratically (1e-10 to 1e-15 of the per-sample scale
    in one step on the test suite's MLP). A step is kept if it lowers the gradient norm, or the objective
    by more than its rounding (``1e3 eps |R|``: further out, where a Newton step of an ill-conditioned
    objective can raise the gradient norm on its way down); the first that does neither, or a direction
    of non-positive curvature, ends the polish. ``budget`` bounds the gradients and products evaluated.
    Returns the ``theta`` with the smallest gradient norm seen, that norm and the evaluations spent.
    """
    X, y = problem.X[keep], problem.y[keep]
    factor = problem.inverse_factor
    precondition = None if factor is None else (lambda R: factor @ (factor.T @ R))
    theta = theta.detach()
    (start, value, gradient), spent = _value_and_gradient(problem, X, y, theta), 1
    norm = float(gradient.detach().norm())
    best = (theta, norm)
    rounding = 1e3 * torch.finfo(theta.dtype).eps
    while norm > tol and spent + 2 < budget:

        def products(V, gradient=gradient, start=start):
            with torch.enable_grad():
                (column,) = torch.autograd.grad(gradient @ V[:, 0], start, retain_graph=True)
            return column[:, None]

        try:  # not converged to POLISH_CG_RTOL: the step is judged by the gradient norm below
            solve = conjugate_gradient(
                products,
                gradient.detach()[:, None],
                tol=POLISH_CG_RTOL,
                maxiter=int(budget - spent - 2),  # a numpy budget (maxiter=np.int64(...)) is refused by CG
                preconditioner=precondition,
                warn=False,
            )
        except NonPositiveCurvatureError:  # not near a minimum
            break
        candidate = theta - solve.solution[:, 0]
        # the candidate's gradient judges the step and, when it is kept, carries the next step's products
        (new_start, new_value, new_gradient), spent = (
            _value_and_gradient(problem, X, y, candidate),
            spent + solve.iterations + 1,
        )
        new = float(new_gradient.detach().norm())
        if not (new < norm or new_value < value - rounding * abs(value)):
            break
        theta, start, value, gradient, norm = candidate, new_start, new_value, new_gradient, new
        if norm < best[1]:
            best = (theta, norm)
    return best[0], best[1], spent


def keep_indices(remove, n: int) -> torch.Tensor:
    """The kept indices (sorted, int64) for ``remove``: indices or a boolean mask of length ``n``.

    >>> keep_indices([3, 0], 5).tolist()
    [1, 2, 4]
    >>> keep_indices(np.array([True, False, False]), 3).tolist()
    [1, 2]
    """
    if isinstance(remove, torch.Tensor):
        remove = remove.detach().cpu().numpy()
    if isinstance(remove, (int, np.integer)) and not isinstance(remove, bool):
        remove = [remove]
    try:
        arr = np.asarray(remove)
    except Exception as err:  # ragged or odd objects
        raise TypeError(f"remove must be indices or a boolean mask, not {type(remove).__name__}") from err
    if arr.ndim != 1:
        raise ValueError(f"remove must be one-dimensional (indices or a mask), not of shape {arr.shape}")
    if arr.dtype == bool:
        if arr.shape[0] != n:
            raise ValueError(f"a boolean mask remove must have length n_train = {n}, not {arr.shape[0]}")
        removed = np.flatnonzero(arr)
    elif arr.size == 0:
        removed = np.zeros(0, dtype=np.int64)
    elif np.issubdtype(arr.dtype, np.integer):
        removed = arr.astype(np.int64)
        if removed.min() < 0 or removed.max() >= n:
            bad = removed[(removed < 0) | (removed >= n)][:5].tolist()
            raise ValueError(f"remove holds indices outside [0, {n - 1}]: {bad}")
        if np.unique(removed).size != removed.size:
            raise ValueError("remove holds repeated indices")
    else:
        raise TypeError(f"remove must hold integer indices or booleans, not {arr.dtype}")
    mask = np.ones(n, dtype=bool)
    mask[removed] = False
    if not mask.any():
        raise ValueError("remove would leave no training point to retrain on")
    return torch.from_numpy(np.flatnonzero(mask))


def default_tol(median_sample_gradient_norm: float) -> float:
    """``1e-7`` times the median per-sample gradient norm (a scale of the data's pull on ``theta``)."""
    return DEFAULT_RTOL * max(median_sample_gradient_norm, 1e-300)


def check_tol_maxiter(tol, maxiter) -> None:
    """Refuse a non-positive tolerance or iteration count."""
    if tol is not None and (
        isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0
    ):
        raise ValueError(f"tol must be a finite number > 0 or None, not {tol!r}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 1:
        raise ValueError(f"maxiter must be an integer >= 1, not {maxiter!r}")


def module_at(flat: FlatModel, theta: torch.Tensor) -> nn.Module:
    """A new copy of ``flat.module`` (eval mode, same dtype) whose trainable parameters are ``theta``."""
    module = copy.deepcopy(flat.module).eval()
    values = flat.unflatten(theta.detach())
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name in values:
                param.copy_(values[name])
    return module


def _graph_bytes(problem: RetrainProblem, theta: torch.Tensor) -> int:
    """Bytes autograd saves for one full-batch pass (the activations a retraining holds)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    param = theta.detach().clone().requires_grad_(True)
    with TRANSFORM_LOCK, torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        get_loss(problem.loss).per_sample(problem.flat(param, problem.X), problem.y).mean()
    return total[0]


def estimate_text(n_tasks: int, seconds_one: float, workers: int, memory: float, what: str) -> str:
    """One line: the number of retrainings, the measured time of one, the total, the memory of one.

    >>> estimate_text(50, 0.2, 1, 2e6, "LDS")
    'LDS: 50 retrainings x 0.2 s (the first, measured) on 1 worker ~ 10 s; ~2 MB per retraining'
    """
    total = n_tasks * seconds_one / max(1, workers)
    plural = "worker" if workers == 1 else "workers"
    return (
        f"{what}: {n_tasks} retrainings x {seconds_one:.2g} s (the first, measured) on {workers} {plural} "
        f"~ {total:.3g} s; ~{memory / 1e6:.3g} MB per retraining"
    )


def retrain_many(
    problem: RetrainProblem,
    keeps: Sequence[torch.Tensor],
    theta0: torch.Tensor,
    tol: float,
    maxiter: int,
    *,
    client=None,
    progress: bool = True,
    what: str = "retraining",
    max_seconds: float | None = None,
    announce: bool = False,
    cache: dict | None = None,
    warn: bool = True,
) -> list[Retrained]:
    """Retrain once per kept-index set, in process or one ``client`` task each, in the order given.

    The first retraining runs alone and is timed; the estimate (retrainings x that time / workers, and the
    memory of one) is printed when it exceeds ``ESTIMATE_PRINT_SECONDS`` (always with ``announce``) and,
    when it exceeds ``max_seconds``, the run stops with a ValueError before the others start. Results
    already in ``cache`` (a dict keyed by the kept indices, the tolerance and ``maxiter``) are reused. Warns
    with :class:`ApproximationWarning` when a retraining stops above ``tol`` (unless ``warn`` is False: a
    caller in a background thread reads ``converged`` instead, since warning filters are process-wide).
    """
    keys = [(keep.numpy().tobytes(), float(tol), int(maxiter)) for keep in keeps]
    results: list[Retrained | None] = [None] * len(keeps)
    if cache is not None:
        for i, key in enumerate(keys):
            results[i] = cache.get(key)
    todo = [i for i, r in enumerate(results) if r is None]
    if todo:
        workers = 1 if client is None else n_workers(client)
        remote = None if client is None else client.scatter(problem, broadcast=True)

        def run_one(i):
            if client is None:
                return retrain_theta(problem, keeps[i], theta0, tol, maxiter)
            return client.submit(retrain_theta, remote, keeps[i], theta0, tol, maxiter, pure=False).result()

        bar = tqdm(total=len(todo), desc=what, disable=not progress, leave=False)
        start = time.perf_counter()
        results[todo[0]] = run_one(todo[0])
        bar.update()
        seconds = time.perf_counter() - start
        rest = len(todo) - 1
        if rest:
            memory = (
                _graph_bytes(problem, theta0) + (2 * HISTORY + 4) * theta0.numel() * theta0.element_size()
            )
            text = estimate_text(len(todo), seconds, workers, memory, what)
            expected = rest * seconds / workers
            if max_seconds is not None and expected > max_seconds:
                bar.close()
                raise ValueError(
                    f"{text}: over max_seconds={max_seconds:g}. Raise max_seconds, lower n_subsets, or pass "
                    "client= (a dask.distributed.Client) to retrain in parallel"
                )
            if announce or expected > ESTIMATE_PRINT_SECONDS:
                print(text, flush=True)
            if client is None:
                for i in todo[1:]:
                    results[i] = run_one(i)
                    bar.update()
            else:
                from distributed import as_completed

                futures = {
                    client.submit(retrain_theta, remote, keeps[i], theta0, tol, maxiter, pure=False): i
                    for i in todo[1:]
                }
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    future.release()
                    bar.update()
        bar.close()
        if cache is not None:
            _store(cache, {keys[i]: results[i] for i in todo})
    failed = [r for r in results if not r.converged]
    if failed and warn:
        worst = max(r.gradient_norm for r in failed)
        warnings.warn(
            f"{len(failed)} of {len(results)} retrainings stopped above the gradient tolerance {tol:.3g} "
            f"(largest gradient norm reached {worst:.3g}); raise maxiter={maxiter} or tol",
            ApproximationWarning,
            stacklevel=3,
        )
    return results


def _store(cache: dict, new: dict) -> None:
    """Add ``new`` to ``cache``, dropping the oldest entries beyond ``CACHE_BYTES`` of parameters."""
    cache.update(new)
    if not cache:
        return
    each = next(iter(cache.values())).theta.numel() * 8
    while len(cache) > 1 and len(cache) * each > CACHE_BYTES:
        cache.pop(next(iter(cache)))


def measure(problem: RetrainProblem, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, measurement: str):
    """Per-sample ``measurement`` of the model at ``theta`` on ``(X, y)`` (a tensor ``(n,)``)."""
    with TRANSFORM_LOCK, torch.no_grad():
        return get_loss(problem.loss).measure(problem.flat(theta, X), y, measurement)
