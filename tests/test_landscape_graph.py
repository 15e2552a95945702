"""Disconnectivity graphs, monotonic sequence basins and harmonic thermodynamics against brute force."""

import itertools

import numpy as np
import pytest

from hessview.landscape.basins import monotonic_sequence_basins
from hessview.landscape.disconnectivity import build, default_levels
from hessview.landscape.thermodynamics import occupation_probabilities

HAND_MADE_MINIMA = {1: 0.0, 2: 0.5, 3: 0.3, 4: 1.0, 5: 0.2, 6: 0.8, 7: 0.4}
HAND_MADE_TS = [(1.2, 1, 2), (0.9, 2, 3), (1.5, 3, 4), (1.1, 5, 6), (2.0, 1, 5), (1.25, 2, 4)]


def random_database(seed, n_minima=9, n_ts=10):
    rng = np.random.default_rng(seed)
    energies = {i: float(rng.uniform(0, 1)) for i in range(1, n_minima + 1)}
    ts = []
    for _ in range(n_ts):
        a, b = rng.choice(list(energies), size=2, replace=False)
        ts.append((max(energies[a], energies[b]) + float(rng.uniform(0.01, 1.0)), int(a), int(b)))
    return energies, ts


def minimax_barriers(energies, ts):
    """Floyd-Warshall over (max, min): the lowest possible highest transition state between minima."""
    ids = list(energies)
    barrier = {(a, b): (0.0 if a == b else np.inf) for a in ids for b in ids}
    for e, a, b in ts:
        barrier[a, b] = barrier[b, a] = min(barrier[a, b], e)
    for k, i, j in itertools.product(ids, ids, ids):
        barrier[i, j] = min(barrier[i, j], max(barrier[i, k], barrier[k, j]))
    return barrier


def brute_superbasins(energies, ts, level):
    barrier = minimax_barriers(energies, ts)
    below = [m for m, e in energies.items() if e < level]
    return {frozenset(b for b in below if barrier[a, b] < level) for a in below}


CASES = [(HAND_MADE_MINIMA, HAND_MADE_TS)] + [random_database(seed) for seed in range(6)]


@pytest.mark.parametrize("energies, ts", CASES)
def test_superbasins_match_minimax_paths(energies, ts):
    levels = default_levels(list(energies.values()), [t[0] for t in ts], 12)
    graph = build(energies, ts, levels)
    for k, level in enumerate(graph.levels):
        assert set(graph.superbasins(k)) == brute_superbasins(energies, ts, level)


@pytest.mark.parametrize("energies, ts", CASES)
def test_tree_and_drawing_are_consistent(energies, ts):
    graph = build(energies, ts, default_levels(list(energies.values()), [t[0] for t in ts], 8))
    for node in graph.nodes:
        if node.parent is not None:
            parent = graph.nodes[node.parent]
            assert parent.level == node.level + 1 and node.members <= parent.members
    assert sorted(graph.minimum_ids.tolist()) == sorted(energies)  # all below the top level
    assert sorted(graph.minimum_x.tolist()) == list(range(len(energies)))
    ends = {(round(x, 9), round(y, 12)) for x, y in graph.segments[:, 1]}
    for m, x, e in zip(graph.minimum_ids, graph.minimum_x, graph.minimum_energy, strict=True):
        assert e == energies[int(m)] and (round(x, 9), round(e, 12)) in ends
    # every superbasin's minima sit next to each other: branches never cross
    position = dict(zip(graph.minimum_ids.tolist(), graph.minimum_x, strict=True))
    for node in graph.nodes:
        xs = sorted(position[m] for m in node.members)
        assert xs[-1] - xs[0] == len(xs) - 1


def test_hand_made_graph_at_chosen_levels():
    graph = build(HAND_MADE_MINIMA, HAND_MADE_TS, [0.35, 1.0, 1.22, 3.0])
    assert set(graph.superbasins(0)) == {frozenset({1}), frozenset({5}), frozenset({3})}
    assert set(graph.superbasins(1)) == {frozenset({m}) for m in (1, 5, 6, 7)} | {frozenset({2, 3})}
    assert set(graph.superbasins(2)) == {
        frozenset({1, 2, 3}),
        frozenset({5, 6}),
        frozenset({7}),
        frozenset({4}),
    }
    assert set(graph.superbasins(3)) == {frozenset({1, 2, 3, 4, 5, 6}), frozenset({7})}


def brute_basins(energies, ts, rule="lowest_energy"):
    """Follow the chosen lower neighbour by powers of the successor matrix."""
    ids = sorted(energies)
    index = {m: k for k, m in enumerate(ids)}
    successor = np.eye(len(ids))
    for m in ids:
        lower = [(e, b if a == m else a) for e, a, b in ts if m in (a, b)]
        lower = [(e, n) for e, n in lower if energies[n] < energies[m]]
        if lower:
            if rule == "lowest_energy":
                step = min(lower, key=lambda item: (energies[item[1]], item[0]))[1]
            else:
                step = min(lower, key=lambda item: (item[0], energies[item[1]]))[1]
            successor[index[m]] = 0
            successor[index[m], index[step]] = 1
    final = np.linalg.matrix_power(successor, len(ids))
    return {m: ids[int(np.argmax(final[index[m]]))] for m in ids}


