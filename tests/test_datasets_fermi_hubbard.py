"""Fermi-Hubbard ground states against the published states, brute force and closed forms."""

from pathlib import Path

import numpy as np
import pytest

from hessview.datasets import (
    FERMI_HUBBARD_GRIDS,
    _cache,
    fermi_hubbard_chain,
    fermi_hubbard_grid,
    fermi_hubbard_split,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "dawid2021"
needs_reference = pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference data folder {REFERENCE} is absent (no ../shared checkout)"
)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def load_reference(name):
    table = np.loadtxt(REFERENCE / name, delimiter=",")
    return table[:, 1:], table[:, 0].astype(np.int64)


@needs_reference
@pytest.mark.parametrize(
    "split, csv",
    [("test", "ED_size12_full_even_more_test.csv"), ("validation", "ED_size12_full_validation.csv")],
)
def test_reproduces_published_states_and_labels(split, csv, cache):
    states, labels = load_reference(csv)
    data = fermi_hubbard_split(split, cache_dir=cache, progress=False)
    assert data.X.shape == states.shape == (len(fermi_hubbard_grid(split)), 924)
    np.testing.assert_allclose(data.X, states, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(data.y, labels)


def brute_force_hamiltonian(L, N, V1, V2, h1):
    """H in the full 2^L space from Kronecker products (site 0 = most significant factor)."""
    eye, lower, number = np.eye(2), np.array([[0.0, 1.0], [0.0, 0.0]]), np.diag([0.0, 1.0])

    def site_operator(op, i):
        out = np.array([[1.0]])
        for j in range(L):
            out = np.kron(out, op if j == i else eye)
        return out

    n = [site_operator(number, i) for i in range(L)]
    b = [site_operator(lower, i) for i in range(L)]
    H = np.zeros((2**L, 2**L))
    identity = np.eye(2**L)
    for i in range(L):
        j, k = (i + 1) % L, (i + 2) % L
        H += -0.5 * (b[i].T @ b[j] + b[j].T @ b[i])  # hard-core bosons: every hop is -J/2
        H += V1 * (n[i] - identity / 2) @ (n[j] - identity / 2)
        H += V2 * (n[i] - identity / 2) @ (n[k] - identity / 2)
        H += h1 * (-1) ** i * n[i]
    sector = [s for s in range(2**L - 1, -1, -1) if bin(s).count("1") == N]
    return H[np.ix_(sector, sector)]


@pytest.mark.parametrize("V1, V2", [(0.3, 0.0), (2.5, 0.7), (7.0, -0.4)])
def test_matches_dense_brute_force_diagonalisation(V1, V2, cache):
    L, N, h1 = 8, 4, 1e-3
    values, vectors = np.linalg.eigh(brute_force_hamiltonian(L, N, V1, V2, h1))
    expected = np.abs(vectors[:, 0])
    data = fermi_hubbard_chain(V1, V2=V2, L=L, N=N, h1=h1, cache_dir=cache, progress=False)
    assert values[1] - values[0] > 1e-6  # a unique ground state, so the vector is well defined
    np.testing.assert_allclose(data.energy[0], values[0], atol=1e-10)
    np.testing.assert_allclose(data.X[0], expected, atol=1e-8)


@pytest.mark.parametrize("L, N", [(12, 6), (10, 5), (10, 4)])
def test_free_fermion_energy_at_zero_interaction(L, N, cache):
    # hard-core bosons on a ring = free fermions with boundary phase (-1)^(N-1)
    shift = 0.5 if N % 2 == 0 else 0.0
    levels = np.sort(-np.cos(2 * np.pi * (np.arange(L) + shift) / L))
    data = fermi_hubbard_chain(0.0, L=L, N=N, h1=1e-11, cache_dir=cache, progress=False)  # smallest field
    np.testing.assert_allclose(data.energy[0], levels[:N].sum(), atol=1e-10)
    np.testing.assert_allclose(data.density[0], N / L, atol=1e-10)
    assert data.y[0] == 0


def test_strong_interaction_gives_alternating_density_and_perturbative_energy(cache):
    V1, L = 40.0, 12
    data = fermi_hubbard_chain(V1, L=L, N=6, cache_dir=cache, progress=False)
    # h1 > 0 favours the odd sites; second-order energy -V1 L/4 - L/(4 V1)
    assert np.all(data.density[0, 1::2] > 0.99) and np.all(data.density[0, 0::2] < 0.01)
    assert data.order_parameter[0] > 0.98 and data.y[0] == 1
    np.testing.assert_allclose(data.energy[0], -V1 * L / 4 - L / (4 * V1), atol=1e-3)


def test_states_are_normalised_non_negative_with_consistent_observables(cache):
    data = fermi_hubbard_chain([0.0, 0.5, 1.5, 10.0], L=10, N=5, cache_dir=cache, progress=False)
    assert data.X.dtype == np.float64 and data.y.dtype == np.int64
    np.testing.assert_allclose(np.linalg.norm(data.X, axis=1), 1.0, atol=1e-12)
    assert np.all(data.X >= 0)
    np.testing.assert_allclose(data.density.sum(axis=1), 5.0, atol=1e-10)
    np.testing.assert_array_equal(data.x, data.V1)
    assert data.x_label == "V1/J" and len(data) == 4


def test_cache_round_trip_reads_the_file_without_recomputing(cache, monkeypatch):
    first = fermi_hubbard_chain([0.2, 3.0], L=8, N=4, cache_dir=cache, progress=False)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as stored:
        np.testing.assert_array_equal(stored["X"], first.X)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr("hessview.datasets.fermi_hubbard._diagonalise", fail)
    second = fermi_hubbard_chain([0.2, 3.0], L=8, N=4, cache_dir=cache, progress=False)
    for field in ("X", "y", "V1", "V2", "density", "order_parameter", "energy"):
        np.testing.assert_array_equal(getattr(second, field), getattr(first, field))
    with pytest.raises(AssertionError, match="recomputed"):
        fermi_hubbard_chain([0.2, 3.0], L=8, N=4, h1=2e-7, cache_dir=cache, progress=False)


def test_cache_directory_defaults_to_hessview_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path))
    fermi_hubbard_chain(0.5, L=6, N=3, progress=False)
    assert len(list((tmp_path / "datasets").glob("fermi_hubbard-*.npz"))) == 1


