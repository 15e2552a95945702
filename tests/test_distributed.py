"""The Dask backend gives the single-process results on a two-worker LocalCluster."""

import numpy as np
import pytest
import torch
from support import train_model
from torch import nn

import hessview.toolbox
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
    local = HessianToolbox(model, X, y, weight_decay=0.05, progress=False, **kw).fit()
    remote = HessianToolbox(model, X, y, weight_decay=0.05, progress=False, client=client, **kw).fit()
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
    monkeypatch.setattr(hessview.toolbox, "available_memory", lambda: 1_000)  # stream training gradients
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

    from hessview.distributed import _call, make_shards
    from hessview.params import FlatModel

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
