"""Disconnectivity graphs (Becker & Karplus 1997; Wales, Miller & Walsh 1998).

At each energy level :math:`L_k` the minima below it fall into superbasins: two minima share a superbasin
when a path of transition states, all below :math:`L_k`, joins them. Superbasins are the components of
a union-find over the transition states in order of energy; each superbasin's parent is the superbasin
at the next level up that contains it. Minima not joined by any transition state form separate trees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hessview.landscape.union_find import UnionFind


@dataclass(frozen=True)
class Superbasin:
    """One node of the tree: its ``level`` index, the ids of its ``members``, parent node index, ``x``."""

    level: int
    members: frozenset
    parent: int | None
    x: float


@dataclass(frozen=True)
class DisconnectivityGraph:
    """A disconnectivity graph with drawing coordinates.

    Attributes:
        levels: ascending energies :math:`L_k` at which superbasins are taken.
        nodes: every superbasin at every level.
        segments: ``(S, 2, 2)`` line segments ``[[x0, y0], [x1, y1]]`` (x position, loss) to draw.
        minimum_ids: ids of the minima drawn (those below the top level), in left-to-right order.
        minimum_x: their x positions; ``minimum_energy``: their losses (the bottoms of the branches).
        unconnected: the connected sets of minima *not* drawn (no transition-state path joins them to
            the global minimum, so no barrier to them is known), largest first; empty when everything
            is connected. :meth:`hessview.landscape.Landscape.disconnectivity_graph` draws the global
            minimum's set only.
        groups: for a free-energy graph, ``{drawn id: ids of the minima regrouped into it}``; else ``None``.
    """

    levels: np.ndarray
    nodes: list[Superbasin]
    segments: np.ndarray
    minimum_ids: np.ndarray
    minimum_x: np.ndarray
    minimum_energy: np.ndarray
    unconnected: tuple[frozenset, ...] = ()
    groups: dict[int, frozenset] | None = None

    def superbasins(self, level: int) -> list[frozenset]:
        """The superbasins (sets of minimum ids) at level index ``level``."""
        return [node.members for node in self.nodes if node.level == level]


def default_levels(
    minimum_energies: Sequence[float], ts_energies: Sequence[float], n_levels: int
) -> np.ndarray:
    """``n_levels`` evenly spaced levels from just above the lowest minimum to just above the highest point.

    >>> default_levels([0.0, 1.0], [2.0], 4)
    array([0.525, 1.05 , 1.575, 2.1  ])
    """
    energies = np.concatenate([np.asarray(minimum_energies, float), np.asarray(ts_energies, float)])
    low, high = energies.min(), energies.max()
    span = high - low if high > low else max(abs(high), 1.0)
    return np.linspace(low, high + 0.05 * span, n_levels + 1)[1:]


def build(
    minimum_energies: Mapping[int, float],
    transition_states: Sequence[tuple[float, int, int]],
    levels: np.ndarray,
) -> DisconnectivityGraph:
    """Build the graph from ``{id: loss}`` of minima and ``(loss, id1, id2)`` of transition states."""
    levels = np.sort(np.asarray(levels, dtype=float))
    minima_sorted = sorted(minimum_energies.items(), key=lambda item: item[1])
    ts_sorted = sorted(transition_states)
    union = UnionFind()
    per_level: list[list[frozenset]] = []
    i_min = i_ts = 0
    for level in levels:
        while i_min < len(minima_sorted) and minima_sorted[i_min][1] < level:
            union.add(minima_sorted[i_min][0])
            i_min += 1
        while i_ts < len(ts_sorted) and ts_sorted[i_ts][0] < level:
            _, a, b = ts_sorted[i_ts]
            if a in union.parent and b in union.parent:
                union.union(a, b)
            i_ts += 1
        per_level.append([frozenset(group) for group in union.groups()])

    energy = dict(minimum_energies)
    lowest = {group: min(energy[m] for m in group) for groups in per_level for group in groups}

    def children(k: int, group: frozenset) -> list:
        below = [g for g in per_level[k - 1] if g <= group] if k > 0 else []
        covered = set().union(*below) if below else set()
        fresh = [m for m in group if m not in covered]
        items = [("node", g) for g in below] + [("minimum", m) for m in fresh]
        return sorted(items, key=lambda it: lowest[it[1]] if it[0] == "node" else energy[it[1]])

    order: list[int] = []

    def visit(k: int, group: frozenset) -> None:
        for kind, item in children(k, group):
            if kind == "node":
                visit(k - 1, item)
            else:
                order.append(item)

    top = len(levels) - 1
    if top >= 0:
        for group in sorted(per_level[top], key=lambda g: lowest[g]):
            visit(top, group)
    minimum_x = {m: float(i) for i, m in enumerate(order)}

    node_x: dict[tuple[int, frozenset], float] = {}
    for k in range(len(levels)):
        for group in per_level[k]:
            xs = [
                node_x[(k - 1, item)] if kind == "node" else minimum_x[item]
                for kind, item in children(k, group)
            ]
            node_x[(k, group)] = float(np.mean(xs))

    index = {}
    nodes: list[Superbasin] = []
    for k in range(len(levels) - 1, -1, -1):
        for group in sorted(per_level[k], key=lambda g: node_x[(k, g)]):
            parent = None
            if k < top:
                parent = next(index[(k + 1, g)] for g in per_level[k + 1] if group <= g)
            index[(k, group)] = len(nodes)
            nodes.append(Superbasin(k, group, parent, node_x[(k, group)]))

    segments = []
    for node in nodes:
        if node.parent is not None:
            parent = nodes[node.parent]
            segments.append([[parent.x, levels[parent.level]], [node.x, levels[node.level]]])
        for kind, item in children(node.level, node.members):
            if kind == "minimum":
                segments.append([[node.x, levels[node.level]], [minimum_x[item], energy[item]]])
    ids = np.array(order, dtype=np.int64)
    return DisconnectivityGraph(
        levels=levels,
        nodes=nodes,
        segments=np.array(segments, dtype=float).reshape(-1, 2, 2),
        minimum_ids=ids,
        minimum_x=np.array([minimum_x[m] for m in order], dtype=float),
        minimum_energy=np.array([energy[m] for m in order], dtype=float),
    )