def test_failed_write_leaves_no_partial_file_and_keeps_old_cache(cache, monkeypatch, caplog):
    good = fermi_hubbard_chain(0.5, L=6, N=3, cache_dir=cache, progress=False)
    (path,) = cache.glob("*.npz")
    before = path.read_bytes()

    def crash(handle, **arrays):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(_cache.np, "savez", crash)
    with caplog.at_level("WARNING", logger="hessview.cache"):
        unsaved = fermi_hubbard_chain(0.7, L=6, N=3, cache_dir=cache, progress=False)  # computed in memory
    assert "disk full" in caplog.text and "not kept" in caplog.text and len(caplog.records) == 1
    assert unsaved.V1.tolist() == [0.7] and unsaved.X.shape == good.X.shape
    assert [p.name for p in cache.iterdir()] == [path.name]
    path.unlink()
    path.write_bytes(before)
    assert fermi_hubbard_chain(0.5, L=6, N=3, cache_dir=cache, progress=False).X.shape == good.X.shape


def test_named_grids_are_the_papers():
    train = fermi_hubbard_grid("train")
    assert len(train) == 1000 and train[0] == 0.0 and train[-1] == 40.0
    assert np.sum(train <= 1.0) == 500
    assert len(fermi_hubbard_grid("validation")) == 200 and len(fermi_hubbard_grid("test")) == 50
    edges, middle = fermi_hubbard_grid("train_edges"), fermi_hubbard_grid("train_middle")
    assert np.all(np.isin(edges, train)) and np.all(np.isin(middle, train))
    assert np.all((edges <= 0.25) | (edges >= 36)) and np.all((middle >= 0.75) & (middle <= 20))
    outside_edges = train[(train > 0.25) & (train < 36)]
    assert len(edges) + len(outside_edges) == 1000
    assert set(FERMI_HUBBARD_GRIDS) == {"train", "validation", "test", "train_edges", "train_middle"}


