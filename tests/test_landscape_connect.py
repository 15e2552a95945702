"""connect() grows one connected database (PATHSAMPLE style), checked against autograd descents."""

import shutil

import numpy as np
import pytest
import torch

from hessview.landscape import Landscape
from hessview.landscape.symmetry import align


def data(n=20, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X[:, 0] * X[:, 1] > 0).astype(int)


@pytest.fixture(scope="module")
def explored(tmp_path_factory):
    """A database of basin-hopping minima, nothing connected (a file, copied by each test that changes it)."""
    path = tmp_path_factory.mktemp("connect") / "explored.sqlite"
    X, y = data()
    with Landscape(X, y, hidden=4, weight_decay=1e-3, seed=0, db=path) as land:
        land.explore(40, temperature=1.0, step_size=3.0, progress=False)
    return path


def copy_of(path, tmp_path):
    target = tmp_path / "copy.sqlite"
    shutil.copy(path, target)
    X, y = data()
    return Landscape(X, y, hidden=4, weight_decay=1e-3, seed=0, db=target)


@pytest.fixture(scope="module")
def grown(explored, tmp_path_factory):
    land = copy_of(explored, tmp_path_factory.mktemp("grown"))
    before = {m.id for m in land.minima}
    sets_before = land.connected_sets()
    found = land.connect(progress=False)
    return land, before, sets_before, found


def reference_loss(land):
    """The documented loss written again in plain torch (ground truth)."""
    x, y = torch.tensor(land.X), torch.tensor(land.y)

    def loss(theta):
        w1, b1, w2, b2 = land.network.unpack(theta)
        out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return torch.nn.functional.cross_entropy(out, y) + 0.5 * land.weight_decay * theta.pow(2).sum()

    return loss


def descend(ref, start):
    t = torch.tensor(start, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [t], lr=0.5, max_iter=20000, tolerance_grad=1e-12, tolerance_change=0, line_search_fn="strong_wolfe"
    )

    def closure():
        optimiser.zero_grad()
        value = ref(t)
        value.backward()
        return value

    optimiser.step(closure)
    return t.detach().numpy()


def test_dozens_of_minima_end_in_one_connected_set(grown):
    land, before, sets_before, found = grown
    assert len(land.minima) >= 20 and len(sets_before) == len(before)  # nothing was connected before
    sets = land.connected_sets()
    assert len(sets) == 1 and sets[0] == {m.id for m in land.minima}
    # minima found while connecting are connected too, and the graph draws every minimum
    assert {m.id for m in land.minima} >= before
    graph = land.disconnectivity_graph(10)
    assert sorted(graph.minimum_ids.tolist()) == sorted(m.id for m in land.minima) and graph.unconnected == ()
    assert {t.id for t in found} == {t.id for t in land.transition_states}


def test_every_transition_state_is_a_first_order_saddle_joining_its_minima(grown):
    land = grown[0]
    ref = reference_loss(land)
    for ts in land.transition_states:
        t = torch.tensor(ts.coords, requires_grad=True)
        (g,) = torch.autograd.grad(ref(t), t)
        assert float(g.norm()) < 1e-8
        eigenvalues, vectors = np.linalg.eigh(torch.func.hessian(ref)(torch.tensor(ts.coords)).numpy())
        assert (eigenvalues < 0).sum() == 1
        reached = set()
        for sign in (1, -1):
            end = descend(ref, ts.coords + sign * 1e-3 * vectors[:, 0])
            distances = {m.id: align(land.network, m.coords, end)[1] for m in land.minima}
            best = min(distances, key=distances.get)
            assert distances[best] < 1e-4
            reached.add(best)
        assert reached == {ts.minimum1, ts.minimum2}


def test_hits_count_basin_hopping_finds_only(grown):
    land = grown[0]
    # 1 start + 40 steps, each quench either failed or hit one minimum; descents from TS add nothing
    assert sum(m.hits for m in land.minima) <= 41
    new = [m for m in land.minima if m.id not in grown[1]]
    assert all(m.hits == 0 for m in new)


def test_a_budget_of_one_attempt_runs_one_band(explored, tmp_path):
    land = copy_of(explored, tmp_path)
    calls = []
    band = land._band
    land._band = lambda a, b, n: calls.append((a, b)) or band(a, b, n)
    land.connect(max_attempts=1, progress=False)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="max_attempts"):
        land.connect(max_attempts=0)
    land.close()


