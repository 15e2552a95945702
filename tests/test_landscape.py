"""Landscape: loss, symmetries, minima, transition states, persistence, relevance, against ground truth."""

import itertools
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hessview.landscape import Landscape
from hessview.landscape.network import RegularisedLoss, TanhNetwork
from hessview.landscape.quench import quench
from hessview.landscape.symmetry import align, apply_symmetry


def xor_data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(int)


@pytest.fixture(scope="module")
def connected():
    X, y = xor_data()
    land = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=0)
    land.explore(25, progress=False)
    land.connect(progress=False)
    return land


def autograd_loss(land):
    """An independent torch implementation of the documented loss (ground truth for the engine)."""
    net = land.network
    x = torch.tensor(land.X)
    y = torch.tensor(land.y)

    def loss(theta):
        w1, b1, w2, b2 = net.unpack(theta)
        out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        ce = torch.nn.functional.cross_entropy(out, y)
        return ce + 0.5 * land.weight_decay * theta.pow(2).sum()

    return loss


def test_gradient_matches_autograd():
    X, y = xor_data()
    land = Landscape(X, y, hidden=3, weight_decay=0.01)
    ref = autograd_loss(land)
    rng = np.random.default_rng(1)
    thetas = rng.normal(size=(4, land.network.n_params))
    values, grads = land.loss.batch_value_and_gradient(thetas)
    for theta, value, grad in zip(thetas, values, grads, strict=True):
        t = torch.tensor(theta, requires_grad=True)
        expected = ref(t)
        (expected_grad,) = torch.autograd.grad(expected, t)
        assert value == pytest.approx(float(expected.detach()), rel=1e-12)
        np.testing.assert_allclose(grad, expected_grad.numpy(), rtol=1e-10, atol=1e-13)
        single_value, single_grad = land.loss.value_and_gradient(theta)
        assert single_value == pytest.approx(value, rel=1e-13)
        np.testing.assert_allclose(single_grad, grad, rtol=1e-12, atol=1e-15)


def random_symmetry(h, rng):
    return rng.permutation(h), rng.choice([-1.0, 1.0], size=h)


def test_loss_invariant_under_permutations_and_sign_flips():
    X, y = xor_data()
    net = TanhNetwork(2, 4, 2)
    loss = RegularisedLoss(net, X, y, 0.01)
    rng = np.random.default_rng(2)
    theta = rng.normal(size=net.n_params)
    for _ in range(5):
        copy = apply_symmetry(net, theta, *random_symmetry(4, rng))
        assert not np.allclose(copy, theta)
        assert loss.value(copy) == pytest.approx(loss.value(theta), rel=1e-13)
        np.testing.assert_allclose(
            loss.predict_proba(copy, X), loss.predict_proba(theta, X), rtol=1e-12, atol=1e-14
        )


def test_alignment_equals_brute_force_over_the_whole_symmetry_group():
    net = TanhNetwork(2, 3, 2)
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, b = rng.normal(size=(2, net.n_params))
        brute = min(
            np.linalg.norm(a - apply_symmetry(net, b, np.array(perm), np.array(signs)))
            for perm in itertools.permutations(range(3))
            for signs in itertools.product([-1.0, 1.0], repeat=3)
        )
        assert align(net, a, b)[1] == pytest.approx(brute, rel=1e-12)


def test_symmetric_copy_of_a_minimum_is_recognised(connected):
    land = connected
    rng = np.random.default_rng(4)
    before = {m.id: m.hits for m in land.minima}
    target = land.minima[0]
    copy = apply_symmetry(land.network, target.coords, *random_symmetry(land.hidden, rng))
    point = quench(land.loss, copy)
    with land.db.transaction():
        found, new = land._record_minimum(point)
    assert (found, new) == (target.id, False)
    after = {m.id: m.hits for m in land.minima}
    assert after[target.id] == before[target.id] + 1 and len(after) == len(before)


def test_minima_are_true_minima(connected):
    land = connected
    ref = autograd_loss(land)
    assert len(land.minima) >= 2
    for m in land.minima:
        t = torch.tensor(m.coords, requires_grad=True)
        (g,) = torch.autograd.grad(ref(t), t)
        assert float(g.norm()) < 1e-8
        eigenvalues = np.linalg.eigvalsh(torch.func.hessian(ref)(torch.tensor(m.coords)).numpy())
        assert eigenvalues.min() > 0
        np.testing.assert_allclose(m.eigenvalues, eigenvalues, rtol=1e-8, atol=1e-12)
        assert m.loss == pytest.approx(float(ref(torch.tensor(m.coords))), rel=1e-12)
        # exact symmetry: shifting every output unit's weights and bias by the same amount leaves the
        # softmax unchanged, so hidden + 1 directions are curved by the L2 term alone
        assert np.sum(np.isclose(eigenvalues, land.weight_decay, rtol=1e-6)) >= land.hidden + 1


