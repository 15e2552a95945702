"""Ready-made demos: physics data, a trained model and its fitted ``HessianToolbox``, cached on disk.

``load_demo(name)`` builds what is missing on first use (data, training, Hessian; a few minutes at
most) and afterwards only reads files: the model's weights (safetensors), the toolbox (``tb.save``),
the test set (``.npz``) and a ``meta.json`` written last, so an interrupted build is never mistaken
for a finished one.  A demo whose settings changed since it was cached is rebuilt.

Demos:
    ``"fermi-hubbard"``: the paper's ``CNN1D_tiny_ED`` (Dawid et al., MLST 3, 015002 (2022)) trained by
    :func:`hessview.models.train` on the paper's 1000-point training grid of LL/CDW-I ground states
    (global min-max normalised, input ``(n, 1, 924)``), evaluated on the paper's 50-point test grid.
    ``"fermi-hubbard-window"``: the same network trained only on the restricted window
    ``V1/J in [0, 0.25] U [36, 40]`` (177 points), evaluated on the same test grid: an extrapolation
    demo, where the test points between the windows are flagged.
    ``"ising"``: :class:`hessview.models.IsingCNN` on 16x16 Ising configurations, 24 training
    temperatures, tested on 24 temperatures in between.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hessview._io import atomic_path, cache_dir
from hessview.datasets import CRITICAL_TEMPERATURE, FERMI_HUBBARD_GRIDS, fermi_hubbard_split, ising_2d
from hessview.engine.toolbox import HessianToolbox
from hessview.models import CNN1D_tiny_ED, IsingCNN, MinMaxScaler, train

#: The settings of each demo; changing one makes ``load_demo`` rebuild that demo's cache.
DEMO_SETTINGS = {
    "fermi-hubbard": {
        "version": 1,
        "train_stride": 1,
        "weight_decay": 0.05 / 1000,  # the paper's lambda / n (objective: mean CE + w/2 ||theta||^2)
        "epochs": 300,
        "lbfgs_steps": 300,
        "seed": 0,
    },
    "fermi-hubbard-window": {
        "version": 1,
        "split": "train_edges",
        "weight_decay": 0.05 / 177,  # the paper's lambda / n for the window's 177 training points
        "epochs": 300,
        "lbfgs_steps": 300,
        "seed": 0,
    },
    "ising": {
        "version": 1,
        "L": 16,
        "train_T": [1.2, 3.4, 24],
        "test_T": [1.25, 3.35, 24],
        "n_per_T_train": 25,
        "n_per_T_test": 4,
        "weight_decay": 1e-3,
        "epochs": 200,
        "lbfgs_steps": 300,
        "seed": 0,
    },
}


@dataclass
class Demo:
    """A trained model with its fitted toolbox and test set, as the widgets need it.

    Attributes:
        name, title: the demo's key and a human title.
        toolbox: the fitted :class:`~hessview.HessianToolbox` (training data inside).
        model: the trained network (float64, eval mode).
        X_test, y_test: test inputs in the model's input shape and their labels.
        x, train_x: control parameter of every test and training sample; ``x_label`` names it.
        render: ``"1d"`` (a vector per sample) or ``"2d"`` (an image per sample).
        class_names: names of the classes, in label order.
        report: training report (final loss, gradient norms, accuracy) and settings.
        scaler: the input scaling fitted on the training states (Fermi-Hubbard demos; ``None`` for Ising):
            ``scaler.transform(states)[:, None, :]`` makes new ground states model inputs.
    """

    name: str
    title: str
    toolbox: HessianToolbox
    model: nn.Module
    X_test: np.ndarray
    y_test: np.ndarray
    x: np.ndarray
    x_label: str
    train_x: np.ndarray
    render: str
    class_names: list
    report: dict
    scaler: MinMaxScaler | None = None


def load_demo(name: str = "fermi-hubbard", *, progress: bool = True, rebuild: bool = False) -> Demo:
    """Return the demo ``name`` (a key of ``DEMO_SETTINGS``), building its cache if needed.

    Args:
        name: which demo.
        progress: show progress bars while building.
        rebuild: build again even when a matching cache exists.
    """
    if not isinstance(name, str):
        raise TypeError(f"demo name must be a string, got {type(name).__name__}")
    if name not in DEMO_SETTINGS:
        raise ValueError(f"unknown demo {name!r}; choose one of {sorted(DEMO_SETTINGS)}")
    folder = cache_dir("demos") / name
    if rebuild or not _is_complete(folder, DEMO_SETTINGS[name]):
        _BUILDERS[name](folder, DEMO_SETTINGS[name], progress)
    return _read(folder, name, progress)


def _is_complete(folder: Path, settings: dict) -> bool:
    meta = folder / "meta.json"
    needed = ("model.safetensors", "toolbox.safetensors", "arrays.npz")
    if not meta.is_file() or not all((folder / f).is_file() for f in needed):
        return False
    return json.loads(meta.read_text()).get("settings") == settings


def _new_model(name: str, meta: dict) -> nn.Module:
    if name.startswith("fermi-hubbard"):
        return CNN1D_tiny_ED()
    return IsingCNN(L=meta["settings"]["L"])


def _read(folder: Path, name: str, progress: bool) -> Demo:
    meta = json.loads((folder / "meta.json").read_text())
    model = _new_model(name, meta).to(torch.float64)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    toolbox = HessianToolbox.load(folder / "toolbox.safetensors", model, progress=progress)
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        arrays = {key: arrays[key] for key in arrays.files}
    return Demo(
        name=name,
        title=meta["title"],
        toolbox=toolbox,
        model=model,
        X_test=arrays["X_test"],
        y_test=arrays["y_test"],
        x=arrays["x"],
        x_label=meta["x_label"],
        train_x=arrays["train_x"],
        render=meta["render"],
        class_names=meta["class_names"],
        report=meta["report"],
        scaler=MinMaxScaler.from_json(json.dumps(meta["scaler"])) if "scaler" in meta else None,
    )


def _write(folder: Path, settings: dict, model, toolbox, arrays: dict, result, **meta) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)  # the build is incomplete until meta.json exists
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    toolbox.save(folder / "toolbox.safetensors")
    with atomic_path(folder / "arrays.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    meta["settings"] = settings
    meta["report"] = {
        "loss": result.loss,
        "gradient_norm": result.gradient_norm,
        "median_sample_gradient_norm": result.median_sample_gradient_norm,
        "train_accuracy": result.accuracy,
        "lbfgs_steps": result.lbfgs_steps,
        **meta.pop("extra_report", {}),
    }
    with atomic_path(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def _fit(model, X, y, settings, progress):
    result = train(
        model,
        X,
        y,
        weight_decay=settings["weight_decay"],
        epochs=settings["epochs"],
        lbfgs_steps=settings["lbfgs_steps"],
        seed=settings["seed"],
        progress=progress,
    )
    toolbox = HessianToolbox(model, X, y, weight_decay=settings["weight_decay"], progress=progress).fit()
    return result, toolbox


def _build_fermi_hubbard(folder: Path, settings: dict, progress: bool) -> None:
    train_set = fermi_hubbard_split(settings.get("split", "train"), progress=progress)
    train_set = train_set.subset(slice(None, None, settings.get("train_stride", 1)))
    test_set = fermi_hubbard_split("test", progress=progress)
    scaler = MinMaxScaler().fit(train_set.X)
    X_train = scaler.transform(train_set.X)[:, None, :]
    X_test = scaler.transform(test_set.X)[:, None, :]
    model = CNN1D_tiny_ED()
    result, toolbox = _fit(model, X_train, train_set.y, settings, progress)
    arrays = {"X_test": X_test, "y_test": test_set.y, "x": test_set.V1, "train_x": train_set.V1}
    window = FERMI_HUBBARD_GRIDS[settings["split"]].split(":")[0] if "split" in settings else ""
    window = window.replace("training points with ", " (trained only on ") + ")" if window else ""
    _write(
        folder,
        settings,
        model,
        toolbox,
        arrays,
        result,
        title=f"Extended Fermi-Hubbard chain, L = 12: Luttinger liquid vs CDW-I{window}",
        x_label="V1/J",
        render="1d",
        class_names=["LL", "CDW-I"],
        scaler=json.loads(scaler.to_json()),
    )


def _build_ising(folder: Path, settings: dict, progress: bool) -> None:
    common = {"L": settings["L"], "progress": progress}
    train_set = ising_2d(
        np.linspace(*settings["train_T"]), n_per_T=settings["n_per_T_train"], seed=settings["seed"], **common
    )
    test_set = ising_2d(
        np.linspace(*settings["test_T"]),
        n_per_T=settings["n_per_T_test"],
        seed=settings["seed"] + 1,
        **common,
    )
    model = IsingCNN(L=settings["L"])
    result, toolbox = _fit(model, train_set.X, train_set.y, settings, progress)
    arrays = {
        "X_test": test_set.X,
        "y_test": test_set.y,
        "x": test_set.temperature,
        "train_x": train_set.temperature,
    }
    _write(
        folder,
        settings,
        model,
        toolbox,
        arrays,
        result,
        title=f"2D Ising model, {settings['L']}x{settings['L']}: ordered vs disordered",
        x_label="T",
        render="2d",
        class_names=["disordered", "ordered"],
        extra_report={"critical_temperature": CRITICAL_TEMPERATURE},
    )


_BUILDERS = {
    "fermi-hubbard": _build_fermi_hubbard,
    "fermi-hubbard-window": _build_fermi_hubbard,
    "ising": _build_ising,
}
