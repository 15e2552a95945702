"""The Dask backend gives the single-process results on a two-worker LocalCluster."""

import numpy as np
import pytest
import torch
from support import fit_checked, train_model
from torch import nn

import hessview
import hessview.engine.distributed
import hessview.engine.params
import hessview.engine.toolbox
from hessview import HessianToolbox

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    # in-process workers start in a second here (worker processes need ~30 s on this loaded machine);
    # test_shards_survive_dask_serialisation covers what processes would add: pickling the shards
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=40
    )
    with distributed.Client(cluster) as c:
        c.run(torch.set_num_threads, 1)
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(90, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] * X[:, 1] > 0).long()
    torch.manual_seed(0)
    model = train_model(nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)), X, y, weight_decay=0.05)
    return model, X, y, X[:7] + 0.3


def both(model, X, y, client, **kw):
    local = fit_checked(HessianToolbox(model, X, y, weight_decay=0.05, progress=False, **kw))
    remote = fit_checked(HessianToolbox(model, X, y, weight_decay=0.05, progress=False, client=client, **kw))
    return local, remote


def test_exact_mode_on_dask_equals_single_process(client, problem):
    model, X, y, X_test = problem
    local, remote = both(model, X, y, client, curvature="ggn")
    assert len(remote._get_backend().shards) == 2  # one shard per worker
    torch.testing.assert_close(remote.hessian, local.hessian, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(remote.train_gradients, local.train_gradients, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(remote.influence(X_test), local.influence(X_test), rtol=1e-9, atol=1e-14)
    # CG on Dask (its products summed over two shards) reaches the single-process dense solve
    truth = local.influence(X_test[:2])
    cg = remote.influence(X_test[:2], solver="cg", tol=1e-12)
    np.testing.assert_allclose(cg, truth, rtol=0, atol=1e-9 * np.abs(truth).max())


def test_lowrank_mode_on_dask_equals_single_process(client, problem, monkeypatch):
    model, X, y, X_test = problem
    # stream the training gradients
    monkeypatch.setattr(hessview.engine.toolbox, "available_memory", lambda: 1_000)
    # rank 4 ends at a spectral gap (below it a near-degenerate cluster), tol=0: machine-precision pairs
    local, remote = both(model, X, y, client, method="lowrank", rank=4, lanczos_tol=0)
    np.testing.assert_allclose(remote.eigenvalues.numpy(), local.eigenvalues.numpy(), rtol=1e-10)
    assert remote.gradient_norm_ == pytest.approx(local.gradient_norm_, rel=1e-8, abs=1e-13)
    np.testing.assert_allclose(remote.influence(X_test), local.influence(X_test), rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(remote.relatif(X_test), local.relatif(X_test), rtol=1e-8, atol=1e-14)
    a, b = remote.uncertainty(X_test, n_resamples=20), local.uncertainty(X_test, n_resamples=20)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-8, atol=1e-14)


def test_shards_survive_dask_serialisation(problem):
    """What a worker process receives: the shard after Dask's (cloud)pickle round trip computes the same."""
    from distributed.protocol import deserialize, serialize

    model, X, y, _ = problem
    tb = HessianToolbox(model, X, y, weight_decay=0.05, progress=False).fit()
    shard = tb._get_backend().shards[0]
    copy = deserialize(*serialize(shard, serializers=["pickle"]))
    assert copy is not shard
    V = torch.randn(3, tb.n_params, dtype=torch.float64)
    torch.testing.assert_close(copy.curvature_matmat(V, "hessian"), shard.curvature_matmat(V, "hessian"))
    torch.testing.assert_close(copy.gradients(), shard.gradients())


def test_shard_work_from_many_threads_equals_one_after_another():
    """Dask workers run tasks in threads of one process; torch.func breaks unless they take turns."""
    from concurrent.futures import ThreadPoolExecutor

    from hessview.engine.distributed import _call, make_shards
    from hessview.engine.params import FlatModel

    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    torch.manual_seed(1)
    flat = FlatModel(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double(), torch.float64)
    shards = make_shards(flat, X, y, "cross_entropy", 25)
    sequential = [_call(s, "dense_curvature", "hessian", 16) for s in shards]
    with ThreadPoolExecutor(len(shards)) as pool:
        for _ in range(3):
            threaded = list(pool.map(lambda s: _call(s, "dense_curvature", "hessian", 16), shards))
            for a, b in zip(threaded, sequential, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def small_cnn_problem():
    """A tiny periodic CNN on 6 x 6 lattices: convolution, pooling and tanh, as in the scale benchmark."""
    g = torch.Generator().manual_seed(2)
    X = torch.where(torch.rand(23, 6, 6, generator=g) < 0.5, 1.0, -1.0).double()
    y = (X.mean(dim=(1, 2)) > 0).long()
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Unflatten(1, (1, 6)),
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(18, 5),
        nn.Tanh(),
        nn.Linear(5, 2),
    ).double()
    return model, X, y


@pytest.mark.parametrize("n_vectors", [1, 3])  # one vector: double backward; several: vmapped jvp of grad
def test_curvature_products_in_small_passes_equal_the_autograd_hessian(monkeypatch, n_vectors):
    from hessview.engine.distributed import make_shards
    from hessview.engine.losses import per_sample_loss
    from hessview.engine.params import FlatModel

    model, X, y = small_cnn_problem()
    flat = FlatModel(model, torch.float64)
    H = torch.autograd.functional.hessian(
        lambda t: per_sample_loss("cross_entropy", flat(t, X), y).mean(), flat.theta
    )
    V = torch.randn(n_vectors, flat.n_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # passes of 2 samples, 1-2 vectors
    monkeypatch.setattr(hessview.engine.distributed, "PASS_BYTES", 8 * 36 * 2)
    shards = make_shards(flat, X, y, "cross_entropy", 10)
    products = sum(shard.curvature_matmat(V, "hessian") for shard in shards)
    torch.testing.assert_close(products, V @ H, rtol=1e-10, atol=1e-13)


def test_kept_gradients_are_written_in_place_and_equal_autograd(client, monkeypatch):
    """Low-rank fits keep G when it fits: filled shard by shard (in process and from Dask workers)."""
    from hessview.engine.losses import per_sample_loss

    model, X, y = small_cnn_problem()
    monkeypatch.setattr(hessview.engine.distributed, "GRADIENT_BYTES", 8 * 3 * 100)  # 3 gradients per pass
    flat = hessview.engine.params.FlatModel(model, torch.float64)
    truth = []
    for x, label in zip(X, y, strict=True):
        theta = flat.theta.clone().requires_grad_(True)
        loss = per_sample_loss("cross_entropy", flat(theta, x[None]), label[None])[0]
        truth.append(torch.autograd.grad(loss, theta)[0])
    truth = torch.stack(truth)
    for c in (None, client):
        tb = HessianToolbox(
            model, X, y, weight_decay=0.05, method="lowrank", rank=3, progress=False, client=c
        )
        # an untrained model: not stationary, and the damping 2|lambda_min| dominates most kept directions
        with pytest.warns(hessview.NotStationaryWarning), pytest.warns(hessview.DampingWarning):
            fit_checked(tb)
        torch.testing.assert_close(tb.train_gradients, truth, rtol=1e-12, atol=1e-14)
        assert tb.median_sample_gradient_norm_ == pytest.approx(float(truth.norm(dim=1).median()))


def test_exact_fit_adds_the_shards_hessians_as_they_come_and_equals_autograd(client, problem, monkeypatch):
    """Nine shards: one shard's P x P Hessian alive at a time besides the sum (a list of them all would not
    fit in memory for a P ~ 10^4 MLP with 784 inputs, whose shards hold 12 samples); the same matrix on Dask.
    """
    import weakref

    from torch.func import functional_call

    model, X, y, _ = problem
    monkeypatch.setattr(hessview.engine.toolbox, "default_chunks", lambda n, numel, P: (10, 128))
    alive, most = set(), [0]
    compute = hessview.engine.distributed.Shard.dense_curvature

    def tracked(shard, *args):
        H = compute(shard, *args)
        alive.add(id(H))
        most[0] = max(most[0], len(alive))
        weakref.finalize(H, alive.discard, id(H))
        return H

    monkeypatch.setattr(hessview.engine.distributed.Shard, "dense_curvature", tracked)
    local = fit_checked(HessianToolbox(model, X, y, weight_decay=0.05, progress=False))
    assert len(local._get_backend().shards) == 9 and most[0] <= 2
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def objective(t):
        pieces = [q.view(s) for q, s in zip(torch.split(t, [s.numel() for s in shapes]), shapes, strict=True)]
        outputs = functional_call(model, dict(zip(names, pieces, strict=True)), (X,))
        return torch.nn.functional.cross_entropy(outputs, y) + 0.05 / 2 * t @ t

    torch.testing.assert_close(local.hessian, torch.autograd.functional.hessian(objective, theta))
    remote = fit_checked(HessianToolbox(model, X, y, weight_decay=0.05, progress=False, client=client))
    assert len(remote._get_backend().shards) == 9
    assert torch.equal(remote.hessian, local.hessian)  # summed in the same order
