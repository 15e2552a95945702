r"""Ground states of the extended spinless Fermi-Hubbard chain by exact diagonalisation.

The model of Dawid et al., MLST 3, 015002 (2022), Sec. 4 (conventions in
``shared/reference/dawid2021/README.md``): ``L`` sites on a ring, ``N`` fermions, ``J = 1``,

.. math::

    H = -\frac{J}{2}\sum_i (c^\dagger_i c_{i+1} + \mathrm{h.c.})
        + V_1 \sum_i (n_i - \tfrac12)(n_{i+1} - \tfrac12)
        + V_2 \sum_i (n_i - \tfrac12)(n_{i+2} - \tfrac12)
        + h_1 \sum_i (-1)^i n_i .

Every hopping matrix element is ``-J/2`` (no fermionic sign across the boundary, the matrix is
stoquastic), so the ground state has non-negative amplitudes.  For even ``N`` this is the free-fermion
chain with antiperiodic boundary conditions.  Basis: the ``C(L, N)`` integers with ``N`` of ``L`` bits
set, in descending order; site ``i`` is bit ``L - 1 - i``.  The label is 1 (CDW) when the order
parameter :math:`\frac1L\sum_i |\langle n_i\rangle - \langle n_{i+1}\rangle|` exceeds ``10 |h1|``, else 0
(Luttinger liquid).  At ``L = 12`` the LL -> CDW-I transition is at ``V1/J = 1``.

The field ``h1`` must not vanish: without it the two CDW patterns are degenerate, the ground state of
the finite ring is unique (Perron-Frobenius) and therefore translation invariant, so
:math:`\langle n_i\rangle = N/L` on every site, the order parameter is zero and every CDW state
would be labelled LL.  In linear response the order parameter is :math:`\chi h_1`, so the rule
"order > 10 |h1|" reads :math:`\chi > 10` and the labels do not depend on ``h1`` as long as
``10 |h1|`` stays above the round-off of the order parameter (``1e-10``): ``|h1| >= 1e-11`` is
required (the paper uses ``1e-7``).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh
from tqdm.auto import tqdm

from hessview.datasets._cache import load_arrays, resolve_cache_path, save_arrays

HOPPING = -0.5  # every hopping matrix element, -J/2 with J = 1
ROUND_OFF = 1e-10  # round-off of the order parameter; the label threshold 10 |h1| must exceed it
MIN_FIELD = 1e-11  # = ROUND_OFF / 10, smallest |h1| whose threshold 10 |h1| stays above round-off


@dataclass(frozen=True)
class FermiHubbardData:
    r"""Ground states of the extended Fermi-Hubbard chain, one row per value of the control parameter.

    Attributes:
        X: ``(n, C(L, N))`` ground-state amplitudes in the Fock basis (non-negative, unit norm).
        y: ``(n,)`` int64 labels, 0 = Luttinger liquid, 1 = CDW (order-parameter rule).
        V1: ``(n,)`` nearest-neighbour interaction ``V1/J``; also ``x``, the control parameter.
        V2: ``(n,)`` next-nearest-neighbour interaction ``V2/J``.
        density: ``(n, L)`` site occupations ``<n_i>``.
        order_parameter: ``(n,)`` :math:`\frac1L\sum_i |\langle n_i\rangle - \langle n_{i+1}\rangle|`.
        energy: ``(n,)`` ground-state energy in units of ``J``.
    """

    X: np.ndarray
    y: np.ndarray
    V1: np.ndarray
    V2: np.ndarray
    density: np.ndarray
    order_parameter: np.ndarray
    energy: np.ndarray
    x_label: str = "V1/J"

    @property
    def x(self) -> np.ndarray:
        """The control parameter of each sample (``V1/J``)."""
        return self.V1

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, keep: np.ndarray) -> FermiHubbardData:
        """Return the samples selected by a boolean mask or an index array."""
        return FermiHubbardData(
            X=self.X[keep],
            y=self.y[keep],
            V1=self.V1[keep],
            V2=self.V2[keep],
            density=self.density[keep],
            order_parameter=self.order_parameter[keep],
            energy=self.energy[keep],
            x_label=self.x_label,
        )


def fock_basis(L: int, N: int) -> np.ndarray:
    """Return the ``C(L, N)`` integers with ``N`` of their ``L`` lowest bits set, descending.

    >>> fock_basis(4, 2).tolist()
    [12, 10, 9, 6, 5, 3]
    """
    states = np.arange(2**L, dtype=np.int64)
    bits = (states[:, None] >> np.arange(L)) & 1
    return states[bits.sum(axis=1) == N][::-1].copy()


def occupations(basis: np.ndarray, L: int) -> np.ndarray:
    """Return ``(len(basis), L)`` occupations ``n_i`` with site ``i`` stored in bit ``L - 1 - i``."""
    return ((basis[:, None] >> (L - 1 - np.arange(L))) & 1).astype(np.float64)


def hopping_matrix(basis: np.ndarray, L: int) -> sp.csr_matrix:
    """Return the hopping part of ``H``: ``-J/2`` between states that differ by one hop on the ring."""
    index = np.full(2**L, -1, dtype=np.int64)
    index[basis] = np.arange(len(basis))
    occ = occupations(basis, L).astype(bool)
    rows, cols = [], []
    for i in range(L):
        j = (i + 1) % L
        movable = occ[:, i] != occ[:, j]
        flip = (1 << (L - 1 - i)) | (1 << (L - 1 - j))
        rows.append(np.flatnonzero(movable))
        cols.append(index[basis[movable] ^ flip])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    data = np.full(len(rows), HOPPING)
    dim = len(basis)
    return sp.coo_matrix((data, (rows, cols)), shape=(dim, dim)).tocsr()


class _ChainHamiltonian:
    """``H(V1, V2, h1) = T + diag(V1 d1 + V2 d2 + h1 dh)`` with the pieces built once per ``(L, N)``."""

    def __init__(self, L: int, N: int):
        self.L, self.N = L, N
        self.basis = fock_basis(L, N)
        self.occ = occupations(self.basis, L)
        shifted = self.occ - 0.5
        self.d1 = (shifted * np.roll(shifted, -1, axis=1)).sum(axis=1)
        self.d2 = (shifted * np.roll(shifted, -2, axis=1)).sum(axis=1)
        self.dh = self.occ @ (-1.0) ** np.arange(L)
        self.hopping = hopping_matrix(self.basis, L)

    def matrix(self, V1: float, V2: float, h1: float) -> sp.csr_matrix:
        diagonal = V1 * self.d1 + V2 * self.d2 + h1 * self.dh
        return (self.hopping + sp.diags(diagonal)).tocsr()

    def ground_state(self, V1: float, V2: float, h1: float) -> tuple[float, np.ndarray]:
        """Return the lowest eigenvalue and its (non-negative, normalised) eigenvector."""
        H = self.matrix(V1, V2, h1)
        start = np.ones(len(self.basis))  # overlaps the Perron-Frobenius ground state
        values, vectors = eigsh(H, k=1, which="SA", v0=start, tol=1e-14, ncv=40, maxiter=100_000)
        # Perron-Frobenius: the exact ground state is positive; abs() removes the overall sign and the
        # round-off sign of amplitudes below 1e-15.
        state = np.abs(vectors[:, 0])
        return float(values[0]), state / np.linalg.norm(state)


def order_parameter(density: np.ndarray) -> np.ndarray:
    r"""Return the CDW order parameter :math:`\frac1L\sum_i |n_i - n_{i+1}|` (ring) of each row.

    >>> order_parameter(np.array([[1.0, 0.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]])).tolist()
    [1.0, 0.0]
    """
    return np.abs(density - np.roll(density, -1, axis=1)).mean(axis=1)


def _check_arguments(V1, V2, L, N, h1) -> tuple[np.ndarray, np.ndarray]:
    for name, value in (("L", L), ("N", N)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if L < 3 or L > 24:
        raise ValueError(f"L must be between 3 and 24 sites, got {L}")
    if not 0 < N < L:
        raise ValueError(f"N must satisfy 0 < N < L = {L}, got {N}")
    if isinstance(h1, bool) or not isinstance(h1, (int, float, np.integer, np.floating)):
        raise TypeError(f"h1 must be a number, got {type(h1).__name__}")
    if not np.isfinite(h1):
        raise ValueError(f"h1 must be finite, got {h1}")
    if abs(h1) < MIN_FIELD:
        raise ValueError(
            f"h1 = {h1!r} is too small to label the states: the CDW label needs a symmetry-breaking field "
            f"with |h1| >= {MIN_FIELD:g}. Without it the two CDW patterns are degenerate, the ground state "
            "of the finite ring is their translation-invariant superposition with <n_i> = N/L, and every "
            "CDW state would be labelled LL; use a small field such as the paper's h1 = 1e-7"
        )
    V1 = np.atleast_1d(np.asarray(V1, dtype=np.float64))
    if V1.ndim != 1 or V1.size == 0:
        raise ValueError(f"V1 must be a number or a non-empty 1-D array, got shape {V1.shape}")
    V2 = np.broadcast_to(np.asarray(V2, dtype=np.float64), V1.shape).copy()
    if not (np.all(np.isfinite(V1)) and np.all(np.isfinite(V2))):
        raise ValueError("V1 and V2 must be finite")
    return V1, V2


def fermi_hubbard_chain(
    V1,
    *,
    V2=0.0,
    L: int = 12,
    N: int = 6,
    h1: float = 1e-7,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> FermiHubbardData:
    """Return the ground states of the extended Fermi-Hubbard chain for each ``V1`` (and ``V2``).

    Exact diagonalisation (``scipy.sparse.linalg.eigsh``, Lanczos) of ``H`` in the module docstring.
    Results are cached in ``cache_dir`` (default ``hessview._io.cache_dir("datasets")``) under a key made
    of every argument, so a second call only reads the file.

    Args:
        V1: interaction ``V1/J``, a number or a 1-D array.
        V2: next-nearest-neighbour interaction, a number or an array like ``V1``.
        L: number of sites (ring).
        N: number of fermions.
        h1: staggered symmetry-breaking field, ``|h1| >= 1e-11`` (see the module docstring); the
            label threshold is ``10 |h1|``.
        cache_dir: folder for the ``.npz`` cache.
        progress: show a tqdm progress bar while diagonalising.

    >>> data = fermi_hubbard_chain([0.0, 40.0], L=6, N=3, cache_dir=__import__("tempfile").mkdtemp(),
    ...                            progress=False)
    >>> data.X.shape, data.y.tolist()
    ((2, 20), [0, 1])
    """
    V1, V2 = _check_arguments(V1, V2, L, N, h1)
    h1 = float(h1)
    path = resolve_cache_path(
        "fermi_hubbard", {"V1": V1, "V2": V2, "L": int(L), "N": int(N), "h1": h1}, cache_dir
    )
    arrays = load_arrays(path)
    if arrays is None:
        arrays = _diagonalise(V1, V2, int(L), int(N), h1, progress)
        save_arrays(path, arrays)
    return FermiHubbardData(**arrays)


def _diagonalise(V1, V2, L, N, h1, progress) -> dict[str, np.ndarray]:
    chain = _ChainHamiltonian(L, N)
    X = np.empty((len(V1), comb(L, N)))
    energy = np.empty(len(V1))
    steps = tqdm(range(len(V1)), desc=f"ED L={L} N={N}", disable=not progress)
    for k in steps:
        energy[k], X[k] = chain.ground_state(V1[k], V2[k], h1)
    density = (X**2) @ chain.occ
    order = order_parameter(density)
    y = (order > 10 * abs(h1)).astype(np.int64)
    return {
        "X": X,
        "y": y,
        "V1": V1,
        "V2": V2,
        "density": density,
        "order_parameter": order,
        "energy": energy,
    }


def _training_grid() -> np.ndarray:
    return np.concatenate([np.linspace(0.0, 1.0, 500), np.linspace(1.01, 40.0, 500)])


#: The paper's grids of ``V1/J`` (reference README).  ``train_edges`` and ``train_middle`` are the
#: training points inside restricted windows, for extrapolation experiments.
FERMI_HUBBARD_GRIDS = {
    "train": "linspace(0, 1, 500) U linspace(1.01, 40, 500): 1000 points, 501 LL, 499 CDW",
    "validation": "linspace(0.02, 0.998, 100) U linspace(1.03, 39.998, 100): 200 points",
    "test": "linspace(0.01, 0.999, 21)[:20] U geomspace(1.02, 39, 30): 50 points",
    "train_edges": "training points with V1 in [0, 0.25] U [36, 40]: 125 LL + 52 CDW points",
    "train_middle": "training points with V1 in [0.75, 20]: 126 LL + 243 CDW points",
}


def fermi_hubbard_grid(name: str) -> np.ndarray:
    """Return the ``V1/J`` values of a named split (see ``FERMI_HUBBARD_GRIDS``).

    >>> len(fermi_hubbard_grid("train")), len(fermi_hubbard_grid("test"))
    (1000, 50)
    """
    if not isinstance(name, str):
        raise TypeError(f"split name must be a string, got {type(name).__name__}")
    if name == "validation":
        return np.concatenate([np.linspace(0.02, 0.998, 100), np.linspace(1.03, 39.998, 100)])
    if name == "test":
        return np.concatenate([np.linspace(0.01, 0.999, 21)[:20], np.geomspace(1.02, 39.0, 30)])
    V1 = _training_grid()
    if name == "train":
        return V1
    if name == "train_edges":
        return V1[(V1 <= 0.25) | (V1 >= 36.0)]
    if name == "train_middle":
        return V1[(V1 >= 0.75) & (V1 <= 20.0)]
    raise ValueError(f"unknown split {name!r}; choose one of {sorted(FERMI_HUBBARD_GRIDS)}")


def fermi_hubbard_split(name: str, **kwargs) -> FermiHubbardData:
    """Return a named split of the paper's data (``L = 12``, ``N = 6``, ``V2 = 0``, ``h1 = 1e-7``).

    ``kwargs`` go to :func:`fermi_hubbard_chain` (``cache_dir``, ``progress``); the restricted windows
    are cut from the cached training set.
    """
    V1 = fermi_hubbard_grid(name)
    if name.startswith("train_"):
        train = fermi_hubbard_chain(_training_grid(), **kwargs)
        return train.subset(np.isin(train.V1, V1))
    return fermi_hubbard_chain(V1, **kwargs)
