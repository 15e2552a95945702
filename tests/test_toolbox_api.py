"""The toolbox's contract: bad input refused by name, damping, warnings, memory guard, safe persistence."""

import copy
import warnings

import numpy as np
import pytest
import torch
from support import train_model
from torch import nn

import hessview
import hessview.engine.hessian
from hessview import HessianToolbox
from hessview.engine.hessian import CurvatureTooLargeError
from hessview.engine.toolbox import NotStationaryWarning


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=g, dtype=torch.float64)
    return X, (X[:, 0] > 0).long()


@pytest.fixture
def fitted(data):
    X, y = data
    torch.manual_seed(0)
    model = train_model(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), X, y, weight_decay=0.1)
    return model, HessianToolbox(model, X, y, weight_decay=0.1, progress=False).fit()


def make(data, **kw):
    X, y = data
    kw.setdefault("progress", False)
    model = kw.pop("model", None) or nn.Linear(3, 2)
    return HessianToolbox(model, kw.pop("X", X), kw.pop("y", y), **kw)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(model="not a model"), TypeError, "torch.nn.Module"),
        (dict(loss="hinge"), ValueError, "loss must be one of"),
        (dict(dtype=torch.int64), TypeError, "floating torch dtype"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay"),
        (dict(weight_decay=float("nan")), ValueError, "weight_decay"),
        (dict(damping="lots"), ValueError, "damping"),
        (dict(damping=-0.1), ValueError, "damping"),
        (dict(X=[[1.0, 2.0, 3.0]]), TypeError, "X_train must be a torch.Tensor or numpy.ndarray"),
        (dict(X=torch.empty(0, 3)), ValueError, "X_train is empty"),
        (dict(X=torch.ones(30, 3, dtype=torch.complex64)), TypeError, "X_train has dtype"),
        (dict(y=torch.zeros(29, dtype=torch.long)), ValueError, "y_train has shape"),
        (dict(y=torch.zeros(30)), TypeError, "integer class labels"),
        (dict(y=torch.full((30,), 2)), ValueError, r"labels in \[2, 2\]"),
        (dict(y=torch.full((30,), -1)), ValueError, "labels in"),
        (dict(X=torch.ones(30, 5)), ValueError, "cannot evaluate inputs"),
        (dict(model=nn.Linear(3, 1)), ValueError, "logits of shape"),
        (dict(loss="mse"), TypeError, "real-valued targets"),
        (dict(loss="mse", y=torch.ones(30, 3)), ValueError, "y_train has shape"),
    ],
)
def test_bad_construction_is_refused(data, change, error, match):
    with pytest.raises(error, match=match):
        make(data, **change)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_and_targets_are_refused(data, bad):
    X, y = data
    Xb = X.clone()
    Xb[4, 1] = bad
    with pytest.raises(ValueError, match=r"X_train contains 1 NaN or inf values \(first rows: \[4\]\)"):
        make(data, X=Xb)
    yb = X[:, 0].clone()[:, None]
    yb[2] = bad
    with pytest.raises(ValueError, match="y_train contains 1 NaN or inf"):
        make(data, model=nn.Linear(3, 1), loss="mse", y=yb)


def test_model_without_trainable_parameters_is_refused(data):
    model = nn.Linear(3, 2)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make(data, model=model)


def test_device_mismatch_is_refused_on_meta_device(data):
    with pytest.raises(ValueError, match="device mismatch: X_train is on meta"):
        make(data, X=torch.empty(30, 3, device="meta"))


def test_numpy_inputs_are_accepted(data):
    X, y = data
    tb = make(data, X=X.numpy(), y=y.numpy())
    assert tb.X_train.dtype == torch.float64 and tb.n_train == 30


def test_bad_queries_are_refused(fitted, data):
    _, tb = fitted
    X, _ = data
    with pytest.raises(ValueError, match=r"X_test has samples of shape \(4,\)"):
        tb.influence(torch.ones(2, 4))
    with pytest.raises(ValueError, match="X_test contains"):
        tb.relatif(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="X_test is empty"):
        tb.uncertainty(torch.empty(0, 3))
    with pytest.raises(ValueError, match=r"labels in \[0, 5\]"):
        tb.influence(X[:2], torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="n_resamples"):
        tb.uncertainty(X[:2], n_resamples=1)
    with pytest.raises(ValueError, match="level"):
        tb.uncertainty(X[:2], level=1.5)
    with pytest.raises(ValueError, match="m must be an integer"):
        tb.extrapolation(X[:2], m=tb.n_params + 1)
    with pytest.raises(ValueError, match="quantile"):
        tb.extrapolation(X[:2], quantile=0)


def test_not_stationary_warning_names_the_numbers(data):
    torch.manual_seed(0)
    with pytest.warns(NotStationaryWarning, match=r"one Newton step would move it by \S+, \S+ times"):
        tb = make(data, model=nn.Linear(3, 2)).fit()
    assert not tb.is_stationary_ and "stationary          NO" in tb.summary()


def test_trained_model_fits_silently_and_reports(fitted):
    model, tb = fitted
    X, y = tb.X_train, tb.y_train
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tb = HessianToolbox(model, X, y, weight_decay=0.1, progress=False).fit()
    text = tb.summary()
    for token in ("gradient norm", "lambda_min", "lambda_max", "negative eigenvalues", "damping"):
        assert token in text
    lam = torch.linalg.eigvalsh(tb.hessian)
    assert tb.lambda_min_ == pytest.approx(float(lam[0])) and tb.lambda_max_ == pytest.approx(float(lam[-1]))


