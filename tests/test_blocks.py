"""Influence written to disk in blocks against the in-memory result; atomic writes."""

import numpy as np
import pytest
import torch
from support import fit_checked
from torch import nn

import hessview.engine.queries
import hessview.engine.toolbox
from hessview import HessianToolbox


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 3, generator=g, dtype=torch.float64)
    return X, (X[:, 1] > 0).long()


def fitted(data, **kw):
    X, y = data
    torch.manual_seed(0)
    with pytest.warns(hessview.engine.toolbox.NotStationaryWarning):
        return fit_checked(HessianToolbox(nn.Linear(3, 2), X, y, weight_decay=0.1, progress=False, **kw))


@pytest.mark.parametrize("kw", [dict(), dict(method="lowrank", rank=3)])
def test_blocks_on_disk_equal_the_in_memory_influence(data, tmp_path, kw, monkeypatch):
    if kw:  # low rank with the training gradients recomputed for every block
        monkeypatch.setattr(hessview.engine.toolbox, "available_memory", lambda: 1_000)
    tb = fitted(data, **kw)
    X_test = data[0][:23] * 1.5
    mapped = tb.influence_to_disk(X_test, tmp_path / "influence.npy", block_size=5)
    assert isinstance(mapped, np.memmap) and mapped.shape == (23, 50) and mapped.dtype == np.float64
    np.testing.assert_allclose(mapped, tb.influence(X_test), rtol=1e-12, atol=1e-15)
    reread = np.load(tmp_path / "influence.npy", allow_pickle=False)
    np.testing.assert_array_equal(reread, mapped)


def test_with_labels_and_cg(data, tmp_path):
    tb = fitted(data)
    X, y = data
    mapped = tb.influence_to_disk(X[:7], tmp_path / "cg.npy", y[:7], block_size=4, solver="cg", tol=1e-10)
    np.testing.assert_allclose(mapped, tb.influence(X[:7], y[:7]), rtol=1e-7, atol=1e-12)


def test_a_failed_write_leaves_the_old_file(data, tmp_path, monkeypatch):
    tb = fitted(data)
    path = tmp_path / "influence.npy"
    tb.influence_to_disk(data[0][:6], path, block_size=3)
    before = path.read_bytes()
    calls = []
    original = hessview.engine.queries.influence_scores

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return original(*args)

    monkeypatch.setattr(hessview.engine.queries, "influence_scores", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        tb.influence_to_disk(data[0][:6] + 1.0, path, block_size=3)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["influence.npy"]


def test_bad_arguments_are_refused(data, tmp_path):
    tb = fitted(data)
    X = data[0][:3]
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        tb.influence_to_disk(X, tmp_path / "a.npy", block_size=0)
    with pytest.raises(ValueError, match=r"path must end in \.npy"):
        tb.influence_to_disk(X, tmp_path / "a.bin")
    with pytest.raises(ValueError, match="solver must be one of"):
        tb.influence_to_disk(X, tmp_path / "a.npy", solver="svd")
    with pytest.raises(ValueError, match=r"X_test has samples of shape \(4,\)"):
        tb.influence_to_disk(torch.ones(2, 4), tmp_path / "a.npy")
