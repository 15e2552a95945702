"""The shared eigendecomposition: damping, the directions local ensembles project out, numerical zero.

One decomposition :math:`C = V \\Lambda V^T` serves every query: the damped inverse
:math:`(C + \\delta I)^{-1} = V (\\Lambda + \\delta)^{-1} V^T` (:mod:`hessview.engine.inverse`), the top
curvature directions for local ensembles, and the spectrum view.

What damping means (the default below follows from it). At a strict minimum, with :math:`C` positive
definite, the undamped influence :math:`\\frac1n g_i^T C^{-1} g_j` is the first-order change of the test
measurement when training point ``j`` is removed and the model retrained (Koh & Liang, ICML 2017); no
damping is needed, and none is added, so the answer does not depend on the units of inputs or parameters.
Where :math:`C` is not positive definite (a saddle, ReLU kinks, an unconverged model), leave-one-out
retraining is not what the formula estimates: with damping :math:`\\delta` it is the proximal Bregman response
function, the response of a model kept close to the current one in function space and in parameters
(Bae, Ng, Lo, Ghassemi & Grosse, NeurIPS 2022; Grosse et al. 2023 for large models). The automatic
damping is then tied to the negative part of the spectrum: :math:`\\delta = 2|\\lambda_{min}|`, so that
:math:`C + \\delta I` has smallest eigenvalue :math:`|\\lambda_{min}|`. Eigenvalues within
:math:`|\\lambda_{min}|` of zero (the bulk near zero) are indistinguishable from the negative ones at this
theta, and it is exactly those that the damping dominates; directions of larger curvature keep their own
(Koh & Liang damp by about the most negative eigenvalue too). It never depends on :math:`\\lambda_{max}`
alone (a rule that lifts :math:`\\lambda_{min}` to a fraction of :math:`\\lambda_{max}` is not invariant to
rescaling one input feature). ``HessianToolbox.tune_damping`` chooses it by retraining instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Damping:
    """The damping ``delta`` added to the curvature and a sentence saying why it was chosen."""

    delta: float
    reason: str


def numerical_zero(eigenvalues: torch.Tensor, n_params: int | None = None) -> float:
    """Eigenvalues below :math:`P \\epsilon \\max|\\lambda|` in magnitude are rounding noise of ``eigh``."""
    n = eigenvalues.numel() if n_params is None else n_params
    return n * torch.finfo(eigenvalues.dtype).eps * float(eigenvalues.abs().max())


def choose_damping(eigenvalues: torch.Tensor, setting: str | float, n_params: int | None = None) -> Damping:
    """The damping :math:`\\delta` for ``setting``: ``"auto"`` (see the module docstring) or a float.

    ``"auto"``: 0 when :math:`\\lambda_{min}` exceeds the numerical zero (positive definite), else
    :math:`\\delta = 2 \\max(|\\lambda_{min}|, \\text{numerical zero})`.

    >>> choose_damping(torch.tensor([-0.5, 1.0, 100.0], dtype=torch.float64), "auto").delta
    1.0
    >>> choose_damping(torch.tensor([1e-3, 100.0], dtype=torch.float64), "auto").delta
    0.0
    >>> choose_damping(torch.tensor([1e-3, 1e5], dtype=torch.float64), "auto").delta  # units do not matter
    0.0
    """
    if not isinstance(setting, str):
        return Damping(float(setting), f"damping {float(setting):.3g} chosen by the user")
    lam_min = float(eigenvalues.min())
    zero = numerical_zero(eigenvalues, n_params)
    if lam_min > zero:
        return Damping(
            0.0,
            f"the curvature is positive definite (lambda_min = {lam_min:.3g}): no damping, so influence "
            "estimates leave-one-out retraining (Koh & Liang 2017)",
        )
    delta = 2.0 * max(abs(lam_min), zero)
    n_negative = int((eigenvalues < -zero).sum())
    return Damping(
        delta,
        f"the curvature is not positive definite (lambda_min = {lam_min:.3g}, {n_negative} negative "
        f"eigenvalues): delta = 2|lambda_min| = {delta:.3g} lifts the smallest eigenvalue of C + delta I to "
        f"{delta / 2:.3g} and dominates only directions with |lambda| below it; influence then estimates the "
        "proximal Bregman response (Bae et al. 2022), not leave-one-out retraining",
    )


def damped_inverse(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, delta: float) -> torch.Tensor:
    """:math:`(H + \\delta I)^{-1} = V \\operatorname{diag}(1 / (\\lambda + \\delta)) V^T`.

    >>> H = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> lam, V = torch.linalg.eigh(H)
    >>> damped_inverse(lam, V, 0.0)
    tensor([[0.5000, 0.0000],
            [0.0000, 0.2500]], dtype=torch.float64)
    """
    from hessview.engine.inverse import EigenInverse

    return EigenInverse(eigenvalues, eigenvectors, delta).matrix


def top_directions(eigenvalues: torch.Tensor, eigenvectors: torch.Tensor, m: int) -> torch.Tensor:
    """The ``m`` eigenvectors with the largest :math:`|\\lambda|`, as columns."""
    order = torch.argsort(eigenvalues.abs(), descending=True)[:m]
    return eigenvectors[:, order]


def eigengap_rank(magnitudes: torch.Tensor, most: int, floor: float) -> int:
    """The ``m`` in ``[1, most]`` after which the sorted magnitudes drop the most (the largest eigengap).

    Magnitudes (for example the data curvature :math:`|\\lambda - w|`) are sorted in decreasing order and
    floored at ``floor`` (their numerical zero); ``m`` maximises :math:`\\log(a_m / a_{m+1})`, the
    boundary between the stiff directions the data pin down and the rest (Madras, Atwood & D'Amour 2020
    sweep ``m``; the gap picks the value where the spectrum's structure changes).

    >>> eigengap_rank(torch.tensor([10.0, 9.0, 8.0, 1e-3, 1e-4]), most=4, floor=1e-12)
    3
    """
    a = torch.sort(magnitudes.abs(), descending=True).values.clamp_min(max(floor, 1e-300))
    most = max(1, min(most, a.numel() - 1))
    if a.numel() < 2:
        return 1
    ratios = torch.log(a[:most]) - torch.log(a[1 : most + 1])
    return int(torch.argmax(ratios)) + 1


def default_rank(eigenvalues: torch.Tensor, rel_tol: float = 1e-3) -> int:
    """Number of curvature directions with :math:`|\\lambda| > 10^{-3} \\max|\\lambda|` (the stiff ones).

    >>> default_rank(torch.tensor([1e-6, 0.5, -2.0, 10.0]))
    3
    """
    scale = float(eigenvalues.abs().max())
    return int((eigenvalues.abs() > rel_tol * scale).sum())