def test_missing_connection_search_finds_the_cheapest_chain(explored, tmp_path):
    """Dijkstra's chain of untried pairs against Floyd-Warshall on squared aligned distances."""
    land = copy_of(explored, tmp_path)
    minima = land.minima
    ids = [m.id for m in minima]
    n = len(ids)
    cost = np.array([[align(land.network, a.coords, b.coords)[1] ** 2 for b in minima] for a in minima])
    tried = {frozenset((ids[0], ids[-1])), frozenset((ids[1], ids[-1]))}  # pretend these failed
    for pair in tried:
        a, b = (ids.index(m) for m in pair)
        cost[a, b] = cost[b, a] = np.inf
    best = cost.copy()
    for k in range(n):
        best = np.minimum(best, best[:, k : k + 1] + best[k : k + 1, :])
    union = land._components(minima)
    for source, target in ((ids[0], ids[-1]), (ids[1], ids[-1]), (ids[0], ids[1])):
        gaps = land._missing_connection_path(source, target, minima, union, tried)
        chain = [gaps[0][0]] + [b for _, b in gaps]
        assert chain[0] == source and chain[-1] == target
        assert all(frozenset(g) not in tried for g in gaps)
        total = sum(cost[ids.index(a), ids.index(b)] for a, b in gaps)
        assert total == pytest.approx(best[ids.index(source), ids.index(target)], rel=1e-9)
    land.close()


# ------------------------------------------------------------------ harmonic thermodynamics and kinetics
def orders_by_brute_force(land, coords):
    """Signed permutations of the hidden units that leave ``coords`` unchanged, counted one by one."""
    import itertools

    w1, b1, w2, _ = land.network.unpack(np.asarray(coords))
    units = np.concatenate([w1, b1[:, None], w2.T], axis=1)
    h = len(units)
    count = 0
    for perm in itertools.permutations(range(h)):
        for signs in itertools.product([-1.0, 1.0], repeat=h):
            if np.abs(units[list(perm)] * np.array(signs)[:, None] - units).max() < 1e-6:
                count += 1
    return count


def oracle_log_z(energy, eigenvalues, order, temperature, n_modes):
    positive = eigenvalues[eigenvalues > 0]
    assert len(positive) == n_modes
    return (
        -energy / temperature
        + 0.5 * n_modes * np.log(2 * np.pi * temperature)
        - np.log(order)
        - 0.5 * np.log(positive).sum()
    )


def test_rates_obey_detailed_balance_with_harmonic_occupations(grown):
    land = grown[0]
    P = land.network.n_params
    temperature = 0.05
    orders = {m.id: orders_by_brute_force(land, m.coords) for m in land.minima}
    assert land.point_group_orders() == orders
    log_z = {m.id: oracle_log_z(m.loss, m.eigenvalues, orders[m.id], temperature, P) for m in land.minima}
    top = max(log_z.values())
    total = sum(np.exp(v - top) for v in log_z.values())
    occupation = {m: np.exp(v - top) / total for m, v in log_z.items()}
    got = land.occupation_probabilities(temperature)
    for m in occupation:
        assert got[m] == pytest.approx(occupation[m], rel=1e-9, abs=1e-300)
    rates = land.rates(temperature)
    expected = {}
    for ts in land.transition_states:
        positive = ts.eigenvalues[ts.eigenvalues > 0]
        o_ts = orders_by_brute_force(land, ts.coords)
        for a, b in ((ts.minimum1, ts.minimum2), (ts.minimum2, ts.minimum1)):
            minimum = land.db.minimum(a)
            k = (
                orders[a]
                / o_ts
                * np.sqrt(np.prod(minimum.eigenvalues / np.concatenate([positive, [1.0]])))
                / (2 * np.pi)
                * np.exp(-(ts.loss - minimum.loss) / temperature)
            )
            expected[a, b] = expected.get((a, b), 0.0) + k
    assert set(rates) == set(expected)
    for (a, b), k in rates.items():
        assert k == pytest.approx(expected[a, b], rel=1e-8)
        assert occupation[a] * k == pytest.approx(occupation[b] * rates[b, a], rel=1e-8)


