"""load_demo: builds once, then only reads; rebuilds when settings change or a build was cut short."""

import json

import numpy as np
import pytest
import torch

from hessview import HessianToolbox, demos
from hessview.datasets import CRITICAL_TEMPERATURE, fermi_hubbard_split

SMALL = {
    "ising": {
        "version": 1,
        "L": 8,
        "train_T": [1.5, 3.5, 6],
        "test_T": [1.6, 3.4, 4],
        "n_per_T_train": 6,
        "n_per_T_test": 2,
        "weight_decay": 1e-2,
        "epochs": 100,
        "lbfgs_steps": 200,
        "seed": 0,
    },
    "fermi-hubbard": {
        "version": 1,
        "train_stride": 100,
        "architecture": {"smooth": True},
        "weight_decay": 1e-2,
        "epochs": 100,
        "lbfgs_steps": 100,
        "newton_steps": 5,
        "seed": 0,
    },
}


@pytest.fixture
def small(monkeypatch, tmp_path):
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(demos, "DEMO_SETTINGS", json.loads(json.dumps(SMALL)))
    return tmp_path


def forbid_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("trained or fitted although cached")

    monkeypatch.setattr(demos, "train", fail)
    monkeypatch.setattr(HessianToolbox, "fit", fail)


def test_ising_demo_builds_then_loads_without_training(small, monkeypatch):
    demo = demos.load_demo("ising", progress=False)
    assert demo.render == "2d" and demo.x_label == "T" and demo.name == "ising"
    assert demo.X_test.shape == (8, 8, 8) and demo.train_x.shape == (36,)
    np.testing.assert_array_equal(demo.y_test, (demo.x < CRITICAL_TEMPERATURE).astype(int))
    assert demo.toolbox.n_train == 36 and demo.toolbox.weight_decay == 1e-2
    probabilities = torch.softmax(demo.model(torch.as_tensor(demo.X_test)), 1).detach().numpy()
    np.testing.assert_allclose(demo.toolbox.predict(demo.X_test), probabilities, atol=1e-12)
    assert demo.report["gradient_norm"] < 1e-3 * demo.report["median_sample_gradient_norm"]

    forbid_work(monkeypatch)
    again = demos.load_demo("ising", progress=False)
    torch.testing.assert_close(again.toolbox.eigenvalues, demo.toolbox.eigenvalues)
    np.testing.assert_array_equal(again.X_test, demo.X_test)
    np.testing.assert_allclose(
        again.toolbox.influence(again.X_test[:2]), demo.toolbox.influence(demo.X_test[:2]), rtol=1e-10
    )


def test_fermi_hubbard_demo_has_the_papers_input_shape_and_test_grid(small):
    # the small demo's model is trained to a minimum: any hessview warning here fails the test
    demo = demos.load_demo("fermi-hubbard", progress=False)
    assert demo.X_test.shape == (50, 1, 924) and demo.render == "1d" and demo.x_label == "V1/J"
    assert demo.toolbox.X_train.shape == (10, 1, 924)
    assert demo.x.min() == pytest.approx(0.01) and demo.x.max() == pytest.approx(39.0)
    assert demo.class_names == ["LL", "CDW-I"]
    assert sum(p.numel() for p in demo.model.parameters()) == 740
    assert 0.0 <= demo.X_test.min() and demo.toolbox.X_train.max() == pytest.approx(1.0)
    # the exposed scaler maps the raw training states (every 100th of the grid) onto the model's inputs
    states = fermi_hubbard_split("train", progress=False).X[::100]
    np.testing.assert_allclose(demo.scaler.transform(states)[:, None, :], demo.toolbox.X_train.numpy())


def test_changed_settings_or_interrupted_build_rebuild(small, monkeypatch):
    first = demos.load_demo("ising", progress=False)
    folder = small / "demos" / "ising"
    (folder / "meta.json").unlink()  # a build cut short before its last write
    rebuilt = demos.load_demo("ising", progress=False)
    torch.testing.assert_close(rebuilt.toolbox.eigenvalues, first.toolbox.eigenvalues)
    demos.DEMO_SETTINGS["ising"]["weight_decay"] = 2e-2
    changed = demos.load_demo("ising", progress=False)
    assert changed.toolbox.weight_decay == 2e-2
    forbid_work(monkeypatch)
    with pytest.raises(AssertionError, match="cached"):
        demos.load_demo("ising", progress=False, rebuild=True)


@pytest.mark.parametrize("name, error", [("mnist", ValueError), (None, TypeError)])
def test_unknown_demo_raises(name, error):
    with pytest.raises(error, match="demo"):
        demos.load_demo(name)


def forbid_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("trained although weights are shipped")

    monkeypatch.setattr(demos, "train", fail)