@pytest.mark.parametrize("energies, ts", CASES)
@pytest.mark.parametrize("rule", ["lowest_energy", "lowest_barrier"])
def test_monotonic_sequence_basins_match_brute_force(energies, ts, rule):
    assert monotonic_sequence_basins(energies, ts, rule) == brute_basins(energies, ts, rule)


def test_the_two_basin_rules_differ_where_the_lowest_neighbour_is_behind_a_high_barrier():
    energies = {1: 0.0, 2: 1.0, 3: 0.5}
    ts = [(3.0, 1, 2), (1.2, 2, 3)]
    assert monotonic_sequence_basins(energies, ts)[2] == 1
    assert monotonic_sequence_basins(energies, ts, "lowest_barrier")[2] == 3


def test_hand_made_basins():
    # 2's lower neighbours are 1 and 3: it steps to the lowest, 1. 4 steps to 3 (lower than 2),
    # 3 has no lower neighbour. 6 -> 5 -> 1. 7 has no neighbours.
    assert monotonic_sequence_basins(HAND_MADE_MINIMA, HAND_MADE_TS) == {
        1: 1,
        2: 1,
        3: 3,
        4: 3,
        5: 1,
        6: 1,
        7: 7,
    }


def test_harmonic_superposition_matches_boltzmann_integral_at_low_temperature():
    # E(x, y) = (x^2 - 1)^2 + t x + (2 + x) y^2 / 2: two wells with different y-curvature.
    tilt = 0.005
    roots = np.sort(np.roots([4.0, 0.0, -4.0, tilt]).real)
    minima, barrier_x = roots[[0, 2]], roots[1]
    energy = minima**4 - 2 * minima**2 + 1 + tilt * minima
    log_products = np.log((12 * minima**2 - 4) * (2 + minima))
    temperature = 0.01
    x = np.linspace(-2.0, 2.0, 4001)
    y = np.linspace(-1.5, 1.5, 1501)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    e = (xx**2 - 1) ** 2 + tilt * xx + 0.5 * (2 + xx) * yy**2
    weight = np.exp(-(e - energy.min()) / temperature)
    left = weight[x < barrier_x].sum()
    exact = np.array([left, weight.sum() - left]) / weight.sum()
    approx = occupation_probabilities(energy, log_products, temperature)
    np.testing.assert_allclose(approx, exact, atol=2e-3)  # 0.8246 vs 0.8244 here
    # the curvature factor matters: energies alone would give 0.731 for the left well
    assert abs(occupation_probabilities(energy, 0 * log_products, temperature)[0] - exact[0]) > 0.05


def test_occupation_probabilities_refuse_bad_temperature():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            occupation_probabilities(np.zeros(2), np.zeros(2), bad)


class DoubleWell:
    """E(x, y) = (x^2 - 1)^2 + y^2 + 0.5 x y^2: minima at (+-1, 0), saddle at (0, 0) with Hessian
    eigenvalues -4 (along x) and 2 (along y). Closed-form ground truth for the band and the refinement."""

    @staticmethod
    def value(p):
        x, y = p[..., 0], p[..., 1]
        return (x**2 - 1) ** 2 + y**2 + 0.5 * x * y**2

    def value_and_gradient(self, p):
        return float(self.value(p)), self.gradient(p)

    def gradient(self, p):
        x, y = p[..., 0], p[..., 1]
        return np.stack([4 * x * (x**2 - 1) + 0.5 * y**2, 2 * y + x * y], axis=-1)

    def batch_value_and_gradient(self, ps):
        return self.value(ps), self.gradient(ps)

    def hessian(self, p):
        x, y = p
        return np.array([[12 * x**2 - 4, y], [y, 2 + x]])


def test_dneb_and_eigenvector_following_find_the_known_saddle():
    from hessview.landscape.transition_states import band_maxima, descend, dneb, eigenvector_following

    well = DoubleWell()
    images, energies = dneb(well, np.array([-1.0, 0.0]), np.array([1.0, 0.0]), n_images=9)
    (top,) = band_maxima(energies)
    assert abs(images[top, 0]) < 0.15
    # refine from a point pushed off the band: EF must walk back to the exact saddle
    ts = eigenvector_following(well, images[top] + np.array([0.05, 0.3]), images[top + 1] - images[top - 1])
    np.testing.assert_allclose(ts.coords, [0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(ts.eigenvalues, [-4.0, 2.0], atol=1e-8)
    assert ts.n_negative == 1
    ends = sorted(point.coords[0] for point in descend(well, ts))
    np.testing.assert_allclose(ends, [-1.0, 1.0], atol=1e-9)