def steepest_descent_end(ref, start, steps=20000, lr=0.5):
    """Plain gradient descent with autograd, independent of the quench code."""
    t = torch.tensor(start, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [t], lr=lr, max_iter=steps, tolerance_grad=1e-12, tolerance_change=0, line_search_fn="strong_wolfe"
    )

    def closure():
        optimiser.zero_grad()
        value = ref(t)
        value.backward()
        return value

    optimiser.step(closure)
    return t.detach().numpy()


def test_transition_states_have_one_negative_eigenvalue_and_join_their_minima(connected):
    land = connected
    ref = autograd_loss(land)
    assert land.transition_states
    for ts in land.transition_states:
        t = torch.tensor(ts.coords, requires_grad=True)
        (g,) = torch.autograd.grad(ref(t), t)
        assert float(g.norm()) < 1e-8
        eigenvalues, vectors = np.linalg.eigh(torch.func.hessian(ref)(torch.tensor(ts.coords)).numpy())
        assert (eigenvalues < 0).sum() == 1
        ends = [steepest_descent_end(ref, ts.coords + sign * 1e-3 * vectors[:, 0]) for sign in (1, -1)]
        joined = {ts.minimum1, ts.minimum2}
        assert len(joined) == 2
        reached = set()
        for end in ends:
            distances = {m.id: align(land.network, m.coords, end)[1] for m in land.minima}
            best = min(distances, key=distances.get)
            assert distances[best] < 1e-4
            reached.add(best)
        assert reached == joined
        assert ts.loss > max(land.db.minimum(i).loss for i in joined)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    X, y = xor_data()
    full = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=5).explore(8, progress=False)

    class Stop(Exception):
        pass

    def stop_at_step_4(step, minimum, accepted):
        if step == 4:
            raise Stop

    path = tmp_path / "run.sqlite"
    first = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=5, db=path)
    with pytest.raises(Stop):
        first.explore(8, callback=stop_at_step_4, progress=False)
    kept = len(first.minima)
    first.close()
    resumed = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=5, db=path)
    assert len(resumed.minima) == kept >= 1
    resumed.explore(4, progress=False)  # steps 1..4 were committed before the exception; 5..8 left
    a, b = full.minima, resumed.minima
    assert [m.loss for m in a] == pytest.approx([m.loss for m in b], rel=1e-10)
    assert [m.hits for m in a] == [m.hits for m in b]


