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
    LogSumExpPool1d,
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


def test_a_warm_up_weight_decay_changes_only_the_warm_up_and_the_end_is_the_target_objectives_minimum():
    X, y = blobs()
    kw = dict(weight_decay=1e-1, epochs=100, lbfgs_steps=500, newton_steps=10, seed=0, progress=False)
    result = train(small_net(), X, y, adam_weight_decay=1e-3, **kw)
    # stationary for the objective with weight_decay (plain-torch gradient), not the warm-up's
    assert independent_gradient(result.model, X, y, 1e-1) < 1e-12
    assert independent_gradient(result.model, X, y, 1e-3) > 1e-3
    # the warm-up minimised the weaker objective: its first recorded loss is the initial model's
    torch.manual_seed(0)
    start = small_net()
    start.float()
    with torch.no_grad():
        Xf = torch.as_tensor(X, dtype=torch.float32)
        first = nn.functional.cross_entropy(start(Xf), torch.as_tensor(y))
        first = first + 1e-3 / 2 * sum((p**2).sum() for p in start.parameters())
    assert result.losses[0] == pytest.approx(float(first), rel=1e-6)
    same = train(small_net(), X, y, adam_weight_decay=1e-1, **kw)  # = the default: weight_decay throughout
    default = train(small_net(), X, y, **kw)
    np.testing.assert_array_equal(same.losses, default.losses)


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
        ({"adam_weight_decay": -1e-3}, ValueError, "adam_weight_decay"),
        ({"adam_weight_decay": float("nan")}, ValueError, "adam_weight_decay"),
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


def test_logsumexp_pool_is_a_smooth_max_between_mean_and_max():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 18))
    windows = x[..., :16].reshape(3, 2, 4, 4)
    for t in (0.05, 1.0):
        expected = t * np.log(np.mean(np.exp(windows / t), axis=-1))  # plain numpy, trailing 2 dropped
        got = LogSumExpPool1d(4, temperature=t)(torch.as_tensor(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        assert np.all(got <= windows.max(-1) + 1e-12) and np.all(got >= windows.mean(-1) - 1e-12)
    close = LogSumExpPool1d(4, temperature=1e-3)(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(close, windows.max(-1), atol=1e-3 * np.log(4))
    with pytest.raises(ValueError, match="temperature"):
        LogSumExpPool1d(4, temperature=0.0)


def plain_cnn(state, x, smooth, t=0.1):
    """The paper's CNN (or its smooth variant) written with torch.nn.functional alone."""
    F = nn.functional

    def pool(h):
        if not smooth:
            return F.max_pool1d(h, 4)
        windows = h[..., : h.shape[-1] // 4 * 4].unflatten(-1, (-1, 4))
        return t * (torch.logsumexp(windows / t, -1) - np.log(4))

    act = F.softplus if smooth else F.relu
    h = act(pool(F.conv1d(x, state["layer1.0.weight"], state["layer1.0.bias"], padding=1)))
    h = act(pool(F.conv1d(h, state["layer2.0.weight"], state["layer2.0.bias"])))
    h = act(F.avg_pool1d(F.conv1d(h, state["layer3.0.weight"], state["layer3.0.bias"], padding=1), 4))
    return F.linear(h.flatten(1), state["fc1.weight"], state["fc1.bias"])


@pytest.mark.parametrize("smooth", [False, True])
def test_paper_cnn_and_its_smooth_variant_share_parameters_and_match_plain_torch(smooth):
    paper = load_published_weights()
    model = CNN1D_tiny_ED(smooth=smooth).double()
    model.load_state_dict(paper.state_dict())
    x = torch.rand(4, 1, 924, dtype=torch.float64)
    expected = plain_cnn(paper.state_dict(), x, smooth)
    torch.testing.assert_close(model.eval()(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="smooth"):
        CNN1D_tiny_ED(smooth="yes")


def test_newton_steps_take_the_gradient_to_roundoff_at_the_same_minimum():
    X, y = blobs()
    kw = dict(weight_decay=1e-2, epochs=30, lbfgs_steps=20, seed=0, progress=False)
    rough = train(small_net(), X, y, **kw)
    polished = train(small_net(), X, y, newton_steps=10, **kw)
    assert 0 < polished.newton_steps <= 10
    assert independent_gradient(rough.model, X, y, 1e-2) > 1e-6
    assert independent_gradient(polished.model, X, y, 1e-2) < 1e-13
    # oracle: full Newton steps with plain autograd from the same L-BFGS end point
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)
    model = rough.model
    theta0 = torch.cat([p.detach().flatten() for p in model.parameters()])
    shapes = [p.shape for p in model.parameters()]

    def value(theta):
        pieces = torch.split(theta, [int(np.prod(s)) for s in shapes])
        w1, b1, w2, b2 = (p.view(s) for p, s in zip(pieces, shapes, strict=True))
        logits = torch.tanh(Xt @ w1.T + b1) @ w2.T + b2
        return nn.functional.cross_entropy(logits, yt) + 1e-2 / 2 * theta @ theta

    expected = theta0
    for _ in range(8):
        gradient = torch.func.grad(value)(expected)
        expected = expected - torch.linalg.solve(torch.func.hessian(value)(expected), gradient)
    assert torch.func.grad(value)(expected).norm() < 1e-13
    got = torch.cat([p.detach().flatten() for p in polished.model.parameters()])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-11)


def test_newton_steps_leave_an_indefinite_start_for_a_minimum():
    X, y = blobs()
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y)

    def network():
        return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 2))

    def hessian_eigenvalues(model):  # plain autograd on the objective
        params = list(model.parameters())
        shapes = [p.shape for p in params]
        theta = torch.cat([p.detach().flatten() for p in params])

        def value(flat):
            pieces = torch.split(flat, [int(np.prod(s)) for s in shapes])
            w1, b1, w2, b2 = (p.view(s) for p, s in zip(pieces, shapes, strict=True))
            logits = torch.tanh(Xt @ w1.T + b1) @ w2.T + b2
            return nn.functional.cross_entropy(logits, yt) + 1e-2 / 2 * flat @ flat

        return torch.linalg.eigvalsh(torch.func.hessian(value)(theta))

    kw = dict(weight_decay=1e-2, epochs=0, lbfgs_steps=0, seed=0, progress=False)
    start = train(network(), X, y, newton_steps=0, **kw).model
    assert hessian_eigenvalues(start)[0] < 0  # the initialisation is in a saddle region
    result = train(network(), X, y, newton_steps=40, **kw)
    assert 0 < result.newton_steps < 40
    assert independent_gradient(result.model, X, y, 1e-2) < 1e-13
    assert hessian_eigenvalues(result.model)[0] > 0
