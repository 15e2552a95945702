"""Your own model as an app: a saved toolbox (``tb.save``) and your model class, in the explorer.

``hessview app --toolbox PATH --model MODULE:CLASS [--data TEST.npz]`` builds ``MODULE.CLASS()``
(no arguments), puts the toolbox's parameters into it (or the state dict of ``--weights``), lets
:meth:`hessview.HessianToolbox.load` check them against the toolbox's fingerprint, computes the
explorer's results once (cached, keyed by the files' bytes) and serves
``notebooks/app-own-model.ipynb`` with Voila on 127.0.0.1. The notebook calls :func:`own_explorer`,
which reads the same settings from the environment (``$HESSVIEW_TOOLBOX``, ``$HESSVIEW_MODEL``,
``$HESSVIEW_DATA``, ``$HESSVIEW_WEIGHTS``) unless given as arguments.

The optional ``.npz`` test set holds ``X_test`` and any of ``y_test``, ``x`` (the test points'
control parameter), ``train_x``, ``x_label``, ``class_names`` and ``title``; without it the
explorer shows the training points themselves as test points.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path

import numpy as np

from hessview._io import CacheError, cache_dir, load_npz, logger

RESULTS_VERSION = "2"  # 2: ranking stability
TEXT_FIELDS = ("x_label", "title")
ENVIRONMENT = {
    "toolbox": "HESSVIEW_TOOLBOX",
    "model": "HESSVIEW_MODEL",
    "data": "HESSVIEW_DATA",
    "weights": "HESSVIEW_WEIGHTS",
}


def model_class(spec: str):
    """Return the class named by ``"module.path:ClassName"`` (imported; the module runs)."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"model must be given as MODULE:CLASS (e.g. mypackage.nets:Net), got {spec!r}")
    module_name, class_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"cannot import the module {module_name!r} of --model {spec}: {error} (run the command from the "
            "folder that holds it, or install it)"
        ) from error
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {class_name!r} (from --model {spec})") from None
    if not isinstance(cls, type):
        raise TypeError(f"{spec} is not a class but a {type(cls).__name__}")
    return cls