def test_killed_process_keeps_its_minima_and_resumes(tmp_path):
    path = tmp_path / "killed.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from hessview.landscape import Landscape
        rng = np.random.default_rng(0)
        X = rng.normal(size=(60, 2)); y = (X[:, 0] * X[:, 1] > 0).astype(int)
        land = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=5, db={str(path)!r})
        def kill(step, minimum, accepted):
            if step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        land.explore(50, callback=kill, progress=False)
    """)
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    X, y = xor_data()
    land = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=5, db=path)
    assert sum(m.hits for m in land.minima) == 4  # the start and steps 1, 2, 3 were committed
    land.explore(2, progress=False)
    reference = Landscape(X, y, hidden=3, weight_decay=1e-3, seed=5).explore(5, progress=False)
    assert [m.loss for m in land.minima] == pytest.approx([m.loss for m in reference.minima])
    assert [m.hits for m in land.minima] == [m.hits for m in reference.minima]


def test_database_refuses_another_landscape(tmp_path):
    X, y = xor_data()
    path = tmp_path / "a.sqlite"
    Landscape(X, y, hidden=3, weight_decay=1e-3, db=path).close()
    with pytest.raises(ValueError, match="another landscape"):
        Landscape(X, y, hidden=3, weight_decay=1e-2, db=path)
    with pytest.raises(ValueError, match="another landscape"):
        Landscape(X[:50], y[:50], hidden=3, weight_decay=1e-3, db=path)


def test_feature_relevance_ranks_the_deciding_features_first():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 6))
    y = (X[:, 1] - 0.8 * X[:, 4] > 0).astype(int)
    land = Landscape(X, y, hidden=2, weight_decay=1e-2, seed=1).explore(6, progress=False)
    relevance = land.feature_relevance()
    assert relevance.shape == (6,) and relevance.sum() == pytest.approx(1.0)
    assert set(np.argsort(relevance)[::-1][:2]) == {1, 4}


def test_conserved_weights_of_symmetric_copies_have_zero_spread(connected):
    land = connected
    cw = land.conserved_weights([m.id for m in land.minima])
    assert cw.minimum_ids[0] == land.global_minimum.id
    for row, m in zip(cw.aligned, cw.minimum_ids, strict=True):
        assert land.loss.value(row) == pytest.approx(land.db.minimum(m).loss, rel=1e-12)
    np.testing.assert_allclose(cw.spread, cw.aligned.std(0))
    single = land.conserved_weights([land.minima[0].id])
    assert np.all(single.spread == 0) and np.all(single.conservation[single.input_mean != 0] == 1)


def test_occupation_probabilities_follow_the_harmonic_formula(connected):
    land = connected
    temperature = 0.02
    p = land.occupation_probabilities(temperature)
    weights = {
        m.id: np.exp(-(m.loss - land.global_minimum.loss) / temperature) / np.sqrt(np.prod(m.eigenvalues))
        for m in land.minima
    }
    total = sum(weights.values())
    for m in land.minima:
        assert p[m.id] == pytest.approx(weights[m.id] / total, rel=1e-9)


def test_basins_point_downhill(connected):
    land = connected
    basins = land.basins()
    energy = {m.id: m.loss for m in land.minima}
    for m, bottom in basins.items():
        assert energy[bottom] <= energy[m]
        assert basins[bottom] == bottom


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden": 0}, "hidden"),
        ({"hidden": 2.5}, "hidden"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"weight_decay": 0.0}, "weight_decay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    X, y = xor_data()
    with pytest.raises(ValueError, match=match):
        Landscape(X, y, **kwargs)


def test_bad_data_is_refused():
    X, y = xor_data()
    with pytest.raises(ValueError, match="2-D"):
        Landscape(X[:, 0], y)
    with pytest.raises(ValueError, match="finite"):
        Landscape(np.where(X > 1, np.nan, X), y)
    with pytest.raises(ValueError, match="one label per row"):
        Landscape(X, y[:-1])
    with pytest.raises(ValueError, match="integer"):
        Landscape(X, y + 0.5)
    with pytest.raises(ValueError, match="two classes"):
        Landscape(X, np.zeros_like(y))
    with pytest.raises(TypeError, match="db"):
        Landscape(X, y, db=3)


def test_bad_queries_are_refused(connected):
    land = connected
    with pytest.raises(ValueError, match="n_steps"):
        land.explore(-1)
    with pytest.raises(ValueError, match="temperature"):
        land.explore(1, temperature=0)
    with pytest.raises(ValueError, match="step_size"):
        land.explore(1, step_size=-1.0)
    with pytest.raises(ValueError, match="both"):
        land.connect(land.minima[0].id)
    with pytest.raises(ValueError, match="not the id"):
        land.connect(land.minima[0].id, 10_000)
    with pytest.raises(ValueError, match="n_images"):
        land.connect(land.minima[0].id, land.minima[1].id, n_images=0)
    with pytest.raises(ValueError, match="max_attempts"):
        land.connect(land.minima[0].id, land.minima[1].id, max_attempts=0)
    with pytest.raises(ValueError, match="levels"):
        land.disconnectivity_graph(levels=0)
    with pytest.raises(ValueError, match="levels"):
        land.disconnectivity_graph(levels=[0.1, float("nan")])
    with pytest.raises(ValueError, match="group"):
        land.conserved_weights([10_000])
    with pytest.raises(ValueError, match="basin"):
        land.feature_relevance(10_000)
    with pytest.raises(ValueError, match="temperature"):
        land.occupation_probabilities(-1.0)
    with pytest.raises(ValueError, match="shape"):
        land.predict_proba(np.zeros((3, 5)), land.minima[0].id)
    with pytest.raises(ValueError, match="no minimum"):
        land.db.minimum(10_000)


def test_empty_landscape_queries_explain_themselves():
    X, y = xor_data()
    land = Landscape(X, y, hidden=2)
    assert land.basins() == {} and land.minima == [] and land.transition_states == []
    for query in (
        land.feature_relevance,
        lambda: land.disconnectivity_graph(5),
        lambda: land.occupation_probabilities(1.0),
        lambda: land.global_minimum,
    ):
        with pytest.raises(ValueError, match="explore"):
            query()
