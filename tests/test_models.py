"""Models: the paper's architecture and weights, min-max scaling, training to a stationary point."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.preprocessing import MinMaxScaler as SklearnMinMaxScaler
from torch import nn

from hessview.datasets import fermi_hubbard_chain, fermi_hubbard_grid
from hessview.models import (
    CNN1D_tiny_ED,
    IsingCNN,
    MinMaxScaler,
    load_published_weights,
    sample_gradient_norms,
    train,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "dawid2021"


def test_paper_cnn_has_740_parameters_and_two_logits():
    model = CNN1D_tiny_ED()
    assert sum(p.numel() for p in model.parameters()) == 740
    assert model(torch.rand(7, 1, 924)).shape == (7, 2)


def test_ising_cnn_is_translation_and_shape_safe():
    torch.manual_seed(0)
    model = IsingCNN(L=8).double()
    spins = torch.randint(0, 2, (5, 8, 8)).double() * 2 - 1
    shifted = torch.roll(spins, shifts=(3, -2), dims=(1, 2))  # periodic lattice: same physics
    torch.testing.assert_close(model(shifted), model(spins))
    torch.testing.assert_close(model(spins[:, None]), model(spins))
    with pytest.raises(ValueError, match="8x8"):
        model(torch.zeros(2, 6, 6))


def test_minmax_scaler_matches_sklearn_per_feature_and_global_formula():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 5)) * [1, 2, 3, 4, 0]
    ours = MinMaxScaler(per_feature=True).fit_transform(X)
    np.testing.assert_allclose(ours, SklearnMinMaxScaler().fit_transform(X), atol=1e-12)
    glob = MinMaxScaler().fit(X)
    np.testing.assert_allclose(glob.transform(X), (X - X.min()) / (X.max() - X.min()))
    restored = MinMaxScaler.from_json(glob.to_json())
    np.testing.assert_array_equal(restored.transform(X), glob.transform(X))
    restored = MinMaxScaler.from_json(MinMaxScaler(per_feature=True).fit(X).to_json())
    np.testing.assert_array_equal(restored.transform(X), ours)


def test_minmax_scaler_bad_input():
    with pytest.raises(ValueError, match="not fitted"):
        MinMaxScaler().transform(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="shape"):
        MinMaxScaler().fit(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        MinMaxScaler().fit(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="samples of shape"):
        MinMaxScaler(per_feature=True).fit(np.zeros((2, 3))).transform(np.zeros((2, 4)))


def blobs(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 2)) + 1.2 * (2 * y[:, None] - 1)
    return X, y


def small_net():
    return nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))


def independent_gradient(model, X, y, weight_decay):
    model.zero_grad()
    X = torch.as_tensor(X, dtype=torch.float64)
    loss = nn.functional.cross_entropy(model(X), torch.as_tensor(y))
    loss = loss + weight_decay / 2 * sum((p**2).sum() for p in model.parameters())
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.cat([g.flatten() for g in grads]).norm().item()


def test_training_reaches_a_stationary_point():
    X, y = blobs()
    result = train(small_net(), X, y, weight_decay=1e-2, epochs=200, seed=0, progress=False)
    norm = independent_gradient(result.model, X, y, 1e-2)
    assert norm < 1e-3 * result.median_sample_gradient_norm
    assert result.gradient_norm == pytest.approx(norm, rel=1e-6, abs=1e-12)
    assert result.accuracy > 0.85 and result.lbfgs_steps > 0
    assert all(p.dtype == torch.float64 for p in result.model.parameters())


def test_training_is_deterministic_and_seeded():
    X, y = blobs()
    kw = dict(weight_decay=1e-2, epochs=50, lbfgs_steps=20, progress=False)
    a = train(small_net(), X, y, seed=1, **kw).model
    b = train(small_net(), X, y, seed=1, **kw).model
    c = train(small_net(), X, y, seed=2, **kw).model
    for pa, pb in zip(a.parameters(), b.parameters(), strict=False):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=False))


def test_sample_gradient_norms_equal_a_loop_of_autograd():
    X, y = blobs(n=8)
    model = small_net().double()
    expected = []
    for x_i, y_i in zip(torch.as_tensor(X), torch.as_tensor(y), strict=False):
        loss = nn.functional.cross_entropy(model(x_i[None]), y_i[None])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        expected.append(torch.cat([g.flatten() for g in grads]).norm().item())
    np.testing.assert_allclose(sample_gradient_norms(model, X, y), expected, rtol=1e-10)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"epochs": -1}, ValueError, "epochs"),
    ],
)
def test_training_bad_arguments(kwargs, error, message):
    X, y = blobs(n=10)
    with pytest.raises(error, match=message):
        train(small_net(), X, y, progress=False, **kwargs)


def test_training_bad_data():
    X, y = blobs(n=10)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        train(lambda x: x, X, y, progress=False)
    with pytest.raises(ValueError, match="same non-zero length"):
        train(small_net(), X, y[:5], progress=False)
    with pytest.raises(ValueError, match="integer class labels"):
        train(small_net(), X, y + 0.5, progress=False)


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference data folder {REFERENCE} is absent")
def test_published_weights_classify_the_reference_validation_set(tmp_path):
    table = np.loadtxt(REFERENCE / "ED_size12_full_validation.csv", delimiter=",")
    states, labels = table[:, 1:], table[:, 0].astype(int)
    # the paper's normalisation: one min and max over its training set; the extreme amplitudes of
    # the training grid sit at its ends (V1 = 0 and V1 = 40), so every 20th point plus the ends
    # gives the same min and max
    grid = fermi_hubbard_grid("train")
    train_part = fermi_hubbard_chain(np.r_[grid[::20], grid[-1]], cache_dir=tmp_path, progress=False)
    scaler = MinMaxScaler().fit(train_part.X)
    model = load_published_weights()
    with torch.no_grad():
        predicted = model(torch.as_tensor(scaler.transform(states))[:, None]).argmax(1).numpy()
    assert np.mean(predicted == labels) >= 0.95
    state = torch.load(REFERENCE / "Conv1D_original_l005_12site.pt", map_location="cpu", weights_only=True)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[name].double())
