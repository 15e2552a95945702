r"""Deterministic full-batch training to a stationary point of the regularised objective.

The objective is the one ``HessianToolbox`` differentiates:

.. math::

    \mathcal{L}(\theta) = \frac1n \sum_{i=1}^n \ell(f_\theta(x_i), y_i)
        + \frac{w}{2}\,\lVert\theta\rVert^2 ,

with :math:`\ell` the cross-entropy and :math:`w` = ``weight_decay``.  The paper (Dawid et al. 2022)
writes its L2 term as :math:`\frac{\lambda}{2n}\lVert\theta\rVert^2` with :math:`\lambda = 0.05`,
:math:`n = 1000`, i.e. ``weight_decay = 0.05 / n`` here (no further factor 2).  The model is trained in
eval mode (dropout off), so the end point is a stationary point of exactly the function whose Hessian
the toolbox takes; influence functions and resampling uncertainty assume such a minimum.  The Adam
warm-up may run in float32 (PyTorch's float64 convolutions on CPU are several times slower); the
L-BFGS polish, and so the end point, is float64.  L-BFGS stalls once the objective's changes reach
float64 roundoff (typically at a gradient norm of 1e-8 to 1e-10); optional Newton steps with the exact
Hessian, :math:`\theta \leftarrow \theta - H^{-1} \nabla\mathcal{L}`, then converge quadratically
to machine precision where the Hessian is positive definite (Nocedal & Wright, *Numerical
Optimization*, 2nd ed., ch. 3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from tqdm.auto import tqdm

#: Newton steps stop below this gradient norm: float64 roundoff for an objective of order one.
ROUNDOFF_GRADIENT = 1e-13


@dataclass
class TrainResult:
    """What :func:`train` reports.

    Attributes:
        model: the trained model (float64, eval mode); the same object that was passed in.
        loss: final value of the objective.
        gradient_norm: :math:`\\lVert\nabla\\mathcal{L}\rVert` at the end.
        median_sample_gradient_norm: median over the training samples of
            :math:`\\lVert\nabla_\theta \\ell(f_\theta(x_i), y_i)\rVert` (data term only), the scale against
            which ``gradient_norm`` says "stationary".
        accuracy: training accuracy.
        adam_steps, lbfgs_steps, newton_steps: iterations spent in each phase.
        losses: objective after every Adam step and every L-BFGS iteration.
    """

    model: nn.Module
    loss: float
    gradient_norm: float
    median_sample_gradient_norm: float
    accuracy: float
    adam_steps: int
    lbfgs_steps: int
    losses: np.ndarray
    newton_steps: int = 0


def _as_tensors(X, y) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X).to(torch.float64)
    y = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    if y.dtype.is_floating_point:
        if not torch.equal(y, y.round()):
            raise ValueError("y must hold integer class labels")
        y = y.long()
    y = y.to(torch.int64)
    if y.ndim != 1 or len(X) != len(y) or len(y) == 0:
        raise ValueError(
            f"X and y must have the same non-zero length, got {tuple(X.shape)}, {tuple(y.shape)}"
        )
    if not torch.isfinite(X).all():
        raise ValueError("X must be finite")
    if (y < 0).any():
        raise ValueError("y must hold non-negative class labels")
    return X, y


def _objective(model, X, y, weight_decay):
    squared_norm = sum((p**2).sum() for p in model.parameters())
    return nn.functional.cross_entropy(model(X), y) + 0.5 * weight_decay * squared_norm


def _gradient_norm(model, X, y, weight_decay) -> tuple[float, float]:
    model.zero_grad()
    loss = _objective(model, X, y, weight_decay)
    loss.backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    model.zero_grad()
    return float(loss.detach()), float(norm)


def sample_gradient_norms(model: nn.Module, X, y) -> np.ndarray:
    r"""Return :math:`\lVert\nabla_\theta \ell(f_\theta(x_i), y_i)\rVert` for every sample (torch.func).

    The model is put in eval mode (dropout off), as in :func:`train`.
    """
    X, y = _as_tensors(X, y)
    model.eval()
    params = {name: p.detach() for name, p in model.named_parameters()}

    def sample_loss(p, x, target):
        logits = functional_call(model, p, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, target.unsqueeze(0))

    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, X, y)
    squared = sum(g.reshape(len(y), -1).pow(2).sum(dim=1) for g in grads.values())
    return squared.sqrt().numpy()


def _polish(model, params, X, y, weight_decay, max_steps, tolerance, losses, bar) -> int:
    """Run SciPy's L-BFGS-B on the flat float64 parameter vector; return the iterations spent."""
    if max_steps == 0:
        return 0

    latest = {}

    def value_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        vector_to_parameters(torch.from_numpy(theta), params)
        value = _objective(model, X, y, weight_decay)
        gradient = parameters_to_vector(torch.autograd.grad(value, params)).numpy()
        latest["loss"], latest["norm"] = float(value.detach()), float(np.linalg.norm(gradient))
        return latest["loss"], gradient

    def record(theta: np.ndarray) -> None:
        losses.append(latest["loss"])
        bar.update()
        bar.set_postfix(grad=f"{latest['norm']:.1e}")

    start = parameters_to_vector(params).detach().numpy().copy()
    result = minimize(
        value_and_gradient,
        start,
        jac=True,
        method="L-BFGS-B",
        callback=record,
        options={
            "maxiter": max_steps,
            "maxcor": 50,
            "ftol": 0.0,
            "gtol": tolerance / np.sqrt(start.size),
            "maxls": 50,
        },
    )
    vector_to_parameters(torch.from_numpy(result.x), params)
    return int(result.nit)


