"""Saved toolboxes: versioned, checksummed, every field round-trips, damage is refused with advice."""

import json

import numpy as np
import pytest
import torch
from oracle import blobs, train
from safetensors import safe_open
from safetensors.torch import save_file
from support import NOT_STATIONARY, expect_warnings
from torch import nn

import hessview
from hessview import HessianToolbox
from hessview.engine.persistence import FORMAT, CorruptCacheError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    X, y = blobs(40, 3, seed=0)
    torch.manual_seed(0)
    model = train(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), X, y, 1e-2)
    tb = HessianToolbox(model, X, y, weight_decay=1e-2, damping=0.01, progress=False).fit()
    path = tb.save(tmp_path_factory.mktemp("tb") / "tb.safetensors")
    return model, tb, path


def read(path):
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}


def rewrite(path, out, *, tensors=None, document=None):
    metadata, original = read(path)
    tensors = original if tensors is None else tensors
    if document is not None:
        metadata = {"hessview": json.dumps(document)}
    save_file(tensors, str(out), metadata=metadata)
    return out


def test_every_field_round_trips(saved):
    model, tb, path = saved
    loaded = HessianToolbox.load(path, model, progress=False)
    assert loaded.settings == tb.settings
    for name in (
        "method_",
        "method_reason_",
        "damping_",
        "damping_reason_",
        "n_damped_",
        "lambda_min_",
        "lambda_max_",
        "n_negative_",
        "gradient_norm_",
        "newton_step_",
        "typical_step_",
        "is_stationary_",
        "n_screened_",
        "screening_residual_",
    ):
        assert getattr(loaded, name) == getattr(tb, name), name
    for name in ("hessian", "eigenvalues", "eigenvectors", "train_gradients", "X_train", "y_train", "theta"):
        a, b = getattr(tb, name), getattr(loaded, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    X = tb.X_train[:4]
    np.testing.assert_array_equal(
        tb.influence(X, measurement="margin"), loaded.influence(X, measurement="margin")
    )


def test_a_flipped_bit_in_any_tensor_is_refused(saved, tmp_path):
    model, _, path = saved
    _, tensors = read(path)
    for name in ("eigenvalues", "eigenvectors", "train_gradients", "hessian"):
        damaged = {k: v.clone() for k, v in tensors.items()}
        flat = damaged[name].view(-1).view(torch.int64)
        flat[3] ^= 1 << 20  # one bit of one float64
        out = rewrite(path, tmp_path / f"{name}.safetensors", tensors=damaged)
        with pytest.raises(CorruptCacheError, match="checksum does not match"):
            HessianToolbox.load(out, model)


def test_a_tensor_swapped_in_from_another_toolbox_is_refused(saved, tmp_path):
    model, tb, path = saved
    with pytest.warns(hessview.NotStationaryWarning):  # the model was trained with weight decay 1e-2
        other = HessianToolbox(model, tb.X_train, tb.y_train, weight_decay=0.1, damping=0.01, progress=False)
        other.fit()
    _, theirs = read(other.save(tmp_path / "other.safetensors"))
    _, ours = read(path)
    out = rewrite(
        path, tmp_path / "swapped.safetensors", tensors={**ours, "eigenvalues": theirs["eigenvalues"]}
    )
    with pytest.raises(CorruptCacheError, match="checksum"):
        HessianToolbox.load(out, model)


@pytest.mark.parametrize("field", ["weight_decay", "damping", "method", "curvature"])
def test_edited_metadata_is_refused(saved, tmp_path, field):
    model, _, path = saved
    metadata, _ = read(path)
    document = json.loads(metadata["hessview"])
    document["settings"][field] = {
        "weight_decay": 0.5,
        "damping": 1.0,
        "method": "lowrank",
        "curvature": "ggn",
    }[field]
    out = rewrite(path, tmp_path / "edited.safetensors", document=document)
    with pytest.raises(CorruptCacheError, match="checksum"):
        HessianToolbox.load(out, model)


def test_old_format_missing_fields_and_garbage_are_refused_with_advice(saved, tmp_path):
    model, _, path = saved
    metadata, _ = read(path)
    document = json.loads(metadata["hessview"])
    old = rewrite(path, tmp_path / "old.safetensors", document={**document, "format": "hessview.toolbox/1"})
    with pytest.raises(CorruptCacheError, match=r"format 'hessview.toolbox/1'.*refit the toolbox"):
        HessianToolbox.load(old, model)
    no_meta = tmp_path / "nometa.safetensors"
    save_file({"x": torch.zeros(2)}, str(no_meta))
    with pytest.raises(CorruptCacheError, match="no readable hessview metadata"):
        HessianToolbox.load(no_meta, model)
    not_json = rewrite(path, tmp_path / "notjson.safetensors")
    save_file(read(path)[1], str(not_json), metadata={"hessview": "{not json"})
    with pytest.raises(CorruptCacheError, match="no readable hessview metadata"):
        HessianToolbox.load(not_json, model)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptCacheError, match="not a readable hessview toolbox"):
        HessianToolbox.load(truncated, model)
    assert FORMAT.endswith("/2")


def test_a_user_defined_loss_round_trips_when_given_again(tmp_path):
    class Hinge(hessview.engine.Loss):
        name = "squared_hinge"
        classification = True

        def per_sample(self, outputs, y):
            sign = 2.0 * y.to(outputs.dtype) - 1.0
            return torch.relu(1.0 - sign * (outputs[:, 1] - outputs[:, 0])) ** 2

        def predict_targets(self, outputs):
            return outputs.argmax(dim=1)

    X, y = blobs(30, 2, seed=1)
    torch.manual_seed(1)
    model = nn.Linear(2, 2).double()
    with expect_warnings(NOT_STATIONARY):  # a random initialisation: this test is about the file only
        tb = HessianToolbox(model, X, y, loss=Hinge(), weight_decay=0.1, progress=False).fit()
    path = tb.save(tmp_path / "hinge.safetensors")
    with pytest.raises(ValueError, match="loss must be one of"):
        HessianToolbox.load(path, model)
    loaded = HessianToolbox.load(path, model, loss=Hinge())
    np.testing.assert_array_equal(tb.influence(X[:3]), loaded.influence(X[:3]))


def test_a_damping_given_as_a_numpy_number_is_saved_and_loaded(saved, tmp_path):
    """numpy scalars (a value read from an array) pass the damping check, and must not break the JSON."""
    model, tb, _ = saved
    X, y = tb.X_train, tb.y_train
    for damping in (np.float32(0.25), np.int64(1)):
        built = HessianToolbox(model, X, y, weight_decay=1e-2, damping=damping, progress=False).fit()
        moved = HessianToolbox(model, X, y, weight_decay=1e-2, damping=0.01, progress=False).fit()
        moved.set_damping(damping)
        for toolbox in (built, moved):
            loaded = HessianToolbox.load(toolbox.save(tmp_path / "numpy.safetensors"), model, progress=False)
            assert loaded.damping_ == toolbox.damping_ == float(damping)
            assert type(loaded.damping) is type(toolbox.damping) is float
            np.testing.assert_array_equal(loaded.influence(X[:3], y[:3]), toolbox.influence(X[:3], y[:3]))
