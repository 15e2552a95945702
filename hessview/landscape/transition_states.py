"""Transition states: doubly-nudged elastic band, eigenvector-following refinement, descent to minima.

* DNEB (Trygubenko & Wales, J. Chem. Phys. 120, 2082 (2004)): images between two aligned minima feel the
  true gradient perpendicular to the improved tangent :math:`\\hat\\tau_i` (Henkelman & Jónsson 2000),
  the spring force along it, and the part of the perpendicular spring force orthogonal to the
  perpendicular gradient; relaxed with FIRE (Bitzek et al. 2006).
* Eigenvector-following (Cerjan & Miller 1981; Wales, OPTIM): in the Hessian eigenbasis
  :math:`(b_i, v_i)` with gradient components :math:`g_i`, the followed mode steps uphill and every other
  mode downhill by :math:`h_i = \\pm 2 g_i / (|b_i| (1 + \\sqrt{1 + 4 g_i^2 / b_i^2}))`. A transition
  state is accepted only with exactly one negative Hessian eigenvalue.
* For networks analysed with Hessian-vector products (``loss.hessian_mode == "hvp"``) the refinement is
  hybrid eigenvector-following with a Lanczos lowest eigenvector
  (:func:`hessview.landscape.krylov.hybrid_eigenvector_following`); no ``P x P`` matrix is formed.
* Each transition state is joined to minima by quenching from :math:`x^\\dagger \\pm \\delta v_0`.
"""

from __future__ import annotations

import numpy as np

from hessview.landscape.krylov import hybrid_eigenvector_following
from hessview.landscape.network import RegularisedLoss
from hessview.landscape.quench import Stationary, analyse, quench