def load_model_and_toolbox(toolbox_path, model: str, weights=None, *, progress: bool = False):
    """Build ``MODULE:CLASS()``, give it its weights, and load the toolbox saved for it.

    Args:
        toolbox_path: a file written by :meth:`hessview.HessianToolbox.save`.
        model: ``"MODULE:CLASS"``; the class is called without arguments.
        weights: optional safetensors state dict (e.g. ``save_file(model.state_dict(), path)``); by
            default the trainable parameters are taken from the toolbox file, which holds them.
        progress: show progress while loading.

    Returns:
        ``(model, toolbox)``. Raises ValueError when the weights are not those the toolbox was made
        for (its fingerprint, checked by :meth:`~hessview.HessianToolbox.load`).
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from hessview.engine.params import FlatModel
    from hessview.engine.toolbox import HessianToolbox

    toolbox_path = Path(toolbox_path)
    if not toolbox_path.is_file():
        raise FileNotFoundError(f"no toolbox file at {toolbox_path} (write one with tb.save(path))")
    cls = model_class(model)
    network = cls()
    if not isinstance(network, torch.nn.Module):
        raise TypeError(f"{model}() must return a torch.nn.Module, got {type(network).__name__}")
    try:
        with safe_open(str(toolbox_path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("hessview", "{}"))
            theta = handle.get_tensor("theta") if "theta" in handle.keys() else None
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{toolbox_path} is not a readable hessview toolbox file: {error}") from error
    dtype = getattr(torch, meta.get("dtype", "float64"))
    network = network.to(dtype)
    if weights is not None:
        network.load_state_dict(load_file(str(weights)))
    elif theta is not None:
        flat = FlatModel(network, dtype)
        if theta.numel() != flat.n_params:
            raise ValueError(
                f"{model}() has {flat.n_params} trainable parameters but the toolbox was saved for a model "
                f"with {theta.numel()}"
            )
        with torch.no_grad():
            trainable = [p for p in network.parameters() if p.requires_grad]
            for parameter, value in zip(trainable, flat.unflatten(theta.to(dtype)).values(), strict=True):
                parameter.copy_(value)
    network.eval()
    return network, HessianToolbox.load(toolbox_path, network, progress=progress)


def _setting(value, name: str):
    value = value if value is not None else os.environ.get(ENVIRONMENT[name]) or None
    return value


def _read_data(path) -> dict:
    """The optional test set file: arrays and text fields (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        if "X_test" not in data.files:
            raise ValueError(f"{path} has no X_test array (keys: {sorted(data.files)})")
        out = {key: data[key] for key in data.files}
    for key in TEXT_FIELDS:
        if key in out:
            out[key] = str(out[key])
    if "class_names" in out:
        out["class_names"] = [str(name) for name in np.ravel(out["class_names"])]
    return out


def _digest(*paths, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        if path is None:
            digest.update(b"\0none")
            continue
        digest.update(b"\0" + str(Path(path).name).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def results_path(
    toolbox, model: str, data=None, weights=None, *, n_resamples: int = 200, seed: int = 0
) -> Path:
    """Cache file of the explorer's results for these files and settings (SHA-256 of their bytes)."""
    key = _digest(toolbox, data, weights, extra=f"{RESULTS_VERSION}/{model}/{n_resamples}/{seed}")
    return cache_dir("own") / f"own-{key[:20]}.npz"


def prepare(
    toolbox=None, model=None, data=None, weights=None, *, n_resamples: int = 200, seed: int = 0, progress=True
) -> Path:
    """Compute (or find cached) the explorer's results for a user's toolbox and model; returns the file.

    Arguments default to ``$HESSVIEW_TOOLBOX``, ``$HESSVIEW_MODEL``, ``$HESSVIEW_DATA`` and
    ``$HESSVIEW_WEIGHTS``.
    """
    from hessview.widgets.results import ExplorerResults

    toolbox, model = _setting(toolbox, "toolbox"), _setting(model, "model")
    data, weights = _setting(data, "data"), _setting(weights, "weights")
    if toolbox is None or model is None:
        raise ValueError(
            "give the toolbox file and the model class (--toolbox PATH --model MODULE:CLASS, or "
            "$HESSVIEW_TOOLBOX and $HESSVIEW_MODEL)"
        )
    for path, what in ((toolbox, "toolbox"), (data, "data"), (weights, "weights")):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"no {what} file at {path}")
    fields = _read_data(data) if data is not None else {}
    path = results_path(toolbox, model, data, weights, n_resamples=n_resamples, seed=seed)
    try:
        load_npz(path, key=path.name)  # intact: nothing to compute
        return path
    except CacheError as error:
        if error.kind != "missing":
            logger.warning(
                "hessview: cached explorer results not used: %s; computing them again", error.detail
            )
    network, tb = load_model_and_toolbox(toolbox, model, weights, progress=progress)
    X_train = tb.X_train.detach().cpu().numpy()
    if "X_test" in fields:
        X_test, y_test = fields["X_test"], fields.get("y_test")
    else:  # no test set: explain the training points' own predictions
        X_test, y_test = X_train, tb.y_train.detach().cpu().numpy()
    results = ExplorerResults.from_toolbox(
        tb,
        X_test,
        y_test,
        x=fields.get("x"),
        train_x=fields.get("train_x"),
        n_resamples=n_resamples,
        seed=seed,
        measurement="margin" if tb.n_classes is not None else "loss",
    )
    shown = {
        "title": fields.get("title") or f"Your model: {model}",
        "x_label": fields.get("x_label") or ("control parameter" if "x" in fields else None),
        "class_names": fields.get("class_names"),
        "has_x": "x" in fields,
        "has_train_x": "train_x" in fields,
        "test_is_train": "X_test" not in fields,
    }
    results.save(path, key=path.name, X_train=X_train, app_fields=np.array(json.dumps(shown)))
    return path


def own_explorer(
    toolbox=None, model=None, data=None, weights=None, *, n_resamples: int = 200, seed: int = 0, **kwargs
):
    """The explorer of a user's saved toolbox and model (results computed once, then cached).

    Arguments default to the environment variables set by ``hessview app --toolbox ... --model ...``;
    ``kwargs`` go to :class:`~hessview.widgets.Explorer` (e.g. ``k``, ``render``, ``index``).
    """
    from hessview.widgets.explorer import Explorer
    from hessview.widgets.results import ExplorerResults

    path = prepare(toolbox, model, data, weights, n_resamples=n_resamples, seed=seed, progress=False)
    stored = load_npz(path, key=path.name)
    results = ExplorerResults.from_arrays(stored, source=path)
    X_train, shown = stored["X_train"], json.loads(str(stored["app_fields"]))
    options = dict(
        results=results,
        X_train=X_train,
        x=results.x if shown["has_x"] else None,
        train_x=results.train_x if shown["has_train_x"] else None,
        x_label=shown["x_label"],
        title=shown["title"],
        class_names=shown["class_names"],
    )
    options.update(kwargs)
    return Explorer(None, None, **options)
