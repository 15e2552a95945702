r"""Configurations of the classical 2D Ising model by checkerboard Metropolis Monte Carlo.

Square lattice, ``L x L`` with periodic boundaries, :math:`H = -\sum_{\langle ij\rangle} s_i s_j`
(``J = k_B = 1``).  Exact results of the infinite lattice (Onsager 1944; Yang 1952):
:math:`T_c = 2/\ln(1 + \sqrt2) \approx 2.269`, spontaneous magnetisation
:math:`|m| = (1 - \sinh^{-4}(2/T))^{1/8}` below :math:`T_c`, and the energy per spin of
:func:`onsager_energy`.  A sample is labelled ordered (1) when ``T < T_c``, else disordered (0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import ellipk
from tqdm.auto import tqdm

from hessview.datasets._cache import load_arrays, resolve_cache_path, save_arrays

CRITICAL_TEMPERATURE = 2.0 / np.log1p(np.sqrt(2.0))


@dataclass(frozen=True)
class IsingData:
    """Ising configurations, ``n_per_T`` per temperature.

    Attributes:
        X: ``(n, L, L)`` spins, +1.0 or -1.0 (float64).
        y: ``(n,)`` int64 labels, 1 = ordered (``T < T_c``), 0 = disordered.
        temperature: ``(n,)`` temperature of each sample; also ``x``, the control parameter.
        magnetisation: ``(n,)`` mean spin of each configuration (signed).
        energy: ``(n,)`` energy per spin of each configuration.
    """

    X: np.ndarray
    y: np.ndarray
    temperature: np.ndarray
    magnetisation: np.ndarray
    energy: np.ndarray
    x_label: str = "T"

    @property
    def x(self) -> np.ndarray:
        """The control parameter of each sample (the temperature)."""
        return self.temperature

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, keep: np.ndarray) -> IsingData:
        """Return the samples selected by a boolean mask or an index array."""
        return IsingData(
            X=self.X[keep],
            y=self.y[keep],
            temperature=self.temperature[keep],
            magnetisation=self.magnetisation[keep],
            energy=self.energy[keep],
        )


def onsager_magnetisation(T) -> np.ndarray:
    r"""Return the spontaneous magnetisation :math:`(1 - \sinh^{-4}(2/T))^{1/8}` (0 above ``T_c``).

    >>> float(onsager_magnetisation(CRITICAL_TEMPERATURE + 0.1))
    0.0
    """
    T = np.asarray(T, dtype=np.float64)
    inside = np.clip(1.0 - np.sinh(2.0 / T) ** -4.0, 0.0, None)
    return inside**0.125


def onsager_energy(T) -> np.ndarray:
    r"""Return the exact energy per spin of the infinite square lattice (Onsager 1944).

    .. math::

        u = -\coth 2\beta \left[1 + \tfrac{2}{\pi}(2\tanh^2 2\beta - 1) K(k)\right],\quad
        k = \frac{2\sinh 2\beta}{\cosh^2 2\beta},

    with :math:`K` the complete elliptic integral of the first kind (``scipy.special.ellipk(k**2)``).

    >>> round(float(onsager_energy(CRITICAL_TEMPERATURE)), 4)   # -sqrt(2) at T_c
    -1.4142
    """
    beta = 1.0 / np.asarray(T, dtype=np.float64)
    k = 2.0 * np.sinh(2 * beta) / np.cosh(2 * beta) ** 2
    factor = 2.0 * np.tanh(2 * beta) ** 2 - 1.0  # vanishes at T_c, where K diverges logarithmically
    with np.errstate(invalid="ignore"):
        term = np.where(np.abs(factor) < 1e-12, 0.0, factor * ellipk(np.minimum(k**2, 1.0)))
    return -(1.0 + (2.0 / np.pi) * term) / np.tanh(2 * beta)


def _check_arguments(temperatures, L, n_per_T, seed, n_chains, n_equilibration, n_decorrelation):
    for name, value in (
        ("L", L),
        ("seed", seed),
        ("n_per_T", n_per_T),
        ("n_chains", n_chains),
        ("n_equilibration", n_equilibration),
        ("n_decorrelation", n_decorrelation),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if L < 2 or L % 2:
        raise ValueError(f"L must be even and >= 2 for the checkerboard update, got {L}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer (as numpy's generators need), got {seed}")
    if n_per_T < 1 or n_chains < 1 or n_decorrelation < 1 or n_equilibration < 0:
        raise ValueError("n_per_T, n_chains and n_decorrelation must be >= 1, n_equilibration >= 0")
    T = np.atleast_1d(np.asarray(temperatures, dtype=np.float64))
    if T.ndim != 1 or T.size == 0:
        raise ValueError(f"temperatures must be a non-empty 1-D array, got shape {T.shape}")
    if not np.all(np.isfinite(T)) or np.any(T <= 0):
        raise ValueError("temperatures must be finite and positive")
    return T


def ising_2d(
    temperatures,
    *,
    L: int = 16,
    n_per_T: int = 100,
    seed: int = 0,
    n_chains: int = 25,
    n_equilibration: int = 1000,
    n_decorrelation: int = 50,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> IsingData:
    """Return ``n_per_T`` equilibrium configurations at each temperature.

    For every temperature ``n_chains`` independent chains start ordered (all +1) and run
    ``n_equilibration`` checkerboard Metropolis sweeps; each chain then gives one configuration every
    ``n_decorrelation`` sweeps until ``n_per_T`` are collected.  Each configuration is flipped as a
    whole with probability 1/2 (the exact Z2 symmetry), so both signs of the magnetisation appear.
    All temperatures run together as one vectorised array.  Cached like :func:`fermi_hubbard_chain`.

    >>> data = ising_2d([1.0, 5.0], L=4, n_per_T=4, n_chains=2, n_equilibration=50,
    ...                 cache_dir=__import__("tempfile").mkdtemp(), progress=False)
    >>> data.X.shape, data.y.tolist()
    ((8, 4, 4), [1, 1, 1, 1, 0, 0, 0, 0])
    """
    T = _check_arguments(temperatures, L, n_per_T, seed, n_chains, n_equilibration, n_decorrelation)
    arguments = {
        "T": T,
        "L": int(L),
        "n_per_T": int(n_per_T),
        "seed": int(seed),
        "n_chains": int(n_chains),
        "n_equilibration": int(n_equilibration),
        "n_decorrelation": int(n_decorrelation),
    }
    path = resolve_cache_path("ising_2d", arguments, cache_dir)
    arrays = load_arrays(path)
    if arrays is None:
        arrays = _simulate(
            T,
            int(L),
            int(n_per_T),
            int(seed),
            min(int(n_chains), int(n_per_T)),
            int(n_equilibration),
            int(n_decorrelation),
            progress,
        )
        save_arrays(path, arrays)
    return IsingData(**arrays)


def _sweep(spins: np.ndarray, beta: np.ndarray, sublattices, rng) -> None:
    """One checkerboard Metropolis sweep in place; ``spins`` is ``(n_T, chains, L, L)``."""
    for sublattice in sublattices:
        field = (
            np.roll(spins, 1, -1) + np.roll(spins, -1, -1) + np.roll(spins, 1, -2) + np.roll(spins, -1, -2)
        )
        accept = rng.random(spins.shape, dtype=np.float32) < np.exp(-2.0 * beta * spins * field)
        spins[accept & sublattice] *= -1


def _simulate(T, L, n_per_T, seed, n_chains, n_equilibration, n_decorrelation, progress):
    rng = np.random.default_rng(seed)
    per_chain = -(-n_per_T // n_chains)
    spins = np.ones((len(T), n_chains, L, L), dtype=np.float32)
    beta = (1.0 / T).astype(np.float32)[:, None, None, None]
    parity = np.add.outer(np.arange(L), np.arange(L)) % 2
    sublattices = (parity == 0, parity == 1)
    samples = []
    total = n_equilibration + per_chain * n_decorrelation
    bar = tqdm(total=total, desc=f"Ising L={L} ({len(T)} T)", unit="sweep", disable=not progress)
    for sweep in range(1, total + 1):
        _sweep(spins, beta, sublattices, rng)
        if sweep > n_equilibration and (sweep - n_equilibration) % n_decorrelation == 0:
            samples.append(spins.copy())
        bar.update()
    bar.close()
    configs = np.stack(samples, axis=2).reshape(len(T), n_chains * per_chain, L, L)[:, :n_per_T]
    signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=configs.shape[:2])
    X = (configs * signs[:, :, None, None]).reshape(-1, L, L).astype(np.float64)
    temperature = np.repeat(T, n_per_T)
    bonds = X * (np.roll(X, -1, axis=-1) + np.roll(X, -1, axis=-2))
    return {
        "X": X,
        "y": (temperature < CRITICAL_TEMPERATURE).astype(np.int64),
        "temperature": temperature,
        "magnetisation": X.mean(axis=(1, 2)),
        "energy": -bonds.mean(axis=(1, 2)),
    }