def test_auto_damping_makes_a_saddle_positive_definite(data):
    X, y = data
    torch.manual_seed(4)
    with pytest.warns(NotStationaryWarning), pytest.warns(hessview.DampingWarning, match="38 of 38"):
        tb = make(data, model=nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))).fit()
    lam = torch.linalg.eigvalsh(tb.hessian)
    assert tb.n_negative_ == int((lam < -1e-12).sum()) > 0
    shifted = lam + tb.damping_
    # the automatic damping is 2 |lambda_min|: the smallest damped eigenvalue is |lambda_min|
    assert float(shifted.min()) == pytest.approx(abs(float(lam[0])))
    assert "delta" in tb.damping_reason_
    assert tb.eigenvalues.min() < 0  # the raw spectrum stays inspectable


def test_float_damping_is_used_as_given_and_too_small_is_refused(fitted, data):
    model, tb = fitted
    X, y = data
    tb2 = HessianToolbox(model, X, y, weight_decay=0.1, damping=0.5, progress=False).fit()
    assert tb2.damping_ == 0.5
    H = tb2.hessian + 0.5 * torch.eye(tb2.n_params, dtype=torch.float64)
    g = tb2.test_gradients(X[:1])
    expected = (g @ torch.linalg.solve(H, tb2.train_gradients.T)).numpy() / len(X)
    np.testing.assert_allclose(tb2.influence(X[:1]), expected, rtol=1e-9)
    torch.manual_seed(4)
    saddle = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match="not positive definite"):
        HessianToolbox(saddle, X, y, damping=0.0, progress=False).fit()


def test_memory_guard_refuses_before_computing(data, monkeypatch):
    monkeypatch.setattr(hessview.engine.hessian, "available_memory", lambda: 1_000)
    tb = make(data)
    with pytest.raises(CurvatureTooLargeError, match=r"needs about .* GB .* only .* GB of memory is free"):
        tb.fit()
    assert not hasattr(tb, "hessian")


def test_save_load_round_trip(fitted, tmp_path):
    model, tb = fitted
    path = tb.save(tmp_path / "tb.safetensors")
    loaded = HessianToolbox.load(path, model, progress=False)
    X = tb.X_train[:5]
    for name in ("hessian", "eigenvalues", "eigenvectors", "train_gradients", "X_train", "y_train"):
        a, b = getattr(tb, name), getattr(loaded, name)
        assert a.dtype == b.dtype and torch.equal(a, b)
    np.testing.assert_array_equal(tb.influence(X), loaded.influence(X))
    np.testing.assert_array_equal(tb.extrapolation(X).score, loaded.extrapolation(X).score)
    assert loaded.damping_ == tb.damping_ and loaded.weight_decay == tb.weight_decay
    assert loaded.summary() == tb.summary()


def test_load_refuses_another_model_or_data(fitted, tmp_path):
    model, tb = fitted
    path = tb.save(tmp_path / "tb.safetensors")
    other = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="different model"):
        HessianToolbox.load(path, other)
    with pytest.raises(ValueError, match="different training data"):
        HessianToolbox.load(path, model, tb.X_train + 1.0, tb.y_train)
    frozen = copy.deepcopy(model)  # same values, but one layer no longer trainable: another Hessian
    frozen[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="different model"):
        HessianToolbox.load(path, frozen)


def test_non_finite_parameters_are_refused(data):
    X, y = data
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf: bias"):
        HessianToolbox(model, X, y)


def test_load_never_unpickles(fitted, tmp_path):
    model, _ = fitted
    path = tmp_path / "evil.safetensors"
    torch.save({"hessian": torch.eye(2)}, path)  # a pickle-based file
    with pytest.raises(ValueError, match="not a readable hessview toolbox"):
        HessianToolbox.load(path, model)


def test_save_is_atomic(fitted, tmp_path, monkeypatch):
    model, tb = fitted
    path = tb.save(tmp_path / "tb.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("hessview.engine.toolbox.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        tb.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tb.safetensors"]


def test_summary_says_when_the_damping_dominates_the_spectrum(fitted, data):
    model, X, y = fitted[0], *data
    for damping in (1e3, 0.0):
        tb = HessianToolbox(model, X, y, weight_decay=0.1, damping=damping, progress=False).fit()
        eigenvalues = torch.linalg.eigvalsh(tb.hessian)  # independent of the toolbox's decomposition
        assert tb.n_damped_ == int((eigenvalues.abs() < damping).sum())
        assert ("damping dominates" in tb.summary()) == (tb.n_damped_ > tb.n_params // 2)
    assert tb.n_damped_ == 0 and eigenvalues.min() > 0  # damping 0 on a positive-definite Hessian


def test_set_damping_equals_a_fit_with_that_damping(fitted, data):
    model, tb = fitted
    X, y = data
    refit = HessianToolbox(model, X, y, weight_decay=0.1, damping=0.5, progress=False).fit()
    np.testing.assert_allclose(tb.set_damping(0.5).influence(X[:4]), refit.influence(X[:4]), rtol=1e-10)
    assert tb.damping_ == 0.5
    with pytest.raises(ValueError, match="damping"):
        tb.set_damping(-1.0)
    tb.set_damping("auto")
