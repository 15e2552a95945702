"""Your own model as an app: ``hessview app --toolbox PATH --model MODULE:CLASS`` and ``own_explorer``.

The ground truth is a toolbox fitted in the test process on a model trained here; the app must load
the saved file into a freshly built ``ExampleNet()`` and show that toolbox's numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import hessview.app.cli as cli
from hessview import HessianToolbox
from hessview.app import own
from hessview.app.example_model import ExampleNet, example_data
from hessview.models import train

SPEC = "hessview.app.example_model:ExampleNet"
N_RESAMPLES = 30


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    X_train, y_train, g_train, X_test, y_test, g_test = example_data()
    model = ExampleNet()
    train(model, X_train, y_train, weight_decay=1e-2, epochs=200, lbfgs_steps=300, progress=False)
    tb = HessianToolbox(  # trained to a minimum: any hessview warning here fails the test
        model, torch.as_tensor(X_train), torch.as_tensor(y_train), weight_decay=1e-2, progress=False
    ).fit()
    tb.save(folder / "toolbox.safetensors")
    data = folder / "test.npz"
    np.savez(
        data,
        X_test=X_test,
        y_test=y_test,
        x=g_test,
        train_x=g_train,
        x_label=np.array("g <i>"),
        class_names=np.array(["low", "high"]),
    )
    return {
        "folder": folder,
        "toolbox": folder / "toolbox.safetensors",
        "data": data,
        "tb": tb,
        "model": model,
    }


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path))
    for variable in own.ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


def test_own_explorer_shows_the_saved_toolbox(saved, cache):
    ex = own.own_explorer(saved["toolbox"], SPEC, saved["data"], n_resamples=N_RESAMPLES)
    tb = saved["tb"]
    X_test = np.load(saved["data"])["X_test"]
    np.testing.assert_allclose(ex.main.points.y, tb.predict(X_test)[:, 1], rtol=1e-12)
    # opens nearest the decision boundary, says so, and escapes the user's label
    p = tb.predict(X_test)
    assert ex.state.index == int(np.argmin(np.abs(p[:, 1] - p[:, 0])))
    truth = tb.influence(X_test, measurement="margin")  # the margin of the predicted label
    assert ex.results.measurement == "margin"
    for i in (ex.state.index, 0, 7):
        ex.select(i)
        drawn = np.nansum(np.asarray(ex.influence.dots.y)[:, 0::3], axis=0)
        np.testing.assert_allclose(drawn, truth[i], rtol=1e-9, atol=1e-15)
    assert "nearest the decision boundary" in ex.opening.value and "g &lt;i&gt;" in ex.opening.value
    assert ex.class_names == ["low", "high"] and "Your model: " + SPEC in ex.header.children[0].value


def test_results_are_cached_by_the_files_bytes(saved, cache, monkeypatch):
    first = own.prepare(saved["toolbox"], SPEC, saved["data"], n_resamples=N_RESAMPLES, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the results are cached")

    monkeypatch.setattr(own, "load_model_and_toolbox", refuse)
    assert own.prepare(saved["toolbox"], SPEC, saved["data"], n_resamples=N_RESAMPLES) == first
    ex = own.own_explorer(saved["toolbox"], SPEC, saved["data"], n_resamples=N_RESAMPLES)
    np.testing.assert_array_equal(ex.gallery.X_train, saved["tb"].X_train.numpy())
    assert own.results_path(saved["toolbox"], SPEC, None, n_resamples=N_RESAMPLES) != first


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_damaged_cached_results_are_reported_and_computed_again(saved, cache, caplog, keep):
    path = own.prepare(saved["toolbox"], SPEC, saved["data"], n_resamples=N_RESAMPLES, progress=False)
    with np.load(path) as stored:
        good = stored["influence"]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])  # truncated (BadZipFile before)
    with caplog.at_level("WARNING", logger="hessview.cache"):
        ex = own.own_explorer(saved["toolbox"], SPEC, saved["data"], n_resamples=N_RESAMPLES)
    lines = [r.getMessage() for r in caplog.records if r.name == "hessview.cache"]
    assert len(lines) == 1 and str(path) in lines[0] and "\n" not in lines[0]
    np.testing.assert_array_equal(ex.results.influence, good)
    assert path.read_bytes() != data[: int(len(data) * keep)]  # rewritten


def test_environment_variables_and_no_test_set(saved, cache, monkeypatch):
    monkeypatch.setenv("HESSVIEW_TOOLBOX", str(saved["toolbox"]))
    monkeypatch.setenv("HESSVIEW_MODEL", SPEC)
    ex = own.own_explorer(n_resamples=N_RESAMPLES)
    tb = saved["tb"]  # no test set: the training points are the test points
    assert ex.results.n_test == tb.n_train
    np.testing.assert_allclose(
        ex.results.influence, tb.influence(tb.X_train, measurement="margin"), rtol=1e-9
    )
    assert ex.x_label == "test point index"


def test_weights_must_match_the_toolbox(saved, cache, tmp_path):
    other = ExampleNet().to(torch.float64)  # a fresh initialisation: not the trained weights
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="different model"):
        own.load_model_and_toolbox(saved["toolbox"], SPEC, tmp_path / "other.safetensors")
    trained = saved["model"].state_dict()
    save_file({k: v.contiguous() for k, v in trained.items()}, str(tmp_path / "same.safetensors"))
    model, tb = own.load_model_and_toolbox(saved["toolbox"], SPEC, tmp_path / "same.safetensors")
    torch.testing.assert_close(tb.eigenvalues, saved["tb"].eigenvalues, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("no_colon", ValueError, "MODULE:CLASS"),
        ("a:b:c", ValueError, "MODULE:CLASS"),
        ("hessview_no_such_module:Net", ValueError, "cannot import the module"),
        ("hessview.app.example_model:Nope", ValueError, "has no 'Nope'"),
        ("hessview.app.example_model:example_data", TypeError, "is not a class"),
        ("hessview.app.own:ENVIRONMENT", TypeError, "is not a class"),
    ],
)
def test_bad_model_specs(saved, spec, error, message):
    with pytest.raises(error, match=message):
        own.load_model_and_toolbox(saved["toolbox"], spec)


def test_missing_files_and_bad_test_set(saved, cache, tmp_path):
    with pytest.raises(FileNotFoundError, match="no toolbox file"):
        own.prepare(tmp_path / "none.safetensors", SPEC)
    with pytest.raises(ValueError, match="give the toolbox file and the model class"):
        own.prepare(None, SPEC)
    np.savez(tmp_path / "bad.npz", X=np.zeros(3))
    with pytest.raises(ValueError, match="no X_test"):
        own.prepare(saved["toolbox"], SPEC, tmp_path / "bad.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable hessview toolbox"):
        own.load_model_and_toolbox(tmp_path / "junk.safetensors", SPEC)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["app", "--toolbox", "t.safetensors"], "--toolbox and --model go together"),
        (["app", "--model", SPEC], "--toolbox and --model go together"),
        (["app", "ising", "--toolbox", "t", "--model", SPEC], "not both"),
        (["app", "--data", "d.npz"], "need --toolbox and --model"),
        (["app", "ising", "--quick"], "--quick applies to the landscape app only"),
    ],
)
def test_cli_refuses_inconsistent_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_reports_a_wrong_model_before_serving(saved, cache, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["app", "--toolbox", str(saved["toolbox"]), "--model", "hessview.app.example_model:Nope"])
    assert exit_info.value.code == 2
    assert "has no 'Nope'" in capsys.readouterr().err


def test_app_notebooks_exist_and_run_the_apps():
    import nbformat

    for name, (_, code) in cli.NOTEBOOK_CODE.items():
        notebook = nbformat.read(cli.app_notebook(name), as_version=4)
        nbformat.validate(notebook)
        call = code.split("\n")[-1].split("(")[0]
        assert any(call in cell.source for cell in notebook.cells if cell.cell_type == "code")
    with pytest.raises(ValueError, match="unknown app notebook"):
        cli.app_notebook("other.ipynb")
