"""``Landscape``: the loss landscape of a small tanh network, sampled, stored and analysed."""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from hessview.landscape import basin_hopping
from hessview.landscape.basins import monotonic_sequence_basins
from hessview.landscape.conserved import ConservedWeights, conserved_weights
from hessview.landscape.database import Database, Minimum, TransitionState
from hessview.landscape.disconnectivity import DisconnectivityGraph, build, default_levels
from hessview.landscape.network import RegularisedLoss, TanhNetwork, single_thread
from hessview.landscape.quench import Stationary
from hessview.landscape.symmetry import align, canonicalise
from hessview.landscape.thermodynamics import occupation_probabilities
from hessview.landscape.transition_states import (
    band_maxima,
    descend,
    dneb,
    eigenvector_following,
)
from hessview.landscape.union_find import UnionFind

#: two stationary points are the same when their losses differ by less than this ...
ENERGY_TOLERANCE = 1e-6
#: ... and their coordinates, aligned over the network's symmetries, by less than this (Euclidean).
DISTANCE_TOLERANCE = 1e-3


def _as_numpy(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception as error:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(f"{name} must be array-like, got {type(values).__name__}") from error


def _check_inputs(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = _as_numpy(X, "X")
    y = _as_numpy(y, "y")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or not np.isfinite(X).all():
        raise ValueError("X must hold finite numbers")
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be 1-D with one label per row of X ({len(X)}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)) or np.any(y < 0):
        raise ValueError("y must hold non-negative integer class labels")
    y = y.astype(np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError("y must contain at least two classes")
    return X.astype(np.float64), y


class Landscape:
    """The regularised loss landscape of a one-hidden-layer tanh network on ``(X, y)``.

    Args:
        X: training inputs ``(n, n_features)`` (numpy array or torch tensor).
        y: integer class labels ``(n,)``.
        hidden: number of tanh hidden units.
        weight_decay: L2 coefficient :math:`\\lambda` in :math:`L + \\lambda/2\\,\\lVert\\theta\\rVert^2`.
        seed: seed of the basin-hopping chain.
        db: SQLite file to store minima and transition states in (resumed if it exists; a file made
            with other data, network, weight decay or seed is refused); ``None`` keeps an in-memory
            database.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(30, 2)); y = (X[:, 0] > 0).astype(int)
        >>> land = Landscape(X, y, hidden=2, weight_decay=1e-2).explore(n_steps=3, progress=False)
        >>> len(land.minima) >= 1, bool(land.minima[0].eigenvalues.min() > 0)
        (True, True)
    """

    def __init__(self, X, y, *, hidden: int = 4, weight_decay: float = 1e-3, seed: int = 0, db=None):
        X, y = _check_inputs(X, y)
        if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, numbers.Real)
            or not np.isfinite(weight_decay)
            or weight_decay < 0
        ):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if db is not None and not isinstance(db, str | os.PathLike):
            raise TypeError(f"db must be a path or None, got {type(db).__name__}")
        self.X, self.y = X, y
        self.hidden, self.weight_decay, self.seed = int(hidden), float(weight_decay), int(seed)
        self.network = TanhNetwork(X.shape[1], self.hidden, int(y.max()) + 1)
        self.loss = RegularisedLoss(self.network, X, y, self.weight_decay)
        digest = hashlib.sha256(X.tobytes() + y.tobytes()).hexdigest()
        meta = {
            "n_inputs": self.network.n_inputs,
            "hidden": self.hidden,
            "n_classes": self.network.n_classes,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "data_sha256": digest,
        }
        self.db = Database(db, meta)

    # ----------------------------------------------------------------------------- sampling
    def explore(
        self,
        n_steps: int = 100,
        *,
        temperature: float = 0.05,
        step_size: float = 1.0,
        callback: Callable[[int, Minimum | None, bool], None] | None = None,
        progress: bool = True,
    ) -> Landscape:
        """Run ``n_steps`` more basin-hopping steps, storing every minimum found; returns ``self``.

        ``callback(step, minimum, accepted)`` is called after each committed step (step 0 is the first
        quench of a new chain; ``minimum`` is ``None`` when a quench found no true minimum). The chain
        resumes from the database, so an interrupted run continues where it stopped.
        """
        if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        for name, value in (("temperature", temperature), ("step_size", step_size)):
            if not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        with single_thread():
            basin_hopping.run(self, int(n_steps), float(temperature), float(step_size), callback, progress)
        return self

    @property
    def minima(self) -> list[Minimum]:
        """All stored minima, by id."""
        return self.db.minima()

    @property
    def transition_states(self) -> list[TransitionState]:
        """All stored transition states, by id."""
        return self.db.transition_states()

    @property
    def global_minimum(self) -> Minimum:
        """The lowest stored minimum."""
        minima = self.minima
        if not minima:
            raise ValueError("the database holds no minima yet: call explore() first")
        return min(minima, key=lambda m: m.loss)

    def _find(self, coords: np.ndarray, candidates) -> int | None:
        """Id of the first candidate that is a symmetry copy of ``coords``, else ``None``."""
        for record in candidates:
            if align(self.network, record.coords, coords)[1] < DISTANCE_TOLERANCE:
                return record.id
        return None

    def _record_minimum(self, point: Stationary) -> tuple[int, bool]:
        """Store a minimum unless a symmetry copy is known; return its id and whether it is new.

        Call inside a transaction (``with self.db.connection:``).
        """
        window = (point.loss - ENERGY_TOLERANCE, point.loss + ENERGY_TOLERANCE)
        known = self._find(point.coords, self.db.minima(window))
        if known is not None:
            self.db.add_hit(known)
            return known, False
        coords = canonicalise(self.network, point.coords)
        new_id = self.db.add_minimum(point.loss, coords, point.eigenvalues, point.log_product)
        return new_id, True

    def _record_transition_state(self, ts: Stationary, plus: Stationary, minus: Stationary):
        with self.db.connection:
            first, _ = self._record_minimum(plus)
            second, _ = self._record_minimum(minus)
            if first == second:
                return None
            window = (ts.loss - ENERGY_TOLERANCE, ts.loss + ENERGY_TOLERANCE)
            if self._find(ts.coords, self.db.transition_states(window)) is not None:
                return None
            coords = canonicalise(self.network, ts.coords)
            ts_id = self.db.add_transition_state(
                ts.loss, coords, ts.eigenvalues, ts.log_product, first, second
            )
        return next(t for t in self.db.transition_states(window) if t.id == ts_id)

    # ----------------------------------------------------------------------- transition states
    def _components(self) -> UnionFind:
        union = UnionFind(m.id for m in self.minima)
        for ts in self.transition_states:
            union.union(ts.minimum1, ts.minimum2)
        return union

    def _band(self, first: int, second: int, n_images: int) -> list[TransitionState]:
        start = self.db.minimum(first).coords
        end, _ = align(self.network, start, self.db.minimum(second).coords)
        images, energies = dneb(self.loss, start, end, n_images=n_images)
        found = []
        for k in band_maxima(energies):
            ts = eigenvector_following(self.loss, images[k], images[k + 1] - images[k - 1])
            if ts is None:
                continue
            plus, minus = descend(self.loss, ts)
            if plus is None or minus is None:
                continue
            record = self._record_transition_state(ts, plus, minus)
            if record is not None:
                found.append(record)
        return found

    def _connect_pair(self, i: int, j: int, n_images: int, max_attempts: int) -> list[TransitionState]:
        found: list[TransitionState] = []
        tried: set[tuple[int, int]] = set()
        for _ in range(max_attempts):
            union = self._components()
            if union.find(i) == union.find(j):
                break
            side_i = [m for m in self.minima if union.find(m.id) == union.find(i)]
            side_j = [m for m in self.minima if union.find(m.id) == union.find(j)]
            pairs = sorted(
                (align(self.network, a.coords, b.coords)[1], a.id, b.id)
                for a in side_i
                for b in side_j
                if (a.id, b.id) not in tried
            )
            if not pairs:
                break
            _, a, b = pairs[0]
            tried.add((a, b))
            found += self._band(a, b, n_images)
        return found

    def connect(
        self,
        i: int | None = None,
        j: int | None = None,
        *,
        n_images: int = 10,
        max_attempts: int = 5,
        progress: bool = True,
    ) -> list[TransitionState]:
        """Find transition states joining minimum ``i`` to minimum ``j`` (OPTIM's connection algorithm).

        Each attempt runs a DNEB between the closest (aligned) pair of minima from the two disconnected
        sets, refines every band maximum by eigenvector-following, keeps saddles with exactly one negative
        Hessian eigenvalue and descends from them to the minima they join. With neither ``i`` nor ``j``,
        every minimum is connected to the global minimum. Returns the transition states newly stored.
        """
        ids = {m.id for m in self.minima}
        if (i is None) != (j is None):
            raise ValueError("give both minimum ids i and j, or neither")
        for name, value in (("i", i), ("j", j)):
            if value is not None and value not in ids:
                raise ValueError(f"{name}={value!r} is not the id of a stored minimum")
        if not isinstance(n_images, numbers.Integral) or n_images < 1:
            raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
        if not isinstance(max_attempts, numbers.Integral) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive integer, got {max_attempts!r}")
        pairs = (
            [(int(i), int(j))]
            if i is not None
            else [(self.global_minimum.id, m) for m in sorted(ids - {self.global_minimum.id})]
        )
        found: list[TransitionState] = []
        with single_thread():
            for a, b in tqdm(pairs, desc="connect", disable=not progress or len(pairs) < 2):
                found += self._connect_pair(a, b, int(n_images), int(max_attempts))
        return found

    # ------------------------------------------------------------------------------- analysis
    def _graph_data(self):
        energies = {m.id: m.loss for m in self.minima}
        edges = [(t.loss, t.minimum1, t.minimum2) for t in self.transition_states]
        return energies, edges

    def disconnectivity_graph(self, levels: int | Iterable[float] = 20) -> DisconnectivityGraph:
        """The disconnectivity graph at ``levels`` (a count of evenly spaced levels, or the energies)."""
        energies, edges = self._graph_data()
        if not energies:
            raise ValueError("the database holds no minima yet: call explore() first")
        if isinstance(levels, numbers.Integral) and not isinstance(levels, bool):
            if levels < 1:
                raise ValueError(f"levels must be a positive count, got {levels!r}")
            values = default_levels(list(energies.values()), [e[0] for e in edges], int(levels))
        else:
            values = np.asarray(list(levels), dtype=float)
            if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
                raise ValueError("levels must be a positive count or a 1-D sequence of finite losses")
        return build(energies, edges, values)

    def basins(self) -> dict[int, int]:
        """Monotonic sequence basins: ``{minimum id: id of its basin's bottom}``."""
        energies, edges = self._graph_data()
        return monotonic_sequence_basins(energies, edges)

    def _group_ids(self, group) -> list[int]:
        minima = {m.id: m for m in self.minima}
        if not minima:
            raise ValueError("the database holds no minima yet: call explore() first")
        if group is None:
            ids = list(minima)
        elif isinstance(group, numbers.Integral) and not isinstance(group, bool):
            basins = self.basins()
            if group not in set(basins.values()):
                raise ValueError(f"group={group!r} is not the bottom of a basin (see basins())")
            ids = [m for m, bottom in basins.items() if bottom == group]
        else:
            ids = [int(g) for g in group]
            missing = [g for g in ids if g not in minima]
            if missing or not ids:
                raise ValueError(f"group must name stored minima; unknown or empty: {missing or ids}")
        return sorted(ids, key=lambda m: minima[m].loss)

    def conserved_weights(self, group=None) -> ConservedWeights:
        """Aligned mean and spread of every weight over ``group``.

        ``group``: ``None`` (all minima), a basin bottom id from :meth:`basins`, or a list of minimum ids.
        """
        ids = self._group_ids(group)
        coords = [self.db.minimum(m).coords for m in ids]
        return conserved_weights(self.network, ids, coords)

    def feature_relevance(self, group=None) -> np.ndarray:
        """One relevance score per input feature from the conserved input weights of ``group``."""
        return self.conserved_weights(group).feature_relevance()

    def occupation_probabilities(self, temperature: float) -> dict[int, float]:
        """Harmonic-superposition equilibrium occupation probability of every minimum at ``temperature``."""
        minima = self.minima
        if not minima:
            raise ValueError("the database holds no minima yet: call explore() first")
        if not isinstance(temperature, numbers.Real):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        p = occupation_probabilities(
            np.array([m.loss for m in minima]),
            np.array([m.log_product for m in minima]),
            float(temperature),
        )
        return {m.id: float(pm) for m, pm in zip(minima, p, strict=True)}

    # ---------------------------------------------------------------------------- predictions
    def predict_proba(self, X, minimum: int | Minimum) -> np.ndarray:
        """Class probabilities of the network at a stored minimum (an id or a record) on inputs ``X``."""
        record = minimum if isinstance(minimum, Minimum) else self.db.minimum(minimum)
        X = _as_numpy(X, "X")
        if X.ndim != 2 or X.shape[1] != self.network.n_inputs:
            raise ValueError(f"X must have shape (n, {self.network.n_inputs}), got {X.shape}")
        return self.loss.predict_proba(record.coords, X)

    def accuracy(self, X, y, minimum: int | Minimum) -> float:
        """Fraction of ``(X, y)`` classified correctly by the network at a stored minimum."""
        y = _as_numpy(y, "y")
        return float((self.predict_proba(X, minimum).argmax(1) == y).mean())

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def __repr__(self) -> str:
        return (
            f"Landscape(n_inputs={self.network.n_inputs}, hidden={self.hidden}, "
            f"n_classes={self.network.n_classes}, weight_decay={self.weight_decay}, "
            f"minima={len(self.minima)}, transition_states={len(self.transition_states)})"
        )
