"""A small example for ``hessview app --toolbox ... --model ...``: a network, its data and its toolbox.

``write_example(folder)`` trains :class:`ExampleNet` on a one-dimensional "phase transition" (label 1
when the control parameter ``g`` exceeds 1, two labels near the transition flipped, one noise
feature), fits its :class:`~hessview.HessianToolbox` and writes ``toolbox.safetensors`` and a test
set ``test.npz``, so that

    hessview app --toolbox FOLDER/toolbox.safetensors --model hessview.app.example_model:ExampleNet \\
        --data FOLDER/test.npz

serves it. The template notebook ``notebooks/app-own-model.ipynb`` shows this example when it is
given no model of yours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class ExampleNet(nn.Sequential):
    """Two inputs (control parameter, noise), eight tanh units, two classes; built without arguments."""

    def __init__(self):
        super().__init__(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))


def example_data(seed: int = 0):
    """Training and test sets: ``(X_train, y_train, g_train, X_test, y_test, g_test)``."""
    rng = np.random.default_rng(seed)
    g_train = np.linspace(0.05, 3.0, 40)
    X_train = np.stack([np.log(g_train), 0.3 * rng.normal(size=g_train.size)], axis=1)
    y_train = (g_train > 1.0).astype(np.int64)
    y_train[[17, 22]] = 1 - y_train[[17, 22]]  # label noise near the transition: harmful points
    g_test = np.geomspace(0.03, 6.0, 15)
    X_test = np.stack([np.log(g_test), np.zeros(g_test.size)], axis=1)
    return X_train, y_train, g_train, X_test, (g_test > 1.0).astype(np.int64), g_test


def write_example(folder, *, progress: bool = False) -> tuple[str, str, str]:
    """Train the example, save its toolbox and test set in ``folder``; returns the app's three arguments.

    Returns ``(toolbox path, "hessview.app.example_model:ExampleNet", test-set path)``. Files that
    already exist are kept (the example is deterministic).
    """
    from hessview._io import atomic_path
    from hessview.engine.toolbox import HessianToolbox
    from hessview.models import train

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    toolbox_path, data_path = folder / "toolbox.safetensors", folder / "test.npz"
    spec = f"{__name__}:ExampleNet"
    if toolbox_path.is_file() and data_path.is_file():
        return str(toolbox_path), spec, str(data_path)
    X_train, y_train, g_train, X_test, y_test, g_test = example_data()
    model = ExampleNet()
    weight_decay = 1e-2
    train(model, X_train, y_train, weight_decay=weight_decay, epochs=300, lbfgs_steps=500, progress=progress)
    X = torch.as_tensor(X_train, dtype=torch.float64)
    y = torch.as_tensor(y_train)
    toolbox = HessianToolbox(model, X, y, weight_decay=weight_decay, progress=progress).fit()
    with atomic_path(data_path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            X_test=X_test,
            y_test=y_test,
            x=g_test,
            train_x=g_train,
            x_label=np.array("g"),
            class_names=np.array(["disordered", "ordered"]),
            title=np.array("Example: your own model in the explorer"),
        )
    toolbox.save(toolbox_path)
    return str(toolbox_path), spec, str(data_path)
