"""What :class:`~hessview.widgets.landscape_explorer.LandscapeExplorer` draws, computed once and saved.

A :class:`LandscapeSummary` holds the disconnectivity graph's coordinates, each drawn minimum's loss,
lowest Hessian eigenvalue, hit count, basin, occupation probability and test accuracy, and, per basin,
the conserved input weights, the feature relevance and the explanation stability of the test points.
:meth:`LandscapeSummary.compute` takes them from a :class:`~hessview.landscape.Landscape` (the formulas
are the landscape's own: :meth:`~hessview.landscape.Landscape.disconnectivity_graph`,
:meth:`~hessview.landscape.Landscape.conserved_weights`, ...); :meth:`LandscapeSummary.save` writes
them to a JSON file (floats written by ``repr``, so they read back bit for bit) and
:meth:`LandscapeSummary.load` reads it without importing torch or SciPy, which is what lets the
landscape app start in seconds.

With ``every_basin=False`` the per-basin numbers are left to be computed on request from the
landscape (what the explorer does when it is given a landscape): nothing is computed that is not shown.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hessview.landscape.disconnectivity import DisconnectivityGraph

if TYPE_CHECKING:
    from hessview.landscape.landscape import Landscape

#: version of the JSON layout written by :meth:`LandscapeSummary.save`
FORMAT = 1


@dataclass(frozen=True)
class MinimumSummary:
    """One drawn minimum: its ``loss``, ``lowest_eigenvalue`` of the Hessian and ``hits``."""

    id: int
    loss: float
    lowest_eigenvalue: float
    hits: int


@dataclass(frozen=True)
class BasinSummary:
    """One monotonic sequence basin (named by its ``bottom``).

    Attributes:
        minimum_ids: the basin's minima.
        conservation: ``(hidden, n_inputs)`` conservation of the input weights,
            :math:`|\\text{mean}| / (|\\text{mean}| + \\text{spread})` over the aligned minima
            (:class:`~hessview.landscape.ConservedWeights`).
        relevance: ``(n_inputs,)`` feature relevance, summing to 1.
        stability: ``(n_test,)`` explanation stability of the test points over the basin, or ``None``
            without test data.
    """

    bottom: int
    minimum_ids: tuple[int, ...]
    conservation: np.ndarray
    relevance: np.ndarray
    stability: np.ndarray | None


def _float(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None  # JSON has no NaN; None reads back as NaN


def _floats(values) -> list:
    return [_float(v) for v in np.ravel(values)]


def _array(values, shape=None) -> np.ndarray:
    array = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return array.reshape(shape) if shape is not None else array


class LandscapeSummary:
    """Everything :class:`~hessview.widgets.landscape_explorer.LandscapeExplorer` draws, without torch.

    Build it with :meth:`compute` (or :meth:`load` one written by :meth:`save`); the explorer accepts it
    in place of a :class:`~hessview.landscape.Landscape`.

    Attributes:
        n_inputs, hidden, n_classes: the network's shape; ``n_train``: the number of training points.
        levels, temperature, k: the settings the numbers were computed with (as in the explorer).
        graph: the :class:`~hessview.landscape.DisconnectivityGraph`'s drawing (``segments``,
            ``minimum_ids``, ``minimum_x``, ``minimum_energy``, ``unconnected``; ``nodes`` left empty).
        minima: ``{id: MinimumSummary}`` of every minimum in a drawn minimum's basin.
        basins: ``{id: bottom}`` (lowest-energy rule, :meth:`~hessview.landscape.Landscape.basins`).
        occupation: ``{id: probability}`` at ``temperature``; ``accuracy``: ``{id: test accuracy}`` or
            ``None`` without test data; ``global_minimum``: the lowest minimum's id.
        landscape: the landscape it was computed from (``None`` once loaded from a file).
    """

    def __init__(
        self,
        *,
        n_inputs: int,
        hidden: int,
        n_classes: int,
        n_train: int,
        levels: int,
        temperature: float,
        k: int,
        graph: DisconnectivityGraph,
        minima: dict[int, MinimumSummary],
        basins: dict[int, int],
        occupation: dict[int, float],
        accuracy: dict[int, float] | None,
        global_minimum: int,
        basin_summaries: dict[int, BasinSummary] | None = None,
        landscape: Landscape | None = None,
        X_test=None,
        y_test=None,
    ):
        self.n_inputs, self.hidden, self.n_classes = int(n_inputs), int(hidden), int(n_classes)
        self.n_train, self.levels, self.temperature, self.k = (
            int(n_train),
            int(levels),
            float(temperature),
            int(k),
        )
        self.graph = graph
        self.minima, self.basins, self.occupation, self.accuracy = minima, basins, occupation, accuracy
        self.global_minimum = int(global_minimum)
        self.basin_summaries = dict(basin_summaries or {})
        self.landscape, self.X_test, self.y_test = landscape, X_test, y_test

    @property
    def has_test_data(self) -> bool:
        """Whether accuracy and explanation stability were computed (test data given)."""
        return self.accuracy is not None

    # ----------------------------------------------------------------------------- computing
    @classmethod
    def compute(
        cls,
        landscape: Landscape,
        X_test=None,
        y_test=None,
        *,
        levels: int = 20,
        temperature: float = 0.01,
        k: int = 10,
        every_basin: bool = True,
    ) -> LandscapeSummary:
        """Take the explorer's numbers from ``landscape``; with ``every_basin``, those of every basin too.

        ``X_test``/``y_test`` (both or neither) give the test accuracy of every drawn minimum and the
        explanation stability of every basin (top-``k`` influential training points).
        """
        from hessview.landscape.landscape import Landscape

        if not isinstance(landscape, Landscape):
            raise TypeError(f"landscape must be a hessview Landscape, got {type(landscape).__name__}")
        if (X_test is None) != (y_test is None):
            raise ValueError("give both X_test and y_test, or neither")
        minima = landscape.minima
        if not minima:
            raise ValueError("the landscape holds no minima: call landscape.explore() first")
        graph = landscape.disconnectivity_graph(levels)
        basins = landscape.basins()
        records = {
            m.id: MinimumSummary(m.id, float(m.loss), float(m.eigenvalues[0]), int(m.hits)) for m in minima
        }
        if all(np.isfinite(m.log_product) for m in minima):
            occupation = landscape.occupation_probabilities(temperature)
        else:  # hessian="hvp": only the lowest eigenvalues are known, no harmonic occupations
            occupation = {m.id: float("nan") for m in minima}
        accuracy = None
        if X_test is not None:
            accuracy = {m.id: float(landscape.accuracy(X_test, y_test, m)) for m in minima}
        summary = cls(
            n_inputs=landscape.network.n_inputs,
            hidden=landscape.network.hidden,
            n_classes=landscape.network.n_classes,
            n_train=len(landscape.y),
            levels=levels,
            temperature=temperature,
            k=k,
            graph=graph,
            minima=records,
            basins={int(m): int(b) for m, b in basins.items()},
            occupation={int(m): float(p) for m, p in occupation.items()},
            accuracy=accuracy,
            global_minimum=landscape.global_minimum.id,
            landscape=landscape,
            X_test=X_test,
            y_test=y_test,
        )
        if every_basin:
            for bottom in summary.drawn_bottoms():
                summary.basin_summaries[bottom] = summary.basin(bottom)
        return summary

    def drawn_bottoms(self) -> list[int]:
        """The bottoms of the drawn minima's basins (the basins the explorer can show), ascending ids."""
        return sorted({self.basins[int(m)] for m in self.graph.minimum_ids})

    def basin(self, bottom: int) -> BasinSummary:
        """The :class:`BasinSummary` of the basin with this bottom: stored, or computed from the landscape."""
        bottom = int(bottom)
        if bottom in self.basin_summaries:
            return self.basin_summaries[bottom]
        if self.landscape is None:
            raise ValueError(f"basin {bottom} is not in this summary (it was saved without it)")
        conserved = self.landscape.conserved_weights(bottom)
        stability = None
        if self.X_test is not None:
            stability = np.asarray(
                self.landscape.explanation_stability(self.X_test, self.y_test, group=bottom, k=self.k)
            )
        return BasinSummary(
            bottom,
            tuple(int(m) for m in conserved.minimum_ids),
            np.asarray(conserved.conservation, dtype=np.float64),
            np.asarray(conserved.feature_relevance(), dtype=np.float64),
            stability,
        )

    # ----------------------------------------------------------------------------- files
    def to_dict(self) -> dict:
        """A JSON-ready dict of every number (every basin is computed first if it is not yet)."""
        g = self.graph
        basins = [self.basin(b) for b in self.drawn_bottoms()]
        return {
            "format": FORMAT,
            "network": {"n_inputs": self.n_inputs, "hidden": self.hidden, "n_classes": self.n_classes},
            "n_train": self.n_train,
            "levels": self.levels,
            "temperature": self.temperature,
            "k": self.k,
            "graph": {
                "levels": _floats(g.levels),
                "segments": _floats(g.segments),
                "n_segments": int(len(g.segments)),
                "minimum_ids": [int(m) for m in g.minimum_ids],
                "minimum_x": _floats(g.minimum_x),
                "minimum_energy": _floats(g.minimum_energy),
                "unconnected": [sorted(int(m) for m in s) for s in g.unconnected],
            },
            "minima": [
                [m.id, _float(m.loss), _float(m.lowest_eigenvalue), m.hits] for m in self.minima.values()
            ],
            "basins": [[m, b] for m, b in self.basins.items()],
            "occupation": [[m, _float(p)] for m, p in self.occupation.items()],
            "accuracy": None if self.accuracy is None else [[m, _float(a)] for m, a in self.accuracy.items()],
            "global_minimum": self.global_minimum,
            "basin_summaries": [
                {
                    "bottom": b.bottom,
                    "minimum_ids": list(b.minimum_ids),
                    "conservation": _floats(b.conservation),
                    "relevance": _floats(b.relevance),
                    "stability": None if b.stability is None else _floats(b.stability),
                }
                for b in basins
            ],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write every number to the JSON file ``path`` (atomically); returns the path."""
        from hessview._io import atomic_path

        path = Path(path)
        text = json.dumps(self.to_dict(), separators=(",", ":"))
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return path

    @classmethod
    def from_dict(cls, data: dict) -> LandscapeSummary:
        """Inverse of :meth:`to_dict`; a file of another layout raises ``ValueError``."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a landscape summary of format {FORMAT} (found {found!r})")
        try:
            network, g = data["network"], data["graph"]
            h, d = int(network["hidden"]), int(network["n_inputs"])
            graph = DisconnectivityGraph(
                levels=_array(g["levels"]),
                nodes=[],
                segments=_array(g["segments"], (int(g["n_segments"]), 2, 2)),
                minimum_ids=np.asarray(g["minimum_ids"], dtype=np.int64),
                minimum_x=_array(g["minimum_x"]),
                minimum_energy=_array(g["minimum_energy"]),
                unconnected=tuple(frozenset(int(m) for m in s) for s in g["unconnected"]),
            )
            basins = {}
            for b in data["basin_summaries"]:
                stability = None if b["stability"] is None else _array(b["stability"])
                basins[int(b["bottom"])] = BasinSummary(
                    int(b["bottom"]),
                    tuple(int(m) for m in b["minimum_ids"]),
                    _array(b["conservation"], (h, d)),
                    _array(b["relevance"], (d,)),
                    stability,
                )
            summary = cls(
                n_inputs=d,
                hidden=h,
                n_classes=int(network["n_classes"]),
                n_train=int(data["n_train"]),
                levels=int(data["levels"]),
                temperature=float(data["temperature"]),
                k=int(data["k"]),
                graph=graph,
                minima={
                    int(m): MinimumSummary(int(m), _array([loss])[0], _array([lam])[0], int(hits))
                    for m, loss, lam, hits in data["minima"]
                },
                basins={int(m): int(b) for m, b in data["basins"]},
                occupation={int(m): _array([p])[0] for m, p in data["occupation"]},
                accuracy=None
                if data["accuracy"] is None
                else {int(m): _array([a])[0] for m, a in data["accuracy"]},
                global_minimum=int(data["global_minimum"]),
                basin_summaries=basins,
            )
            for m in graph.minimum_ids:  # everything a click can ask for is there
                m = int(m)
                known = m in summary.minima and m in summary.occupation and m in summary.basins
                if not known or (summary.accuracy is not None and m not in summary.accuracy):
                    raise ValueError(f"drawn minimum {m} lacks its numbers")
                basin = summary.basin_summaries.get(summary.basins[m])
                if basin is None or not set(basin.minimum_ids) <= set(summary.minima):
                    raise ValueError(f"the basin of drawn minimum {m} is missing or incomplete")
                if (basin.stability is None) != (summary.accuracy is None):
                    raise ValueError("explanation stability without test accuracy, or the reverse")
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a damaged landscape summary: {type(error).__name__}: {error}") from None
        return summary

    @classmethod
    def load(cls, path: str | os.PathLike) -> LandscapeSummary:
        """Read a summary written by :meth:`save` (numpy only: no torch, no SciPy)."""
        try:
            data = json.loads(Path(path).read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not a landscape summary (no valid JSON: {error})") from None
        return cls.from_dict(data)