def test_heat_capacity_is_the_derivative_of_the_harmonic_energy(grown):
    land = grown[0]
    P = land.network.n_params
    energies = np.array([m.loss for m in land.minima])
    orders = np.array([orders_by_brute_force(land, m.coords) for m in land.minima], dtype=float)
    log_products = np.array([np.log(m.eigenvalues).sum() for m in land.minima])

    def energy(temperature):
        w = -energies / temperature - np.log(orders) - 0.5 * log_products
        p = np.exp(w - w.max())
        p /= p.sum()
        return p @ energies + 0.5 * P * temperature

    temperatures = np.array([0.005, 0.02, 0.05, 0.2])
    got = land.heat_capacity(temperatures)
    for temperature, c in zip(temperatures, got, strict=True):
        h = 1e-4 * temperature
        numeric = (energy(temperature + h) - energy(temperature - h)) / (2 * h)
        assert c == pytest.approx(numeric, rel=1e-6)
    assert got.max() > 0.5 * P + 0.05  # the minima's energy spread shows up, not just P/2
    with pytest.raises(ValueError, match="temperatures"):
        land.heat_capacity([0.1, -1.0])


def test_free_energy_graph_without_and_with_full_regrouping(grown):
    land = grown[0]
    P = land.network.n_params
    temperature = 0.05
    log_z = {
        m.id: oracle_log_z(m.loss, m.eigenvalues, orders_by_brute_force(land, m.coords), temperature, P)
        for m in land.minima
    }
    graph = land.free_energy_graph(temperature, barrier=-np.inf)  # no regrouping: one group per minimum
    drawn = dict(zip(graph.minimum_ids.tolist(), graph.minimum_energy, strict=True))
    assert set(drawn) == set(log_z) and all(len(g) == 1 for g in graph.groups.values())
    for m, f in drawn.items():
        assert f == pytest.approx(-temperature * log_z[m], rel=1e-10)
    merged = land.free_energy_graph(temperature, barrier=1e9)  # every barrier crossed: one group
    assert list(merged.groups.values()) == [frozenset(log_z)]
    values = np.array(list(log_z.values()))
    total = -temperature * (values.max() + np.log(np.exp(values - values.max()).sum()))
    assert merged.minimum_energy[0] == pytest.approx(total, rel=1e-10)


def test_harmonic_validity_compares_thermal_amplitude_with_distances(grown):
    land = grown[0]
    assert all(land.harmonic_validity(1e-12).values())
    assert not any(land.harmonic_validity(1e6).values())
    temperature = 1e-3
    got = land.harmonic_validity(temperature)
    for m in land.minima:
        nearest = min(align(land.network, m.coords, o.coords)[1] for o in land.minima if o.id != m.id)
        assert got[m.id] == (
            np.sqrt(temperature / np.linalg.eigvalsh(land.loss.hessian(m.coords))[0]) < 0.5 * nearest
        )


def test_superbasin_matches_the_disconnectivity_graph(grown):
    land = grown[0]
    graph = land.disconnectivity_graph(8)
    bottom = land.global_minimum.id
    for k, level in enumerate(graph.levels):
        expected = next(s for s in graph.superbasins(k) if bottom in s)
        assert set(land.superbasin(bottom, level)) == set(expected)
    with pytest.raises(ValueError, match="above threshold"):
        land.superbasin(bottom, land.global_minimum.loss - 1.0)