def _tangents(images: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Improved tangents (Henkelman & Jónsson 2000) at the interior images, unit length."""
    forward = images[2:] - images[1:-1]
    backward = images[1:-1] - images[:-2]
    e_prev, e_here, e_next = energies[:-2], energies[1:-1], energies[2:]
    up = (e_next > e_here) & (e_here > e_prev)
    down = (e_next < e_here) & (e_here < e_prev)
    d_max = np.maximum(np.abs(e_next - e_here), np.abs(e_prev - e_here))
    d_min = np.minimum(np.abs(e_next - e_here), np.abs(e_prev - e_here))
    towards_next = (e_next > e_prev)[:, None]
    mixed = np.where(
        towards_next,
        forward * d_max[:, None] + backward * d_min[:, None],
        forward * d_min[:, None] + backward * d_max[:, None],
    )
    tangent = np.where(up[:, None], forward, np.where(down[:, None], backward, mixed))
    norms = np.linalg.norm(tangent, axis=1, keepdims=True)
    return tangent / np.where(norms > 0, norms, 1.0)


def dneb(
    loss: RegularisedLoss,
    start: np.ndarray,
    end: np.ndarray,
    *,
    n_images: int = 10,
    spring: float = 1.0,
    iterations: int = 500,
    max_step: float = 0.1,
    ftol: float = 1e-2,
) -> tuple[np.ndarray, np.ndarray]:
    """Relax a doubly-nudged elastic band; return all images ``(n_images + 2, P)`` and their losses.

    Stops after ``iterations`` FIRE steps or once every image's DNEB force is below ``ftol`` (the band
    only has to bracket the saddles; eigenvector-following converges them).
    """
    fractions = np.linspace(0.0, 1.0, n_images + 2)[:, None]
    images = (1.0 - fractions) * start[None, :] + fractions * end[None, :]
    end_energies = np.array([loss.value(start), loss.value(end)])
    velocity = np.zeros_like(images[1:-1])
    dt, alpha, n_positive = 0.05, 0.1, 0
    for _ in range(iterations):
        interior_energies, gradients = loss.batch_value_and_gradient(images[1:-1])
        energies = np.concatenate([[end_energies[0]], interior_energies, [end_energies[1]]])
        tau = _tangents(images, energies)
        g_perp = gradients - (gradients * tau).sum(1, keepdims=True) * tau
        springs = spring * (images[2:] - 2 * images[1:-1] + images[:-2])
        lengths = spring * (
            np.linalg.norm(images[2:] - images[1:-1], axis=1)
            - np.linalg.norm(images[1:-1] - images[:-2], axis=1)
        )
        s_perp = springs - (springs * tau).sum(1, keepdims=True) * tau
        g_hat = g_perp / np.maximum(np.linalg.norm(g_perp, axis=1, keepdims=True), 1e-300)
        doubly = s_perp - (s_perp * g_hat).sum(1, keepdims=True) * g_hat
        force = -g_perp + lengths[:, None] * tau + doubly
        if np.linalg.norm(force, axis=1).max() < ftol:
            break
        power = (force * velocity).sum()
        if power > 0:
            f_norm, v_norm = np.linalg.norm(force), np.linalg.norm(velocity)
            velocity = (1 - alpha) * velocity + alpha * v_norm * force / max(f_norm, 1e-300)
            n_positive += 1
            if n_positive > 5:
                dt, alpha = min(1.1 * dt, 1.0), 0.99 * alpha
        else:
            velocity[:] = 0.0
            dt, alpha, n_positive = 0.5 * dt, 0.1, 0
        velocity += dt * force
        move = dt * velocity
        longest = np.linalg.norm(move, axis=1).max()
        if longest > max_step:
            move *= max_step / longest
        images[1:-1] += move
    interior_energies, _ = loss.batch_value_and_gradient(images[1:-1])
    return images, np.concatenate([[end_energies[0]], interior_energies, [end_energies[1]]])


def band_maxima(energies: np.ndarray) -> list[int]:
    """Indices of interior images that are local maxima of the band's energy profile.

    >>> band_maxima(np.array([0.0, 1.0, 0.5, 2.0, 0.1]))
    [1, 3]
    """
    return [
        i
        for i in range(1, len(energies) - 1)
        if energies[i] >= energies[i - 1] and energies[i] >= energies[i + 1]
    ]


def eigenvector_following(
    loss: RegularisedLoss,
    start: np.ndarray,
    guess: np.ndarray,
    *,
    gtol: float = 1e-9,
    max_iterations: int = 200,
    max_step: float = 0.2,
) -> Stationary | None:
    """Refine ``start`` to a saddle by following the mode nearest ``guess``; ``None`` on failure.

    A result always has gradient norm below ``gtol`` and exactly one negative Hessian eigenvalue.
    """
    if getattr(loss, "hessian_mode", "dense") == "hvp":
        found = hybrid_eigenvector_following(
            loss, start, guess, gtol=gtol, max_iterations=max_iterations, max_step=max_step
        )
        if found is None:
            return None
        point = analyse(loss, found[0], found[1])
        negative = point.eigenvalues < 0
        # the index counts only if a non-negative eigenvalue was resolved among the lowest ones
        return point if point.n_negative == 1 and not negative.all() else None
    coords = np.asarray(start, dtype=np.float64).copy()
    direction = np.asarray(guess, dtype=np.float64) / np.linalg.norm(guess)
    for _ in range(max_iterations):
        point = analyse(loss, coords)
        if point.gradient_norm < gtol:
            return point if point.n_negative == 1 else None
        overlaps = np.abs(point.eigenvectors.T @ direction)
        followed = int(np.argmax(overlaps)) if point.n_negative == 0 else 0
        direction = point.eigenvectors[:, followed]
        g = point.eigenvectors.T @ point.gradient
        b = np.where(np.abs(point.eigenvalues) > 1e-12, np.abs(point.eigenvalues), 1e-12)
        h = -2.0 * g / (b * (1.0 + np.sqrt(1.0 + 4.0 * g**2 / b**2)))
        h[followed] = -h[followed]
        h = np.clip(h, -max_step, max_step)
        coords = coords + point.eigenvectors @ h
    return None


def descend(loss: RegularisedLoss, ts: Stationary, displacement: float = 1e-2):
    """Quench from both sides of the transition state along its negative-curvature eigenvector."""
    mode = ts.eigenvectors[:, 0]
    return quench(loss, ts.coords + displacement * mode), quench(loss, ts.coords - displacement * mode)