def _newton(model, params, X, y, weight_decay, max_steps, losses, bar) -> int:
    r"""Newton steps with the exact Hessian (hessview's engine) while they make progress.

    Where the Hessian is positive definite the step is :math:`-H^{-1}\nabla\mathcal{L}`; where it is not
    (a saddle region), the Levenberg-Marquardt step :math:`-(H + \mu I)^{-1}\nabla\mathcal{L}` with
    :math:`\mu = 2|\lambda_{min}|`.  A step is halved until the objective falls, or, once the objective's
    changes are at float64 roundoff, until the gradient norm falls (near a minimum the full step does
    both).  Stops once the gradient norm is below ``ROUNDOFF_GRADIENT`` (float64 roundoff for an
    objective of order one), since every further step costs a Hessian and gains nothing, or when no
    halving helps.  Returns the steps taken.
    """
    import warnings

    from hessview.engine.errors import HessviewWarning
    from hessview.engine.toolbox import HessianToolbox

    taken = 0
    for _ in range(max_steps):
        start_loss, start_norm = _gradient_norm(model, X, y, weight_decay)
        if start_norm < ROUNDOFF_GRADIENT:
            break
        with warnings.catch_warnings():
            # this step's toolbox rightly says the start is not yet stationary (only hessview's warnings)
            warnings.simplefilter("ignore", HessviewWarning)
            toolbox = HessianToolbox(model, X, y, weight_decay=weight_decay, progress=False, screen=False)
            toolbox.fit()
        theta = toolbox.theta
        gradient = toolbox.train_gradients.mean(dim=0) + weight_decay * theta
        shift = 0.0 if toolbox.lambda_min_ > 0 else 2 * abs(toolbox.lambda_min_)
        vectors = toolbox.eigenvectors
        step = vectors @ ((vectors.T @ gradient) / (toolbox.eigenvalues + shift))
        roundoff = 1e-14 * max(abs(start_loss), 1.0)
        for scale in 0.5 ** np.arange(12):
            vector_to_parameters((theta - scale * step).to(params[0].dtype), params)
            loss, norm = _gradient_norm(model, X, y, weight_decay)
            if loss < start_loss - roundoff or (loss <= start_loss + roundoff and norm < start_norm):
                break
        else:
            vector_to_parameters(theta.to(params[0].dtype), params)
            break
        taken += 1
        losses.append(loss)
        bar.update()
        bar.set_postfix(grad=f"{norm:.1e}")
    return taken


