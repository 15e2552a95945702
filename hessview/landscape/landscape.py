"""``Landscape``: the loss landscape of a small tanh network, sampled, stored and analysed."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import numbers
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from scipy.special import logsumexp
from tqdm.auto import tqdm

from hessview._io import atomic_path
from hessview.engine.errors import ApproximationWarning
from hessview.landscape import basin_hopping
from hessview.landscape.basins import RULES, monotonic_sequence_basins
from hessview.landscape.conserved import ConservedWeights, bootstrap_relevance, conserved_weights
from hessview.landscape.database import Database, Minimum, TransitionState
from hessview.landscape.disconnectivity import DisconnectivityGraph, build, default_levels
from hessview.landscape.network import RegularisedLoss, TanhNetwork, single_thread
from hessview.landscape.quench import Stationary, analyse
from hessview.landscape.symmetry import align, canonicalise, point_group_order
from hessview.landscape.thermodynamics import (
    _check_temperature,
    heat_capacity,
    log_partition_functions,
    log_rates,
    occupation_probabilities,
)
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
#: the most classes a landscape network may have (the output layer is dense: c * (hidden + 1) weights)
MAX_CLASSES = 1000
#: a minimum is harmonic at T when its thermal amplitude sqrt(T / lambda_min) is below this fraction of
#: the distance to the nearest other minimum
HARMONIC_FRACTION = 0.5


def _as_numpy(values, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values)
    except Exception as error:  # noqa: BLE001 - re-raised with the argument's name
        raise TypeError(f"{name} must be array-like, got {type(values).__name__}") from error


def _check_labels(y, n: int, name: str = "y") -> np.ndarray:
    y = _as_numpy(y, name)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name} must be 1-D with one label per row of X ({n}), got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number) or not np.isfinite(y).all():
        raise ValueError(f"{name} must hold non-negative integer class labels")
    if np.any(y != np.round(y)) or np.any(y < 0):
        raise ValueError(f"{name} must hold non-negative integer class labels")
    return y.astype(np.int64)


def _check_inputs(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = _as_numpy(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if len(X) == 0 or X.shape[1] == 0:
        raise ValueError(f"X must hold at least one sample and one feature, got shape {X.shape}")
    if X.dtype == bool or not np.issubdtype(X.dtype, np.number) or not np.isfinite(X).all():
        raise ValueError("X must hold finite numbers")
    y = _check_labels(y, len(X))
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError("y must contain at least two classes")
    if classes[-1] >= MAX_CLASSES or len(classes) != classes[-1] + 1:
        shown = ", ".join(str(c) for c in classes[:10]) + (", ..." if len(classes) > 10 else "")
        raise ValueError(
            f"y must hold the class labels 0, 1, ..., K-1 with every class present (the network gets one "
            f"output per class, at most {MAX_CLASSES}); got the labels {{{shown}}}: map them to "
            "0..K-1 first, e.g. with numpy.unique(y, return_inverse=True)"
        )
    return X.astype(np.float64), y


def _positive_log_product(point: Stationary) -> float:
    """:math:`\\sum \\log\\lambda_i` over the positive, nonzero eigenvalues (PATHSAMPLE's ``fvib``).

    ``nan`` when only the lowest eigenvalues were computed (Hessian-vector-product mode).
    """
    if not point.complete:
        return float("nan")
    eigenvalues = point.eigenvalues
    scale = max(1.0, float(np.abs(eigenvalues).max()))
    positive = eigenvalues[eigenvalues > 1e-9 * scale]
    return float(np.log(positive).sum())


class Landscape:
    """The regularised loss landscape of a one-hidden-layer tanh network on ``(X, y)``.

    The inputs are standardised before the network sees them: feature :math:`i` becomes
    :math:`(x_i - \\bar x_i)/s_i` with the training mean and standard deviation (``feature_mean``,
    ``feature_scale``; a constant feature keeps scale 1). Weights, relevance and every query therefore do
    not depend on the units of any feature; :meth:`predict_proba` applies the same transform to new
    inputs. ``X`` is the standardised training set, ``X_raw`` the one given.

    Args:
        X: training inputs ``(n, n_features)`` (numpy array or torch tensor).
        y: integer class labels ``(n,)``: ``0, 1, ..., K-1`` with every class present.
        hidden: number of tanh hidden units.
        weight_decay: L2 coefficient :math:`\\lambda > 0` in :math:`L + \\lambda/2\\,\\lVert\\theta\\rVert^2`
            (without it separable data has no minimum: the loss keeps falling as the weights grow).
        seed: seed of the basin-hopping chain.
        db: SQLite file to store minima and transition states in (resumed if it exists; a file made
            with other data, network, weight decay or seed, or any file that is not a hessview landscape
            database, is refused and left untouched; one ``Landscape`` at a time may write to it: a
            second writer is refused with ``DatabaseInUseError``); ``None`` keeps an in-memory database.
        hessian: how curvature is computed. ``"dense"``: the exact ``P x P`` Hessian and its full
            spectrum at every step (stores all eigenvalues and the log products that kinetics and
            thermodynamics need). ``"hvp"``: Hessian-vector products only, for networks with thousands of
            weights: Lanczos lowest eigenpairs, truncated-CG Newton steps and hybrid
            eigenvector-following (:mod:`hessview.landscape.krylov`); each stationary point then stores
            only its ``N_LOWEST`` lowest eigenvalues, its ``log_product`` is ``nan``, and
            :meth:`rates`, :meth:`occupation_probabilities`, :meth:`heat_capacity` and
            :meth:`free_energy_graph` refuse to run. ``"auto"`` (default): dense up to
            ``hessview.landscape.network.DENSE_MAX_PARAMS`` (1500) weights, HVP above.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(30, 2)); y = (X[:, 0] > 0).astype(int)
        >>> land = Landscape(X, y, hidden=2, weight_decay=1e-2).explore(n_steps=3, progress=False)
        >>> len(land.minima) >= 1, bool(land.minima[0].eigenvalues.min() > 0)
        (True, True)
    """

    def __init__(
        self,
        X,
        y,
        *,
        hidden: int = 4,
        weight_decay: float = 1e-3,
        seed: int = 0,
        db=None,
        hessian: str = "auto",
    ):
        X, y = _check_inputs(X, y)
        if isinstance(hidden, bool) or not isinstance(hidden, numbers.Integral) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, numbers.Real)
            or not np.isfinite(weight_decay)
            or weight_decay <= 0
        ):
            raise ValueError(
                f"weight_decay must be a finite number > 0, got {weight_decay!r} (with no weight decay "
                "a separable data set has no minimum at finite weights)"
            )
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if db is not None and not isinstance(db, str | os.PathLike):
            raise TypeError(f"db must be a path or None, got {type(db).__name__}")
        self.X_raw, self.y = X, y
        self.feature_mean = X.mean(0)
        scale = X.std(0)
        self.feature_scale = np.where(scale > 0, scale, 1.0)
        self.X = (X - self.feature_mean) / self.feature_scale
        self.hidden, self.weight_decay, self.seed = int(hidden), float(weight_decay), int(seed)
        self.network = TanhNetwork(X.shape[1], self.hidden, int(y.max()) + 1)
        self.loss = RegularisedLoss(self.network, self.X, y, self.weight_decay, hessian)
        #: ``"dense"`` or ``"hvp"``: how curvature is computed (the resolved ``hessian`` argument)
        self.hessian_mode = self.loss.hessian_mode
        digest = hashlib.sha256(
            np.asarray(X.shape, np.int64).tobytes() + X.tobytes() + y.tobytes()
        ).hexdigest()
        meta = {
            "network": "tanh, softmax cross-entropy, standardised inputs",
            "n_inputs": self.network.n_inputs,
            "hidden": self.hidden,
            "n_classes": self.network.n_classes,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "data_sha256": digest,
        }
        if self.hessian_mode == "hvp":  # its points hold the lowest eigenvalues only: never mixed with dense
            meta["hessian"] = "hvp: lowest eigenvalues only, no log products"
        self.db = Database(db, meta)
        self.step_size_: float | None = None
        self._distances: dict[tuple[int, int], float] = {}
        self._matrix, self._matrix_ids = np.zeros((0, 0)), []
        self._coords: dict[int, np.ndarray] = {}
        self._orders: dict[tuple[str, int], int] = {}
        self._toolboxes: dict = {}

    # ----------------------------------------------------------------------------- sampling
    def explore(
        self,
        n_steps: int = 100,
        *,
        temperature: float = 0.05,
        step_size: float = 1.0,
        target_acceptance: float | None = None,
        adjust_every: int = 10,
        callback: Callable[[int, Minimum | None, bool], None] | None = None,
        progress: bool = True,
    ) -> Landscape:
        """Run ``n_steps`` more basin-hopping steps, storing every minimum found; returns ``self``.

        ``callback(step, minimum, accepted)`` is called after each committed step (step 0 is the first
        quench of a new chain; ``minimum`` is ``None`` when a quench found no true minimum). The chain
        resumes from the database, so an interrupted run continues where it stopped.

        With ``target_acceptance`` (in (0, 1)) the step size adapts to that acceptance ratio as GMIN's
        does (multiplied or divided by 1.1 after every ``adjust_every`` steps; the adapted size is stored
        with the chain and resumed); ``step_size`` is then the starting size. ``step_size_`` holds the
        size in use at the end.
        """
        if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or n_steps < 0:
            raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
        for name, value in (("temperature", temperature), ("step_size", step_size)):
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not np.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if target_acceptance is not None and (
            isinstance(target_acceptance, bool)
            or not isinstance(target_acceptance, numbers.Real)
            or not 0 < target_acceptance < 1
        ):
            raise ValueError(
                f"target_acceptance must be a number in (0, 1) or None, got {target_acceptance!r}"
            )
        if (
            isinstance(adjust_every, bool)
            or not isinstance(adjust_every, numbers.Integral)
            or adjust_every < 1
        ):
            raise ValueError(f"adjust_every must be a positive integer, got {adjust_every!r}")
        self.db.acquire_writer()
        with single_thread():
            self.step_size_ = basin_hopping.run(
                self,
                int(n_steps),
                float(temperature),
                float(step_size),
                callback,
                progress,
                None if target_acceptance is None else float(target_acceptance),
                int(adjust_every),
            )
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

    def _minima_or_raise(self) -> list[Minimum]:
        minima = self.minima
        if not minima:
            raise ValueError("the database holds no minima yet: call explore() first")
        return minima

    def _find(self, coords: np.ndarray, candidates) -> int | None:
        """Id of the first candidate that is a symmetry copy of ``coords``, else ``None``."""
        for record in candidates:
            if align(self.network, record.coords, coords)[1] < DISTANCE_TOLERANCE:
                return record.id
        return None

    def _record_minimum(self, point: Stationary, *, count_hit: bool = True) -> tuple[int, bool]:
        """Store a minimum unless a symmetry copy is known; return its id and whether it is new.

        ``count_hit``: count the find in ``hits`` (basin-hopping quenches; not descents from transition
        states). Call inside ``with self.db.transaction():`` so the duplicate check and the insert run
        under one write lock.
        """
        window = (point.loss - ENERGY_TOLERANCE, point.loss + ENERGY_TOLERANCE)
        known = self._find(point.coords, self.db.minima(window))
        if known is not None:
            if count_hit:
                self.db.add_hit(known)
            return known, False
        coords = canonicalise(self.network, point.coords)
        new_id = self.db.add_minimum(
            point.loss, coords, point.eigenvalues, point.log_product, hits=int(count_hit)
        )
        return new_id, True

    def _record_transition_state(self, ts: Stationary, plus: Stationary, minus: Stationary):
        with self.db.transaction():
            first, _ = self._record_minimum(plus, count_hit=False)
            second, _ = self._record_minimum(minus, count_hit=False)
            if first == second:
                return None
            window = (ts.loss - ENERGY_TOLERANCE, ts.loss + ENERGY_TOLERANCE)
            if self._find(ts.coords, self.db.transition_states(window)) is not None:
                return None
            coords = canonicalise(self.network, ts.coords)
            ts_id = self.db.add_transition_state(
                ts.loss, coords, ts.eigenvalues, _positive_log_product(ts), first, second
            )
        return next(t for t in self.db.transition_states(window) if t.id == ts_id)

    # ----------------------------------------------------------------------- transition states
    def _components(self, minima=None, transition_states=None) -> UnionFind:
        minima = self.minima if minima is None else minima
        union = UnionFind(m.id for m in minima)
        for ts in self.transition_states if transition_states is None else transition_states:
            union.union(ts.minimum1, ts.minimum2)
        return union

    def connected_sets(self) -> list[set[int]]:
        """Sets of minimum ids joined by paths of transition states, largest first (ties: lowest first)."""
        minima = self.minima
        energy = {m.id: m.loss for m in minima}
        groups = self._components(minima).groups()
        return sorted(groups, key=lambda g: (-len(g), min(energy[m] for m in g)))

    def _coordinates(self, minimum_id: int) -> np.ndarray:
        if minimum_id not in self._coords:
            self._coords[minimum_id] = self.db.minimum(minimum_id).coords
        return self._coords[minimum_id]

    def distance(self, a: int, b: int) -> float:
        """Euclidean distance between minima ``a`` and ``b`` after the best alignment (cached)."""
        key = (min(a, b), max(a, b))
        if key not in self._distances:
            self._distances[key] = (
                0.0
                if a == b
                else align(self.network, self._coordinates(key[0]), self._coordinates(key[1]))[1]
            )
        return self._distances[key]

    def _distance_matrix(self, ids: list[int]) -> np.ndarray:
        """Aligned distances between the minima ``ids``, cached (ids only grow: new rows are computed)."""
        known = self._matrix_ids
        if ids[: len(known)] != known:
            known, self._matrix = [], np.zeros((0, 0))
        n, old = len(ids), len(known)
        if n > old:
            matrix = np.zeros((n, n))
            matrix[:old, :old] = self._matrix
            for k in range(old, n):
                for j in range(k):
                    matrix[k, j] = matrix[j, k] = self.distance(ids[j], ids[k])
            self._matrix, self._matrix_ids = matrix, list(ids)
        return self._matrix[:n, :n]

    def _band(self, first: int, second: int, n_images: int) -> list[TransitionState]:
        start = self._coordinates(first)
        end, _ = align(self.network, start, self._coordinates(second))
        images, energies = dneb(self.loss, start, end, n_images=n_images)
        found = []
        # a band with no interior maximum still climbs towards its highest image: refine that one
        for k in band_maxima(energies) or [1 + int(np.argmax(energies[1:-1]))]:
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

    def _missing_connection_path(self, source, target, minima, union, tried) -> list[tuple[int, int]] | None:
        """OPTIM's Dijkstra missing-connection search: the pairs of minima to try next.

        Every pair of minima is an edge: pairs joined by a transition state cost (almost) nothing,
        pairs in different connected sets not tried yet cost their squared aligned distance, others are
        absent. The shortest path from ``source`` to ``target`` then strings known connections together
        through short unknown gaps; its unknown gaps are returned in path order (``None``: no path).
        """
        ids = [m.id for m in minima]
        index = {m: k for k, m in enumerate(ids)}
        roots = np.array([union.find(m) for m in ids])
        weights = np.where(roots[:, None] != roots[None, :], self._distance_matrix(ids) ** 2 + 1e-12, 0.0)
        for pair in tried:
            a, b = (index[m] for m in pair)
            weights[a, b] = weights[b, a] = 0.0
        known = np.zeros((len(ids), len(ids)), dtype=bool)
        for ts in self.transition_states:
            a, b = index[ts.minimum1], index[ts.minimum2]
            weights[a, b] = weights[b, a] = 1e-12
            known[a, b] = known[b, a] = True
        # sparse input: a dense matrix would drop the tiny weights of known connections as zeros
        dist, predecessors = dijkstra(
            csr_matrix(weights), directed=False, indices=index[source], return_predecessors=True
        )
        end = index[target]
        if not np.isfinite(dist[end]):
            return None
        path = [end]
        while path[-1] != index[source]:
            path.append(int(predecessors[path[-1]]))
        path.reverse()
        return [(ids[a], ids[b]) for a, b in itertools.pairwise(path) if not known[a, b]]

    def connect(
        self,
        i: int | None = None,
        j: int | None = None,
        *,
        n_images: int = 10,
        max_attempts: int | None = None,
        progress: bool = True,
    ) -> list[TransitionState]:
        """Join minima by transition states until one connected set holds them, or the budget runs out.

        As PATHSAMPLE grows a database with OPTIM: with neither ``i`` nor ``j``, the lowest minimum not
        yet connected to the global minimum is the target; OPTIM's Dijkstra missing-connection search
        (:meth:`_missing_connection_path`) picks the pairs of minima to try, and each try runs a DNEB
        between the aligned pair, refines every band maximum by eigenvector-following, keeps saddles with
        exactly one negative Hessian eigenvalue and descends from them to the minima they join. Minima
        found by those descents join the database and are themselves connected by later attempts. A pair
        that failed is not tried again in this call. With ``i`` and ``j``, only that pair is connected.

        Args:
            i: id of one minimum to connect, or ``None`` (connect the whole database).
            j: id of the other minimum (``None`` when ``i`` is).
            n_images: images of each band.
            max_attempts: the most bands to run (default ``5 x`` the number of minima at the start).
            progress: show a tqdm bar of attempts.

        Returns:
            The transition states newly stored; :meth:`connected_sets` tells what is still apart.
        """
        minima = self._minima_or_raise()
        ids = {m.id for m in minima}
        if (i is None) != (j is None):
            raise ValueError("give both minimum ids i and j, or neither")
        for name, value in (("i", i), ("j", j)):
            if value is not None and value not in ids:
                raise ValueError(f"{name}={value!r} is not the id of a stored minimum")
        if isinstance(n_images, bool) or not isinstance(n_images, numbers.Integral) or n_images < 1:
            raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
        if max_attempts is not None and (
            isinstance(max_attempts, bool)
            or not isinstance(max_attempts, numbers.Integral)
            or max_attempts < 1
        ):
            raise ValueError(f"max_attempts must be a positive integer or None, got {max_attempts!r}")
        budget = 5 * len(minima) if max_attempts is None else int(max_attempts)
        self.db.acquire_writer()
        tried: set[frozenset] = set()
        skipped: set[int] = set()
        found: list[TransitionState] = []
        attempts = 0
        bar = tqdm(total=budget, desc="connect", disable=not progress)
        with single_thread():
            while attempts < budget:
                minima = self.minima
                union = self._components(minima)
                if i is not None:
                    if union.find(i) == union.find(j):
                        break
                    source, target = int(i), int(j)
                else:
                    bottom = min(minima, key=lambda m: m.loss).id
                    outside = [
                        m
                        for m in sorted(minima, key=lambda m: m.loss)
                        if union.find(m.id) != union.find(bottom) and m.id not in skipped
                    ]
                    if not outside:
                        break
                    source, target = bottom, outside[0].id
                gaps = self._missing_connection_path(source, target, minima, union, tried)
                if gaps is None:
                    if i is not None:
                        break
                    skipped.add(target)
                    continue
                for a, b in gaps:
                    if attempts >= budget:
                        break
                    union = self._components()
                    if union.find(a) == union.find(b):
                        continue
                    tried.add(frozenset((a, b)))
                    attempts += 1
                    bar.update(1)
                    found += self._band(a, b, int(n_images))
        bar.close()
        return found

    # ------------------------------------------------------------------------------- analysis
    def _graph_data(self, minima=None):
        minima = self.minima if minima is None else minima
        energies = {m.id: m.loss for m in minima}
        edges = [(t.loss, t.minimum1, t.minimum2) for t in self.transition_states]
        return energies, edges

    def _levels(self, levels, minimum_energies, ts_energies) -> np.ndarray:
        if isinstance(levels, numbers.Integral) and not isinstance(levels, bool):
            if levels < 1:
                raise ValueError(f"levels must be a positive count, got {levels!r}")
            return default_levels(minimum_energies, ts_energies, int(levels))
        try:
            values = np.asarray(list(levels), dtype=float)
        except (TypeError, ValueError):
            raise ValueError("levels must be a positive count or a 1-D sequence of finite losses") from None
        if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
            raise ValueError("levels must be a positive count or a 1-D sequence of finite losses")
        return values

    def disconnectivity_graph(self, levels: int | Iterable[float] = 20) -> DisconnectivityGraph:
        """The disconnectivity graph at ``levels`` (a count of evenly spaced levels, or the energies).

        Only the connected set holding the global minimum is drawn: between sets that no transition
        state joins there is no known barrier. The other sets are listed in ``graph.unconnected``
        (run :meth:`connect` to join them).
        """
        energies, edges = self._graph_data(self._minima_or_raise())
        bottom = min(energies, key=energies.get)
        sets = self.connected_sets()
        drawn = next(s for s in sets if bottom in s)
        energies = {m: e for m, e in energies.items() if m in drawn}
        edges = [e for e in edges if e[1] in drawn]
        values = self._levels(levels, list(energies.values()), [e[0] for e in edges])
        graph = build(energies, edges, values)
        return dataclasses.replace(graph, unconnected=tuple(frozenset(s) for s in sets if bottom not in s))

    def basins(self, rule: str = "lowest_energy") -> dict[int, int]:
        """Monotonic sequence basins: ``{minimum id: id of its basin's bottom}``.

        ``rule``: ``"lowest_energy"`` (default; each minimum steps to its lowest lower neighbour, Berry
        & Kunz) or ``"lowest_barrier"`` (to the lower neighbour behind the lowest transition state); see
        :mod:`hessview.landscape.basins`.
        """
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        energies, edges = self._graph_data()
        return monotonic_sequence_basins(energies, edges, rule)

    def superbasin(self, minimum_id: int, threshold: float) -> list[int]:
        """Ids of the minima joined to ``minimum_id`` by transition states all below loss ``threshold``.

        The superbasin of the disconnectivity graph at level ``threshold`` that holds ``minimum_id``
        (minima above the threshold are left out), lowest first; pass it as ``group=``.
        """
        minima = {m.id: m for m in self._minima_or_raise()}
        if minimum_id not in minima:
            raise ValueError(f"minimum_id={minimum_id!r} is not the id of a stored minimum")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, numbers.Real)
            or not np.isfinite(threshold)
        ):
            raise ValueError(f"threshold must be a finite loss, got {threshold!r}")
        if minima[minimum_id].loss >= threshold:
            raise ValueError(
                f"minimum {minimum_id} (loss {minima[minimum_id].loss:.6g}) lies above threshold {threshold}"
            )
        union = UnionFind(m for m, r in minima.items() if r.loss < threshold)
        for ts in self.transition_states:
            if ts.loss < threshold and ts.minimum1 in union.parent and ts.minimum2 in union.parent:
                union.union(ts.minimum1, ts.minimum2)
        root = union.find(minimum_id)
        return sorted((m for m in union.parent if union.find(m) == root), key=lambda m: minima[m].loss)

    def _group_ids(self, group, rule: str = "lowest_energy") -> list[int]:
        minima = {m.id: m for m in self._minima_or_raise()}
        if group is None:
            ids = list(minima)
        elif isinstance(group, numbers.Integral) and not isinstance(group, bool):
            basins = self.basins(rule)
            if group not in set(basins.values()):
                raise ValueError(f"group={group!r} is not the bottom of a basin (see basins(rule={rule!r}))")
            ids = [m for m, bottom in basins.items() if bottom == group]
        else:
            try:
                ids = [int(g) for g in group]
            except (TypeError, ValueError):
                raise ValueError(
                    f"group must be None, a basin bottom id or a list of minimum ids, got {group!r}"
                ) from None
            missing = [g for g in ids if g not in minima]
            if missing or not ids:
                raise ValueError(f"group must name stored minima; unknown or empty: {missing or ids}")
            ids = list(dict.fromkeys(ids))
        return sorted(ids, key=lambda m: minima[m].loss)

    def conserved_weights(self, group=None, *, rule: str = "lowest_energy") -> ConservedWeights:
        """Aligned mean and spread of every weight over ``group``.

        ``group``: ``None`` (all minima), a basin bottom id from :meth:`basins` (under ``rule``), or a
        list of minimum ids (for example a :meth:`superbasin`).
        """
        ids = self._group_ids(group, rule)
        coords = [self._coordinates(m) for m in ids]
        return conserved_weights(self.network, ids, coords)

    def feature_relevance(self, group=None, *, rule: str = "lowest_energy") -> np.ndarray:
        """One relevance score per input feature (sums to 1) from the conserved input weights of ``group``.

        Invariant to the units of each feature (the inputs are standardised). Formula in
        :mod:`hessview.landscape.conserved`.
        """
        return self.conserved_weights(group, rule=rule).feature_relevance()

    def feature_relevance_spread(
        self, group=None, *, n_resamples: int = 200, seed: int = 0, rule: str = "lowest_energy"
    ) -> np.ndarray:
        """Uncertainty of :meth:`feature_relevance`: its standard deviation over bootstrap resamples.

        The group's minima are resampled with replacement ``n_resamples`` times (aligned once); for a
        one-minimum group the spread is zero (one network says nothing about its variation).
        """
        if isinstance(n_resamples, bool) or not isinstance(n_resamples, numbers.Integral) or n_resamples < 2:
            raise ValueError(f"n_resamples must be an integer >= 2, got {n_resamples!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        weights = self.conserved_weights(group, rule=rule)
        return bootstrap_relevance(self.network, weights, int(n_resamples), int(seed)).std(0)

    # ------------------------------------------------------------------ thermodynamics, kinetics
    def _order(self, kind: str, record) -> int:
        key = (kind, record.id)
        if key not in self._orders:
            self._orders[key] = point_group_order(self.network, record.coords)
        return self._orders[key]

    def _require_log_products(self, minima, transition_states=()) -> None:
        """Refuse harmonic thermodynamics when a stored point lacks its log product (partial spectrum)."""
        missing = sum(not np.isfinite(r.log_product) for r in (*minima, *transition_states))
        if missing:
            raise ValueError(
                f"{missing} stored stationary points have only their lowest Hessian eigenvalues (computed "
                "with Hessian-vector products, hessian='hvp'), so the log product of the eigenvalues that "
                "the harmonic superposition needs is unknown: build the landscape with hessian='dense' "
                "for occupations, rates, heat capacities and free energies"
            )

    def point_group_orders(self) -> dict[int, int]:
        """``{minimum id: number of network symmetries that leave it unchanged}`` (1 for a generic one)."""
        return {m.id: self._order("min", m) for m in self.minima}

    def occupation_probabilities(self, temperature: float) -> dict[int, float]:
        """Harmonic-superposition equilibrium occupation probability of every minimum at ``temperature``.

        :math:`p_a \\propto e^{-L_a/T} / (o_a \\sqrt{\\prod_i \\lambda_{a,i}})`
        (:mod:`hessview.landscape.thermodynamics`).
        """
        minima = self._minima_or_raise()
        temperature = _check_temperature(temperature)
        self._require_log_products(minima)
        p = occupation_probabilities(
            np.array([m.loss for m in minima]),
            np.array([m.log_product for m in minima]),
            temperature,
            np.array([self._order("min", m) for m in minima], dtype=float),
        )
        return {m.id: float(pm) for m, pm in zip(minima, p, strict=True)}

    def _log_rates(self, temperature: float) -> dict[tuple[int, int], float]:
        minima = self._minima_or_raise()
        temperature = _check_temperature(temperature)
        tss = self.transition_states
        self._require_log_products(minima, tss)
        records = [(t.loss, t.log_product, self._order("ts", t), t.minimum1, t.minimum2) for t in tss]
        return log_rates(
            {m.id: m.loss for m in minima},
            {m.id: m.log_product for m in minima},
            {m.id: self._order("min", m) for m in minima},
            records,
            temperature,
        )

    def rates(self, temperature: float) -> dict[tuple[int, int], float]:
        """Harmonic transition-state-theory rate constants ``{(from_id, to_id): k}`` at ``temperature``.

        :math:`k_{a\\to b}` sums over the transition states joining ``a`` and ``b`` (formula in
        :mod:`hessview.landscape.thermodynamics`; unit masses, :math:`k_B = 1`, time in the units
        implied by the loss). Obeys detailed balance with :meth:`occupation_probabilities`.
        """
        return {pair: float(np.exp(value)) for pair, value in self._log_rates(temperature).items()}

    def heat_capacity(self, temperatures) -> np.ndarray:
        """Harmonic-superposition heat capacity :math:`C(T) = dU/dT` at each temperature (k_B = 1).

        :math:`U(T) = \\sum_a p_a(T) L_a + P T/2`, so
        :math:`C = P/2 + (\\langle L^2\\rangle - \\langle L\\rangle^2)/T^2`.
        """
        minima = self._minima_or_raise()
        values = np.atleast_1d(_as_numpy(temperatures, "temperatures"))
        if values.dtype == bool or not np.issubdtype(values.dtype, np.number) or values.ndim != 1:
            raise ValueError("temperatures must be a positive number or a 1-D array of them")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError("temperatures must be positive and finite")
        self._require_log_products(minima)
        return heat_capacity(
            np.array([m.loss for m in minima]),
            np.array([m.log_product for m in minima]),
            np.array([self._order("min", m) for m in minima], dtype=float),
            self.network.n_params,
            values.astype(float),
        )

    def harmonic_validity(self, temperature: float) -> dict[int, bool]:
        """Per minimum, whether the harmonic approximation holds at ``temperature``.

        The thermal amplitude along the softest mode, :math:`\\sqrt{T/\\lambda_\\min}`, must stay below
        half the aligned distance to the nearest other minimum (``HARMONIC_FRACTION``); otherwise the
        Boltzmann distribution spreads over neighbouring minima and harmonic occupations, free energies
        and rates at this temperature should not be read.
        """
        minima = self._minima_or_raise()
        temperature = _check_temperature(temperature)
        out = {}
        for m in minima:
            amplitude = np.sqrt(temperature / m.eigenvalues[0])
            nearest = min(
                (self.distance(m.id, other.id) for other in minima if other.id != m.id), default=np.inf
            )
            out[m.id] = bool(amplitude < HARMONIC_FRACTION * nearest)
        return out

    def free_energy_graph(
        self, temperature: float, *, levels: int | Iterable[float] = 20, barrier: float | None = None
    ) -> DisconnectivityGraph:
        """Free-energy disconnectivity graph at ``temperature`` (Krivov & Karplus 2002; Evans & Wales 2003).

        Each minimum and transition state gets the harmonic free energy :math:`F = -T\\log Z`
        (:mod:`hessview.landscape.thermodynamics`). Minima are then regrouped: two groups whose
        free-energy barrier, seen from the higher one, is below ``barrier`` merge, until none does
        (default ``temperature``; ``-inf`` keeps every minimum apart, while ``0`` still merges a minimum
        whose free energy lies above a transition state's, as happens when entropy outweighs energy). A
        group's free energy is :math:`-T\\log\\sum Z_a` over its minima and the transition state between
        two groups has :math:`-T\\log\\sum Z_t` over the transition states joining them. The graph is
        drawn for the groups connected to the global minimum's; ``graph.groups`` maps
        each drawn id (the group's lowest-free-energy minimum) to its minima.
        """
        minima = self._minima_or_raise()
        temperature = _check_temperature(temperature)
        threshold = temperature if barrier is None else barrier
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or np.isnan(threshold):
            raise ValueError(f"barrier must be a number (-inf: no regrouping) or None, got {barrier!r}")
        P = self.network.n_params
        log_z = dict(
            zip(
                [m.id for m in minima],
                log_partition_functions(
                    [m.loss for m in minima],
                    [m.log_product for m in minima],
                    [self._order("min", m) for m in minima],
                    P,
                    temperature,
                ),
                strict=True,
            )
        )
        tss = [t for t in self.transition_states if t.minimum1 != t.minimum2]
        self._require_log_products(minima, tss)
        log_z_ts = log_partition_functions(
            [t.loss for t in tss],
            [t.log_product for t in tss],
            [self._order("ts", t) for t in tss],
            P - 1,
            temperature,
        )
        union = UnionFind(log_z)
        while True:
            groups = {union.find(m): [] for m in log_z}
            for m in log_z:
                groups[union.find(m)].append(m)
            free = {g: -temperature * logsumexp([log_z[m] for m in members]) for g, members in groups.items()}
            between: dict[tuple, list[float]] = {}
            for t, lz in zip(tss, log_z_ts, strict=True):
                a, b = union.find(t.minimum1), union.find(t.minimum2)
                if a != b:
                    between.setdefault((min(a, b), max(a, b)), []).append(lz)
            ts_free = {pair: -temperature * logsumexp(values) for pair, values in between.items()}
            merge = [pair for pair, f in ts_free.items() if f - max(free[pair[0]], free[pair[1]]) < threshold]
            if not merge:
                break
            for a, b in merge:
                union.union(a, b)
        representative = {g: min(members, key=lambda m: -log_z[m]) for g, members in groups.items()}
        energies = {representative[g]: f for g, f in free.items()}
        edges = [(f, representative[a], representative[b]) for (a, b), f in ts_free.items()]
        members = {representative[g]: frozenset(ms) for g, ms in groups.items()}
        bottom = representative[union.find(min(minima, key=lambda m: m.loss).id)]
        connected = UnionFind(energies)
        for _, a, b in edges:
            connected.union(a, b)
        root = connected.find(bottom)
        drawn = {g for g in energies if connected.find(g) == root}
        others = sorted(
            (frozenset(s) for s in connected.groups() if root not in {connected.find(x) for x in s}),
            key=len,
            reverse=True,
        )
        energies = {g: f for g, f in energies.items() if g in drawn}
        edges = [e for e in edges if e[1] in drawn]
        values = self._levels(levels, list(energies.values()), [e[0] for e in edges])
        graph = build(energies, edges, values)
        return dataclasses.replace(
            graph,
            groups={g: members[g] for g in drawn},
            unconnected=tuple(frozenset().union(*(members[g] for g in s)) for s in others),
        )

    # --------------------------------------------------------------------------- PATHSAMPLE files
    def export_pathsample(self, folder) -> Path:
        """Write ``min.data``, ``ts.data``, ``points.min`` and ``points.ts`` into ``folder``.

        The layout PATHSAMPLE and pele's ``optim_compatibility`` read: one line per minimum, in id order
        (line ``k`` is minimum ``k`` for PATHSAMPLE), ``energy  log-product-of-positive-eigenvalues
        point-group-order  1 1 1`` (the last three are the moments of inertia, placeholders for a
        network); one line per transition state ``energy  log-product  order  min1  min2  1 1 1`` with
        1-based line numbers of ``min.data``; ``points.*`` hold the coordinates of each stationary point
        as raw little-endian float64, ``n_params`` per point, no header (Fortran direct-access records).
        Coordinates are those of the network on standardised inputs. Each file is written atomically.

        Points stored in Hessian-vector-product mode (``hessian="hvp"``) have no log product (only their
        lowest eigenvalues were computed): their log-product column is written as ``0.0``, i.e. every such
        point gets the same vibrational factor and PATHSAMPLE's rates and free energies then compare
        energies only. An ``ApproximationWarning`` says so.
        """
        if not isinstance(folder, str | os.PathLike):
            raise TypeError(f"folder must be a path, got {type(folder).__name__}")
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        minima, tss = self.minima, self.transition_states
        line = {m.id: k + 1 for k, m in enumerate(minima)}
        missing = sum(not np.isfinite(r.log_product) for r in (*minima, *tss))
        if missing:
            warnings.warn(
                f"{missing} stationary points have no log product of Hessian eigenvalues (hessian='hvp' "
                "computes only the lowest ones): written as 0.0, so PATHSAMPLE compares energies only",
                ApproximationWarning,
                stacklevel=2,
            )

        def fvib(record) -> float:
            return record.log_product if np.isfinite(record.log_product) else 0.0

        with atomic_path(folder / "min.data") as tmp:
            tmp.write_text(
                "".join(f"{m.loss!r} {fvib(m)!r} {self._order('min', m)} 1.0 1.0 1.0\n" for m in minima)
            )
        with atomic_path(folder / "ts.data") as tmp:
            tmp.write_text(
                "".join(
                    f"{t.loss!r} {fvib(t)!r} {self._order('ts', t)} {line[t.minimum1]} "
                    f"{line[t.minimum2]} 1.0 1.0 1.0\n"
                    for t in tss
                )
            )
        for name, records in (("points.min", minima), ("points.ts", tss)):
            with atomic_path(folder / name) as tmp:
                coords = np.array([r.coords for r in records], dtype="<f8").reshape(-1)
                tmp.write_bytes(coords.tobytes())
        return folder

    @classmethod
    def from_pathsample(
        cls, folder, X, y, *, hidden: int, weight_decay: float, seed: int = 0, db=None, hessian: str = "auto"
    ) -> Landscape:
        """A new landscape whose database holds the stationary points of PATHSAMPLE files in ``folder``.

        Reads the layout :meth:`export_pathsample` writes. Every point is re-analysed on ``(X, y)``
        (loss, gradient, Hessian): a file whose energies do not match the network and data given, or
        whose points are not minima (no negative eigenvalue) and first-order saddles (one), is refused.
        Minima get ids ``1..N`` in ``min.data`` order. ``db`` must be new or empty; ``hessian`` as in
        :class:`Landscape` (in ``"hvp"`` mode the points are classified by their lowest eigenvalues and
        their log products are not kept).
        """
        if not isinstance(folder, str | os.PathLike):
            raise TypeError(f"folder must be a path, got {type(folder).__name__}")
        folder = Path(folder).expanduser()
        missing = [
            n for n in ("min.data", "ts.data", "points.min", "points.ts") if not (folder / n).is_file()
        ]
        if missing:
            raise ValueError(f"{folder} lacks the PATHSAMPLE files {', '.join(missing)}")
        land = cls(X, y, hidden=hidden, weight_decay=weight_decay, seed=seed, db=db, hessian=hessian)
        try:
            land._import_pathsample(folder)
        except BaseException:
            land.close()
            raise
        return land

    def _import_pathsample(self, folder: Path) -> None:
        if self.minima:
            raise ValueError(f"database {self.db.path} already holds minima: from_pathsample needs a new one")
        self.db.acquire_writer()
        P = self.network.n_params

        def table(name: str, width: int) -> np.ndarray:
            try:
                rows = np.loadtxt(folder / name, ndmin=2)
            except ValueError as error:
                raise ValueError(f"{folder / name} is not a PATHSAMPLE data file: {error}") from None
            if rows.size and rows.shape[1] < width:
                raise ValueError(f"{folder / name} needs at least {width} columns, has {rows.shape[1]}")
            return rows.reshape(-1, width) if rows.size == 0 else rows

        def points(name: str, count: int) -> np.ndarray:
            raw = np.fromfile(folder / name, dtype="<f8")
            if raw.size != count * P:
                raise ValueError(
                    f"{folder / name} holds {raw.size} numbers; {count} points of this network need "
                    f"{count * P} (n_params={P}): wrong network, or files that do not belong together"
                )
            return raw.reshape(count, P)

        min_rows, ts_rows = table("min.data", 6), table("ts.data", 8)
        min_coords, ts_coords = points("points.min", len(min_rows)), points("points.ts", len(ts_rows))

        def check(kind: str, k: int, energy: float, point: Stationary, index: int) -> None:
            if abs(point.loss - energy) > 1e-8 * max(1.0, abs(energy)) or point.n_negative != index:
                raise ValueError(
                    f"{kind} {k} of {folder} (energy {energy!r}) is not a stationary point of this "
                    f"landscape: loss {point.loss!r}, {point.n_negative} negative eigenvalues; the files "
                    "were made for other data, network or weight decay"
                )

        with single_thread(), self.db.transaction():
            for k, (row, coords) in enumerate(zip(min_rows, min_coords, strict=True), start=1):
                point = analyse(self.loss, coords)
                check("minimum", k, row[0], point, 0)
                # the file's energy and log product are kept (they agree to round-off): files round-trip
                new_id = self.db.add_minimum(row[0], coords, point.eigenvalues, row[1], hits=0)
                if new_id != k:
                    raise ValueError(f"database {self.db.path} gave id {new_id} to minimum {k}")
            for k, (row, coords) in enumerate(zip(ts_rows, ts_coords, strict=True), start=1):
                first, second = int(row[3]), int(row[4])
                if not (1 <= first <= len(min_rows) and 1 <= second <= len(min_rows)):
                    raise ValueError(
                        f"transition state {k} of {folder} names minima outside 1..{len(min_rows)}"
                    )
                point = analyse(self.loss, coords)
                check("transition state", k, row[0], point, 1)
                self.db.add_transition_state(row[0], coords, point.eigenvalues, row[1], first, second)

    # ------------------------------------------------------------------- explanations at minima
    def torch_model(self, minimum: int | Minimum) -> torch.nn.Module:
        """A plain float64 ``torch.nn.Sequential(Linear, Tanh, Linear)`` with a stored minimum's weights.

        It takes *standardised* inputs (``(x - feature_mean) / feature_scale``), like the landscape.
        """
        record = minimum if isinstance(minimum, Minimum) else self.db.minimum(minimum)
        d, h, c = self.network.n_inputs, self.network.hidden, self.network.n_classes
        model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, c)).double()
        w1, b1, w2, b2 = self.network.unpack(record.coords)
        with torch.no_grad():
            for parameter, value in zip(model.parameters(), (w1, b1, w2, b2), strict=True):
                parameter.copy_(torch.as_tensor(value, dtype=torch.float64))
        return model

    def toolbox(self, minimum: int | Minimum):
        """A fitted :class:`~hessview.engine.toolbox.HessianToolbox` for the network at a stored minimum.

        Built from :meth:`torch_model` on the standardised training data with the landscape's weight
        decay and ``damping=0.0`` (a true minimum needs none), so its Hessian is the stored one and
        influence, uncertainty and extrapolation can be asked of any minimum. Cached per minimum.
        """
        from hessview.engine.toolbox import HessianToolbox

        record = minimum if isinstance(minimum, Minimum) else self.db.minimum(minimum)
        if record.id not in self._toolboxes:
            tb = HessianToolbox(
                self.torch_model(record),
                self.X,
                self.y,
                loss="cross_entropy",
                weight_decay=self.weight_decay,
                damping=0.0,
                progress=False,
            )
            with single_thread():
                self._toolboxes[record.id] = tb.fit()
        return self._toolboxes[record.id]

    def explanation_stability(self, X_test, y_test=None, *, group=None, k: int = 10) -> np.ndarray:
        """How much each test point's top-``k`` influential training points agree across ``group``'s minima.

        For each minimum :math:`a` of the group, :math:`S_a(x)` is the set of the ``k`` training points
        with the largest :math:`|I(x, j)|` (influence at that minimum, :meth:`toolbox`); the score is the
        mean overlap :math:`|S_a \\cap S_b| / k` over pairs of distinct minima, in [0, 1] (1 for a group of
        one minimum). Without ``y_test`` every minimum explains the label its group's lowest minimum
        predicts. ``group`` as in :meth:`conserved_weights`.

        Returns:
            numpy array ``(n_test,)``.
        """
        ids = self._group_ids(group)
        X = _as_numpy(X_test, "X_test")
        if X.ndim != 2 or X.shape[1] != self.network.n_inputs or len(X) == 0:
            raise ValueError(
                f"X_test must have shape (n, {self.network.n_inputs}) with n >= 1, got {X.shape}"
            )
        if X.dtype == bool or not np.issubdtype(X.dtype, np.number) or not np.isfinite(X).all():
            raise ValueError("X_test must hold finite numbers")
        n_train = len(self.y)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= n_train:
            raise ValueError(f"k must be an integer in [1, {n_train}] (the training points), got {k!r}")
        if y_test is None:
            y = self.predict_proba(X, ids[0]).argmax(1)
        else:
            y = _check_labels(y_test, len(X), "y_test")
            if y.max() >= self.network.n_classes:
                raise ValueError(f"y_test holds a label >= {self.network.n_classes}, the number of classes")
        if len(ids) == 1:
            return np.ones(len(X))
        standard = (X.astype(np.float64) - self.feature_mean) / self.feature_scale
        top = []
        for m in ids:
            influence = np.abs(self.toolbox(m).influence(standard, y))
            top.append(np.argsort(-influence, axis=1, kind="stable")[:, : int(k)])
        agreement = np.zeros(len(X))
        pairs = list(itertools.combinations(range(len(ids)), 2))
        for a, b in pairs:
            for row in range(len(X)):
                agreement[row] += len(set(top[a][row]) & set(top[b][row])) / k
        return agreement / len(pairs)

    # ---------------------------------------------------------------------------- predictions
    def predict_proba(self, X, minimum: int | Minimum) -> np.ndarray:
        """Class probabilities of the network at a stored minimum (an id or a record) on raw inputs ``X``."""
        record = minimum if isinstance(minimum, Minimum) else self.db.minimum(minimum)
        X = _as_numpy(X, "X")
        if X.ndim != 2 or X.shape[1] != self.network.n_inputs:
            raise ValueError(f"X must have shape (n, {self.network.n_inputs}), got {X.shape}")
        standard = (X.astype(np.float64) - self.feature_mean) / self.feature_scale
        return self.loss.predict_proba(record.coords, standard)

    def accuracy(self, X, y, minimum: int | Minimum) -> float:
        """Fraction of ``(X, y)`` classified correctly by the network at a stored minimum."""
        y = _as_numpy(y, "y")
        return float((self.predict_proba(X, minimum).argmax(1) == y).mean())

    def close(self) -> None:
        """Close the database connection and release its lock."""
        self.db.close()

    def __enter__(self) -> Landscape:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.db.connection is None:
            return f"Landscape(closed database {self.db.path})"
        return (
            f"Landscape(n_inputs={self.network.n_inputs}, hidden={self.hidden}, "
            f"n_classes={self.network.n_classes}, weight_decay={self.weight_decay}, "
            f"minima={len(self.minima)}, transition_states={len(self.transition_states)})"
        )