# ------------------------------------------------------------------------------- PATHSAMPLE files
def test_pathsample_files_round_trip(grown, tmp_path):
    land = grown[0]
    folder = land.export_pathsample(tmp_path / "ps")
    minima, tss = land.minima, land.transition_states
    min_data = np.loadtxt(folder / "min.data", ndmin=2)
    ts_data = np.loadtxt(folder / "ts.data", ndmin=2)
    assert min_data.shape == (len(minima), 6) and ts_data.shape == (len(tss), 8)
    line = {m.id: k + 1 for k, m in enumerate(minima)}
    for row, m in zip(min_data, minima, strict=True):
        assert row[0] == m.loss and row[1] == pytest.approx(np.log(m.eigenvalues).sum(), rel=1e-12)
        assert row[2] == orders_by_brute_force(land, m.coords) and list(row[3:]) == [1.0, 1.0, 1.0]
    for row, t in zip(ts_data, tss, strict=True):
        assert row[0] == t.loss
        assert row[1] == pytest.approx(np.log(t.eigenvalues[t.eigenvalues > 0]).sum(), rel=1e-12)
        assert (row[3], row[4]) == (line[t.minimum1], line[t.minimum2])
    P = land.network.n_params
    points = np.fromfile(folder / "points.min", dtype="<f8").reshape(-1, P)
    np.testing.assert_array_equal(points, [m.coords for m in minima])
    np.testing.assert_array_equal(
        np.fromfile(folder / "points.ts", dtype="<f8").reshape(-1, P), [t.coords for t in tss]
    )

    X, y = data()
    back = Landscape.from_pathsample(folder, X, y, hidden=4, weight_decay=1e-3, db=tmp_path / "back.sqlite")
    assert [m.loss for m in back.minima] == pytest.approx([m.loss for m in minima], rel=1e-12)
    assert [(line[t.minimum1], line[t.minimum2]) for t in tss] == [
        (t.minimum1, t.minimum2) for t in back.transition_states
    ]
    again = back.export_pathsample(tmp_path / "again")
    for name in ("min.data", "ts.data", "points.min", "points.ts"):
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    assert len(back.connected_sets()) == 1
    back.close()
    with pytest.raises(ValueError, match="not a stationary point"):
        Landscape.from_pathsample(folder, X, y, hidden=4, weight_decay=2e-3)
    with pytest.raises(ValueError, match="n_params"):
        Landscape.from_pathsample(folder, X, y, hidden=3, weight_decay=1e-3)
    with pytest.raises(ValueError, match="lacks"):
        Landscape.from_pathsample(tmp_path, X, y, hidden=4, weight_decay=1e-3)


# --------------------------------------------------------------------------- explanations at minima
def test_toolbox_at_a_minimum_has_the_stored_hessian(grown):
    land = grown[0]
    for m in land.minima[:3]:
        tb = land.toolbox(m.id)
        np.testing.assert_allclose(tb.eigenvalues.numpy(), m.eigenvalues, rtol=1e-8, atol=1e-12)
        assert tb.damping_ == 0.0


def oracle_top_k(land, minimum, X_test, y_test, k):
    """Influence I[i, j] = g_i^T H^-1 g_j / n in plain torch; the k largest |I| per test point."""
    ref = reference_loss(land)
    theta = torch.tensor(minimum.coords)
    H = torch.func.hessian(ref)(theta)

    def sample_loss(t, x, y):
        w1, b1, w2, b2 = land.network.unpack(t)
        out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return torch.nn.functional.cross_entropy(out[None], y[None])

    grads = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))
    g_train = grads(theta, torch.tensor(land.X), torch.tensor(land.y))
    standard = (X_test - land.X_raw.mean(0)) / land.X_raw.std(0)
    g_test = grads(theta, torch.tensor(standard), torch.tensor(y_test))
    influence = (g_test @ torch.linalg.solve(H, g_train.T)).numpy() / len(land.y)
    return [set(np.argsort(-np.abs(row))[:k]) for row in influence]


def test_explanation_stability_against_plain_torch_influence(grown):
    land = grown[0]
    X_test, y_test = data(n=6, seed=5)
    group = [m.id for m in land.minima[:3]]
    k = 4
    tops = [oracle_top_k(land, land.db.minimum(m), X_test, y_test, k) for m in group]
    expected = [
        np.mean([len(tops[a][i] & tops[b][i]) / k for a, b in ((0, 1), (0, 2), (1, 2))])
        for i in range(len(X_test))
    ]
    got = land.explanation_stability(X_test, y_test, group=group, k=k)
    np.testing.assert_allclose(got, expected)
    assert np.all((got >= 0) & (got <= 1))
    with pytest.raises(ValueError, match="k must be"):
        land.explanation_stability(X_test, y_test, group=group, k=0)
    with pytest.raises(ValueError, match="X_test"):
        land.explanation_stability(X_test[:, :2], group=group)


def test_explanation_stability_is_one_for_a_landscape_with_one_minimum():
    X, y = data(n=30, d=2, seed=3)
    land = Landscape(X, (X[:, 0] > 0).astype(int), hidden=2, weight_decay=1e-2).explore(0, progress=False)
    assert len(land.minima) == 1
    X_test, _ = data(n=5, d=2, seed=4)
    np.testing.assert_array_equal(land.explanation_stability(X_test, k=3), np.ones(5))