def train(
    model: nn.Module,
    X,
    y,
    *,
    weight_decay: float = 0.0,
    epochs: int = 1000,
    learning_rate: float = 1e-2,
    lbfgs_steps: int = 2000,
    newton_steps: int = 0,
    adam_weight_decay: float | None = None,
    gradient_tolerance: float = 1e-8,
    seed: int = 0,
    adam_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``(X, y)`` to a stationary point of mean cross-entropy + L2 (module docstring).

    The parameters are re-initialised from ``seed`` (each module's ``reset_parameters``), then full-batch
    Adam runs ``epochs`` steps and L-BFGS (SciPy's L-BFGS-B on the flat float64 parameter vector)
    polishes until every gradient component is below ``gradient_tolerance / sqrt(P)`` (so the norm is
    below ``gradient_tolerance``) or ``lbfgs_steps`` iterations are spent; then up to ``newton_steps``
    Newton steps with the exact Hessian take the gradient to float64 roundoff (each costs one Hessian,
    about as much as a few hundred L-BFGS iterations on the paper's CNN).  Full batch, eval mode, a
    seeded initialisation: the result depends only on the arguments.

    Args:
        model: a classifier returning logits ``(n, C)``; converted to float64 in place.
        X: inputs ``(n, ...)`` as the model expects them.
        y: integer labels ``(n,)``.
        weight_decay: ``w`` in the objective; the paper's L2 is ``0.05 / n``.
        epochs: Adam steps.
        learning_rate: Adam step size.
        lbfgs_steps: the most L-BFGS iterations.
        newton_steps: the most Newton steps after L-BFGS (Levenberg-Marquardt steps where the Hessian is
            not positive definite; they stop at float64 roundoff or when no step makes progress).
        adam_weight_decay: ``w`` during the Adam warm-up only (default: ``weight_decay``).  A smaller
            value is a continuation: the warm-up finds a classifier first, and L-BFGS and Newton then
            converge to a minimum of the objective with ``weight_decay``, instead of the constant
            classifier that a strong weight decay makes attractive from a small initialisation.
        gradient_tolerance: stop L-BFGS once the gradient norm is below this.
        seed: seed of the parameter initialisation.
        adam_dtype: precision of the Adam warm-up (the polish is always float64).
        progress: show a tqdm progress bar.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not np.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay}")
    if adam_weight_decay is None:
        adam_weight_decay = weight_decay
    if not np.isfinite(adam_weight_decay) or adam_weight_decay < 0:
        raise ValueError(f"adam_weight_decay must be finite and >= 0, got {adam_weight_decay}")
    if epochs < 0 or lbfgs_steps < 0 or newton_steps < 0:
        raise ValueError("epochs, lbfgs_steps and newton_steps must be >= 0")
    X, y = _as_tensors(X, y)
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    model.to(adam_dtype).eval()
    losses = []
    bar = tqdm(total=epochs + lbfgs_steps + newton_steps, desc="training", disable=not progress)

    adam = torch.optim.Adam(model.parameters(), lr=learning_rate)
    X_adam = X.to(adam_dtype)
    for _ in range(epochs):
        adam.zero_grad()
        loss = _objective(model, X_adam, y, adam_weight_decay)
        loss.backward()
        adam.step()
        losses.append(float(loss.detach()))
        bar.update()

    model.to(torch.float64)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = _polish(model, params, X, y, weight_decay, lbfgs_steps, gradient_tolerance, losses, bar)
    newton = _newton(model, params, X, y, weight_decay, newton_steps, losses, bar) if newton_steps else 0
    loss, norm = _gradient_norm(model, X, y, weight_decay)
    bar.close()
    model.zero_grad()
    with torch.no_grad():
        accuracy = float((model(X).argmax(dim=1) == y).double().mean())
    return TrainResult(
        model=model,
        loss=loss,
        gradient_norm=norm,
        median_sample_gradient_norm=float(np.median(sample_gradient_norms(model, X, y))),
        accuracy=accuracy,
        adam_steps=epochs,
        lbfgs_steps=steps,
        losses=np.asarray(losses),
        newton_steps=newton,
    )