def test_training_window_split_is_cut_from_the_training_set(cache, monkeypatch):
    small = np.concatenate([np.linspace(0.0, 1.0, 5), np.linspace(1.01, 40.0, 5)])
    monkeypatch.setattr("hessview.datasets.fermi_hubbard._training_grid", lambda: small)
    edges = fermi_hubbard_split("train_edges", cache_dir=cache, progress=False)
    np.testing.assert_array_equal(edges.V1, [0.0, 0.25, 40.0])
    np.testing.assert_array_equal(edges.y, [0, 0, 1])
    full = fermi_hubbard_chain(small, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(edges.X, full.X[[0, 1, 9]])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"V1": [0.1], "L": 12.0}, TypeError, "L must be an integer"),
        ({"V1": [0.1], "N": True}, TypeError, "N must be an integer"),
        ({"V1": [0.1], "L": 2}, ValueError, "L must be between"),
        ({"V1": [0.1], "L": 6, "N": 6}, ValueError, "N must satisfy"),
        ({"V1": [np.nan]}, ValueError, "V1 and V2 must be finite"),
        ({"V1": [0.1], "V2": [np.inf]}, ValueError, "V1 and V2 must be finite"),
        ({"V1": [[0.1, 0.2]]}, ValueError, "1-D"),
        ({"V1": []}, ValueError, "non-empty"),
        ({"V1": [0.1], "h1": np.nan}, ValueError, "h1 must be finite"),
        ({"V1": [0.1], "h1": "1e-7"}, TypeError, "h1 must be a number"),
        ({"V1": [0.1], "h1": 0.0}, ValueError, "every\\s+CDW state would be labelled LL"),
        ({"V1": [0.1], "h1": -1e-12}, ValueError, r"\|h1\| >= 1e-11"),
    ],
)
def test_bad_arguments_raise(kwargs, error, message, cache):
    with pytest.raises(error, match=message):
        fermi_hubbard_chain(cache_dir=cache, progress=False, **kwargs)


def test_without_a_field_every_cdw_state_would_be_labelled_ll(cache):
    # Why h1 = 0 is refused, from plain dense diagonalisation: deep in the CDW phase the unique ground
    # state of the unbroken ring has a uniform density, so the order parameter (and the label) vanish.
    L, N = 8, 4
    _, vectors = np.linalg.eigh(brute_force_hamiltonian(L, N, 40.0, 0.0, 0.0))
    occupation = np.array([[(s >> (L - 1 - i)) & 1 for i in range(L)] for s in range(2**L - 1, -1, -1)])
    occupation = occupation[occupation.sum(axis=1) == N]
    density = vectors[:, 0] ** 2 @ occupation
    np.testing.assert_allclose(density, N / L, atol=1e-12)
    with pytest.raises(ValueError, match="labelled LL"):
        fermi_hubbard_chain(40.0, L=L, N=N, h1=0.0, cache_dir=cache, progress=False)
    # with the paper's field the same point is an ordered CDW
    assert fermi_hubbard_chain(40.0, L=L, N=N, cache_dir=cache, progress=False).y.tolist() == [1]


def test_labels_do_not_depend_on_the_field_down_to_the_smallest_allowed(cache):
    # order ~ chi h1 in linear response, so "order > 10 |h1|" is "chi > 10" for any allowed h1;
    # the grid crosses the L = 8 transition
    V1 = np.concatenate([np.linspace(0.8, 1.2, 9), [2.0, 40.0]])
    labels = [
        fermi_hubbard_chain(V1, L=8, N=4, h1=h1, cache_dir=cache, progress=False).y
        for h1 in (1e-5, 1e-7, -1e-9, 1e-11)
    ]
    assert 0 < labels[0].sum() < len(V1)
    for other in labels[1:]:
        np.testing.assert_array_equal(other, labels[0])


@pytest.mark.parametrize("name, error", [("training", ValueError), (3, TypeError)])
def test_unknown_split_raises(name, error):
    with pytest.raises(error, match="split"):
        fermi_hubbard_split(name)
