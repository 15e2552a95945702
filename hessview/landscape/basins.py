"""Monotonic sequence basins (Berry & Kunz 1995; Wales, *Energy Landscapes*, ch. 6).

From each minimum, step to the lowest of its lower neighbours (minima joined to it by a transition state
with a lower loss); repeat until no neighbour is lower. The minimum reached is the basin's bottom, and
every minimum is labelled by its bottom.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def monotonic_sequence_basins(
    minimum_energies: Mapping[int, float], transition_states: Sequence[tuple[float, int, int]]
) -> dict[int, int]:
    """Map each minimum id to the bottom of its monotonic sequence basin.

    >>> monotonic_sequence_basins({1: 0.0, 2: 1.0, 3: 0.5, 4: 0.7}, [(2.0, 1, 3), (1.5, 2, 3)])
    {1: 1, 2: 1, 3: 1, 4: 4}
    """
    energy = dict(minimum_energies)
    lower_step: dict[int, int] = {}
    for _, a, b in transition_states:
        for here, there in ((a, b), (b, a)):
            if energy[there] < energy[here]:
                best = lower_step.get(here)
                if best is None or energy[there] < energy[best]:
                    lower_step[here] = there
    bottoms: dict[int, int] = {}
    for start in energy:
        path = [start]
        while path[-1] in lower_step and path[-1] not in bottoms:
            path.append(lower_step[path[-1]])
        bottom = bottoms.get(path[-1], path[-1])
        for m in path:
            bottoms[m] = bottom
    return {m: bottoms[m] for m in energy}