def test_shipped_weights_are_used_when_their_settings_match_and_retrain_reproduces_them(small, monkeypatch):
    from hessview.models import shipped

    monkeypatch.setattr(shipped, "SHIPPED_DIR", small / "shipped")
    trained = demos.load_demo("ising", progress=False)  # nothing shipped yet: trains
    assert trained.report["weights"] == "trained"
    shipped.ship_weights("ising", trained.model, {"settings": demos.DEMO_SETTINGS["ising"]})

    forbid_training(monkeypatch)
    from_package = demos.load_demo("ising", progress=False, rebuild=True)
    assert from_package.report["weights"] == "shipped"
    for name, value in trained.model.state_dict().items():
        torch.testing.assert_close(from_package.model.state_dict()[name], value, rtol=0, atol=0)
    np.testing.assert_array_equal(
        from_package.toolbox.predict(from_package.X_test), trained.toolbox.predict(trained.X_test)
    )

    demos.DEMO_SETTINGS["ising"]["seed"] = 1  # other settings: the shipped weights no longer apply
    with pytest.raises(AssertionError, match="shipped"):
        demos.load_demo("ising", progress=False)
    monkeypatch.undo()
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(small))
    monkeypatch.setattr(demos, "DEMO_SETTINGS", json.loads(json.dumps(SMALL)))
    monkeypatch.setattr(shipped, "SHIPPED_DIR", small / "shipped")

    retrained = demos.load_demo("ising", progress=False, retrain=True)
    assert retrained.report["weights"] == "retrained"
    comparison = demos.compare_with_shipped(retrained)
    assert comparison["same_prediction"] == 1.0 and comparison["max_probability_difference"] < 1e-6
    assert comparison["parameter_relative_distance"] < 1e-6
    assert comparison["influence_relative_difference"] < 1e-6 and comparison["top10_overlap_mean"] > 0.9

    path = small / "shipped" / "ising.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b" ")  # a damaged file is refused, not silently used
    with pytest.raises(ValueError, match="SHA-256"):
        demos.load_demo("ising", progress=False, rebuild=True)


def test_demo_damping_is_tuned_with_the_weights_and_shipped_so_builds_retrain_nothing(small, monkeypatch):
    from hessview.models import shipped

    monkeypatch.setattr(shipped, "SHIPPED_DIR", small / "shipped")
    made = demos.load_demo("ising", progress=False, retrain=True)  # trains, then tunes the damping
    tb = made.toolbox
    tuned = made.report["tuned_damping"]
    assert tuned["arguments"] == demos.tuning_arguments(tb.n_train)
    assert tuned["arguments"]["alpha"] == pytest.approx(1 - demos.RETRAIN_K / tb.n_train, abs=1e-12)
    assert (
        tb.damping_ == tuned["damping"] == max(tb.damping_scores_, key=lambda d: (tb.damping_scores_[d], d))
    )
    shipped.ship_weights(
        "ising", made.model, {"settings": demos.DEMO_SETTINGS["ising"], "tuned_damping": tuned}
    )

    def fail(*args, **kwargs):
        raise AssertionError("retrained although the damping is shipped")

    forbid_training(monkeypatch)
    monkeypatch.setattr(HessianToolbox, "tune_damping", fail)
    monkeypatch.setattr(HessianToolbox, "retrain", fail)
    built = demos.load_demo("ising", progress=False, rebuild=True)
    assert built.report["weights"] == "shipped"
    assert built.toolbox.damping_ == tuned["damping"] and built.toolbox.tuned_lds_ == tuned["tuned_lds"]
    assert "shipped with them" in built.toolbox.damping_reason_
    X = torch.as_tensor(built.X_test[:3])
    np.testing.assert_allclose(  # the same influence as the toolbox that was tuned
        built.toolbox.influence(X, measurement="margin"), tb.influence(X, measurement="margin"), rtol=1e-8
    )

    other = {**tuned, "damping": tuned["scores"][-1][0]}  # another shipped damping: the cache is stale
    shipped.ship_weights(
        "ising", made.model, {"settings": demos.DEMO_SETTINGS["ising"], "tuned_damping": other}
    )
    again = demos.load_demo("ising", progress=False)
    assert again.toolbox.damping_ == other["damping"] != built.toolbox.damping_


def test_every_shipped_demo_ships_the_damping_its_record_scores_best():
    from hessview.models.shipped import shipped_records
    from hessview.widgets.state import ExplorerState

    assert demos.RETRAIN_K == ExplorerState(3).k  # the question the tuning answers is the explorer's
    for name, record in shipped_records().items():
        tuned = record["tuned_damping"]
        assert tuned["arguments"] == demos.tuning_arguments(record["n_train"]), name
        scores = dict(map(tuple, tuned["scores"]))
        assert scores[tuned["damping"]] == max(scores.values()) == tuned["tuned_lds"], name
        assert record["damping"] == tuned["damping"], name
