"""Monotonic sequence basins (Berry & Kunz 1995; Wales, *Energy Landscapes*, ch. 6).

From each minimum, step to one of its lower neighbours (minima joined to it by a transition state and
lower in loss); repeat until no neighbour is lower. The minimum reached is the basin's bottom, and every
minimum is labelled by its bottom. Two rules choose the step:

* ``"lowest_energy"`` (the default, Berry & Kunz's steepest monotonic sequence): the lowest lower
  neighbour, whatever the barrier to it;
* ``"lowest_barrier"``: the lower neighbour behind the lowest transition state (the path a trajectory
  at low temperature takes first; ties go to the lower neighbour).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RULES = ("lowest_energy", "lowest_barrier")


def monotonic_sequence_basins(
    minimum_energies: Mapping[int, float],
    transition_states: Sequence[tuple[float, int, int]],
    rule: str = "lowest_energy",
) -> dict[int, int]:
    """Map each minimum id to the bottom of its monotonic sequence basin under ``rule``.

    >>> monotonic_sequence_basins({1: 0.0, 2: 1.0, 3: 0.5, 4: 0.7}, [(2.0, 1, 3), (1.5, 2, 3)])
    {1: 1, 2: 1, 3: 1, 4: 4}
    >>> ts = [(3.0, 1, 2), (1.2, 2, 3)]  # 2 is joined to the lowest, 1, only over a high barrier
    >>> monotonic_sequence_basins({1: 0.0, 2: 1.0, 3: 0.5}, ts, rule="lowest_barrier")
    {1: 1, 2: 3, 3: 3}
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    energy = dict(minimum_energies)
    lower_step: dict[int, int] = {}
    key: dict[int, tuple[float, float]] = {}
    for ts_energy, a, b in transition_states:
        for here, there in ((a, b), (b, a)):
            if energy[there] < energy[here]:
                candidate = (
                    (energy[there], ts_energy) if rule == "lowest_energy" else (ts_energy, energy[there])
                )
                if here not in key or candidate < key[here]:
                    key[here], lower_step[here] = candidate, there
    bottoms: dict[int, int] = {}
    for start in energy:
        path = [start]
        while path[-1] in lower_step and path[-1] not in bottoms:
            path.append(lower_step[path[-1]])
        bottom = bottoms.get(path[-1], path[-1])
        for m in path:
            bottoms[m] = bottom
    return {m: bottoms[m] for m in energy}
