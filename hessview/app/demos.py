"""Ready-made demos: physics data, a trained model and its fitted ``HessianToolbox``, cached on disk.

``load_demo(name)`` builds what is missing on first use (data and Hessian, about a minute: the trained
weights are shipped in the package, :mod:`hessview.models.shipped`, and used when they were made with
the demo's current settings; otherwise, or with ``retrain=True``, the model is trained here, several
minutes) and afterwards only reads files: the model's weights (safetensors), the toolbox (``tb.save``),
the test set (``.npz``), a ``meta.json`` and a ``manifest.json`` with the SHA-256 of each, verified on
every load.  Builds are atomic (a temporary folder renamed into place) and serialised by a file lock;
a damaged cache is reported in one line and rebuilt, as is a demo whose settings changed; a cache that
cannot be written builds in memory (see :func:`load_demo`).

Demos:
    ``"fermi-hubbard"``: hessview's smooth variant of the paper's ``CNN1D_tiny_ED`` (Dawid et al., MLST 3,
    015002 (2022); softplus and log-sum-exp pooling, the same 740 parameters) at a true minimum of the
    objective with weight decay 2e-3 (shipped weights and tuned damping, see ``DEMO_SETTINGS``), on the
    paper's 1000-point training grid of LL/CDW-I ground states (global min-max normalised, input
    ``(n, 1, 924)``), evaluated on the paper's 50-point test grid.
    ``"fermi-hubbard-window"``: the same network trained only on the restricted window
    ``V1/J in [0, 0.25] U [36, 40]`` (177 points), evaluated on the same test grid: an extrapolation
    demo, where the test points between the windows are flagged.
    ``"ising"``: :class:`hessview.models.IsingCNN` on 16x16 Ising configurations, 24 training
    temperatures, tested on 24 temperatures in between.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hessview._io import CacheError, atomic_path, cache_dir, file_lock, file_sha256
from hessview.datasets import CRITICAL_TEMPERATURE, FERMI_HUBBARD_GRIDS, fermi_hubbard_split, ising_2d
from hessview.engine.toolbox import HessianToolbox
from hessview.models import CNN1D_tiny_ED, IsingCNN, MinMaxScaler, train
from hessview.models.shipped import load_shipped_weights, shipped_record

#: The settings of each demo; changing one makes ``load_demo`` rebuild that demo's cache.
DEMO_SETTINGS = {
    "fermi-hubbard": {
        "version": 2,
        "train_stride": 1,
        # hessview's smooth variant of the paper's CNN (softplus, log-sum-exp pooling; same parameters):
        # a twice-differentiable objective, so training reaches a true minimum (see the README)
        "architecture": {"smooth": True, "pool_temperature": 0.1},
        # 40x the paper's 0.05 / n (n = 1000): bounds the logits so that the softmax does not saturate to
        # float64 roundoff and the Hessian is positive definite; at 1e-3 the 1000-point objective has a
        # long valley with negative curvature that Newton steps cross only slowly
        "weight_decay": 2e-3,
        # the Adam warm-up uses half of it (a continuation): from the small initialisation a strong
        # weight decay makes the constant classifier attractive (3e-3 throughout ends there)
        "adam_weight_decay": 1e-3,
        "epochs": 1000,
        "lbfgs_steps": 1000,
        "newton_steps": 10,  # to float64 roundoff: stationary by the toolbox's Newton-step test
        "seed": 0,
    },
    "fermi-hubbard-window": {
        "version": 2,
        "split": "train_edges",
        # hessview's smooth variant of the paper's CNN (softplus, log-sum-exp pooling; same parameters):
        # a twice-differentiable objective, so training reaches a true minimum (see the README)
        "architecture": {"smooth": True, "pool_temperature": 0.1},
        # 20x the paper's 0.05 / n (n = 1000): bounds the logits so that the softmax does not saturate to
        # float64 roundoff, and makes the Hessian positive definite
        "weight_decay": 1e-3,
        "epochs": 300,
        "lbfgs_steps": 500,
        "newton_steps": 4,  # to float64 roundoff: stationary by the toolbox's Newton-step test
        "seed": 0,
    },
    "ising": {
        "version": 2,
        "L": 16,
        "train_T": [1.2, 3.4, 24],
        "test_T": [1.25, 3.35, 24],
        "n_per_T_train": 25,
        "n_per_T_test": 4,
        "weight_decay": 1e-3,
        "epochs": 200,
        "lbfgs_steps": 300,
        "newton_steps": 5,  # to float64 roundoff: stationary by the toolbox's Newton-step test
        "seed": 0,
    },
}

#: ``k`` of the explorer's "retrain without the top k" action (``ExplorerState.k``'s default).
RETRAIN_K = 5

#: How each demo's damping is tuned (:meth:`HessianToolbox.tune_damping`), once, offline, with the
#: weights: the hold-out LDS of the margin the explorer shows, for removals of ``RETRAIN_K`` points
#: (``alpha = 1 - RETRAIN_K / n_train``, the explorer's question).  The result is shipped with the
#: weights (``demo-weights.json``), so that building a demo cache retrains nothing.
TUNING = {"n_subsets": 32, "holdout": 0.2, "seed": 0, "measurement": "margin"}


def tuning_arguments(n_train: int) -> dict:
    """The arguments of ``tune_damping`` for a demo with ``n_train`` training points (see :data:`TUNING`)."""
    return {"alpha": round(1.0 - RETRAIN_K / n_train, 12), **TUNING}


def tuned_damping_record(toolbox: HessianToolbox, arguments: dict) -> dict:
    """What ``tune_damping`` chose for ``toolbox``, as stored with the shipped weights."""
    return {
        "arguments": arguments,
        "damping": float(toolbox.damping_),
        "tuned_lds": float(toolbox.tuned_lds_),
        "scores": [[float(d), float(s)] for d, s in toolbox.damping_scores_.items()],
        "reason": toolbox.damping_reason_,
    }


def apply_tuned_damping(toolbox: HessianToolbox, record: dict) -> HessianToolbox:
    """Set ``toolbox``'s damping to a shipped tuned one (see :data:`TUNING`), with its scores and reason.

    No retraining: the damping was chosen by ``tune_damping`` when the weights were made, on the same
    weights and data (the record's ``arguments`` must equal :func:`tuning_arguments` of this toolbox).
    """
    arguments = tuning_arguments(toolbox.n_train)
    if record.get("arguments") != arguments:
        raise ValueError(
            f"the shipped tuned damping was made with {record.get('arguments')}, not {arguments}"
        )
    toolbox.set_damping(float(record["damping"]))
    toolbox._record_tuning(
        {float(d): float(s) for d, s in record["scores"]},
        float(record["tuned_lds"]),
        f"{record['reason']} (tuned when the weights were made; shipped with them)",
    )
    return toolbox


logger = logging.getLogger("hessview.cache")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
#: The files of a built demo, each listed with its size and SHA-256 in ``manifest.json``.
DEMO_FILES = ("model.safetensors", "toolbox.safetensors", "arrays.npz", "meta.json")
META_FIELDS = ("title", "x_label", "render", "class_names", "report", "settings")
ARRAY_FIELDS = ("X_test", "y_test", "x", "train_x")


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


def load_demo(
    name: str = "fermi-hubbard", *, progress: bool = True, rebuild: bool = False, retrain: bool = False
) -> Demo:
    """Return the demo ``name`` (a key of ``DEMO_SETTINGS``), building its cache if needed.

    The cache is ``cache_dir("demos") / name``: the model, the toolbox, the test arrays, ``meta.json``
    and a ``manifest.json`` with the size and SHA-256 of each, written with the build. Every load checks
    the manifest, the files against it and their contents; a damaged cache (truncated, bit flips, a
    file edited or copied in from another build, missing metadata, an unknown format, or a cache from
    before the manifest) is reported in one line (logger ``hessview.cache``) and rebuilt, as is one made
    with other settings.

    A build writes into a temporary folder next to the cache and renames it into place, holding an
    exclusive build lock throughout and a second lock (see :func:`demo_locks`) against readers only
    for the renames: concurrent builders (two app starts, the app and a notebook) wait for each other
    and the later ones reuse the first one's complete build, a reader never sees half of one, and a
    reader of a complete cache never waits for a rebuild. Where the cache cannot be written (a
    read-only file system), the demo is built in a temporary folder, loaded and not kept, with a
    one-line notice.

    Args:
        name: which demo.
        progress: show progress bars while building.
        rebuild: build again even when a matching cache exists (unless another process finishes a
            build while this one waits for the lock: that fresh build is used). The shipped weights
            are used when they fit the settings.
        retrain: build again and train the model from scratch instead of loading the shipped weights
            (implies ``rebuild``; never reuses another process's build); :func:`compare_with_shipped`
            then says how close the two are.
    """
    if not isinstance(name, str):
        raise TypeError(f"demo name must be a string, got {type(name).__name__}")
    if name not in DEMO_SETTINGS:
        raise ValueError(f"unknown demo {name!r}; choose one of {sorted(DEMO_SETTINGS)}")
    settings = DEMO_SETTINGS[name]
    folder = cache_dir("demos") / name
    build_lock, swap_lock = demo_locks(folder)
    problem = None
    rebuild = rebuild or retrain
    if not rebuild:
        with file_lock(swap_lock, shared=True):
            try:
                return _read(folder, name, settings, progress)
            except CacheError as error:
                problem = error
    seen = _build_id(folder)  # a build finished while we wait for the lock is reused, even by rebuild
    try:
        with file_lock(build_lock, waiting=f"hessview: waiting for another process building {folder}"):
            if not rebuild or (not retrain and _build_id(folder) != seen):
                with file_lock(swap_lock, shared=True):
                    try:
                        return _read(folder, name, settings, progress)
                    except CacheError as error:
                        problem = error
            _report(problem, name, "rebuilding it")
            problem = None  # reported
            _build_into_place(folder, name, settings, progress, swap_lock, retrain)
            with file_lock(swap_lock, shared=True):
                return _read(folder, name, settings, progress)
    except OSError as error:  # the cache cannot be written (read-only, full): build in memory
        _report(problem, name, "building it in memory")
        logger.warning(
            "hessview: cannot write the demo cache %s (%s); building the %r demo in memory, not kept",
            folder,
            error,
            name,
        )
    with tempfile.TemporaryDirectory(prefix=f"hessview-{name}-") as scratch:
        _build(Path(scratch), name, settings, progress, retrain)
        return _read(Path(scratch), name, settings, progress)


def _report(problem: CacheError | None, name: str, action: str) -> None:
    """Log why a cached demo is not used, in one line (nothing when it simply was never built)."""
    if problem is not None and problem.kind != "missing":
        logger.warning("hessview: cached %r demo not used: %s; %s now", name, problem.detail, action)


def _remedy(name: str) -> str:
    return f"hessview build --rebuild {name}"


def _build_id(folder: Path) -> str | None:
    """The ``build`` field of a demo's manifest (None when absent or unreadable): tells builds apart."""
    try:
        return str(json.loads((folder / MANIFEST).read_text())["build"])
    except Exception:
        return None


def _verify(folder: Path, name: str, settings: dict) -> dict:
    """Check a demo folder against its manifest; return its ``meta.json`` or raise CacheError."""
    remedy = _remedy(name)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise CacheError(folder, "not built yet", remedy, kind="missing")
    if not manifest_path.is_file():
        raise CacheError(
            manifest_path, "missing (an interrupted build or a cache from before checksums)", remedy
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        fmt, owner = manifest["format"], manifest["demo"]
        if not isinstance(files, dict) or not isinstance(manifest["build"], str):
            raise TypeError("malformed fields")
    except Exception as error:
        raise CacheError(manifest_path, f"unreadable ({type(error).__name__}: {error})", remedy) from error
    if fmt != MANIFEST_FORMAT:
        raise CacheError(
            manifest_path, f"unknown format {fmt!r} (this hessview reads {MANIFEST_FORMAT})", remedy
        )
    if owner != name:
        raise CacheError(manifest_path, f"belongs to the {owner!r} demo, not {name!r}", remedy)
    missing = sorted(set(DEMO_FILES) - set(files))
    if missing:
        raise CacheError(manifest_path, f"lists no checksum for {missing}", remedy)
    for file_name in DEMO_FILES:
        path, expected = folder / file_name, files[file_name]
        if not path.is_file():
            raise CacheError(path, "missing", remedy)
        if not isinstance(expected, dict) or path.stat().st_size != expected.get("size"):
            raise CacheError(path, "has the wrong size (truncated or replaced)", remedy)
        if file_sha256(path) != expected.get("sha256"):
            raise CacheError(path, "checksum mismatch (damaged, edited or from another build)", remedy)
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except Exception as error:
        raise CacheError(meta_path, f"unreadable ({type(error).__name__}: {error})", remedy) from error
    lacking = sorted(set(META_FIELDS) - set(meta)) if isinstance(meta, dict) else list(META_FIELDS)
    if lacking:
        raise CacheError(meta_path, f"lacks the fields {lacking}", remedy)
    if meta["settings"] != settings:
        raise CacheError(folder, "was built with other settings", remedy, kind="stale")
    built = meta["report"].get("shipped") if isinstance(meta["report"], dict) else None
    if built is not None and built != _shipped_summary(shipped_record(name), settings):
        raise CacheError(folder, "was built with other shipped weights or damping", remedy, kind="stale")
    return meta


def _shipped_summary(record: dict | None, settings: dict) -> dict | None:
    """Which shipped weights and tuned damping (``record``) a build with ``settings`` uses (None: none)."""
    if record is None or record["settings"] != settings:
        return None
    return {"sha256": record["sha256"], "tuned_damping": (record.get("tuned_damping") or {}).get("damping")}


def _new_model(name: str, settings: dict) -> nn.Module:
    if name.startswith("fermi-hubbard"):
        return CNN1D_tiny_ED(**settings.get("architecture", {}))
    return IsingCNN(L=settings["L"])


def _read(folder: Path, name: str, settings: dict, progress: bool) -> Demo:
    """Load a verified demo folder; raise CacheError when any part of it is not usable."""
    meta = _verify(folder, name, settings)
    remedy = _remedy(name)
    try:
        model = _new_model(name, meta["settings"]).to(torch.float64)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        model.eval()
    except Exception as error:
        raise CacheError(
            folder / "model.safetensors", f"unusable ({type(error).__name__}: {error})", remedy
        ) from error
    try:
        toolbox = HessianToolbox.load(folder / "toolbox.safetensors", model, progress=progress)
    except Exception as error:
        raise CacheError(folder / "toolbox.safetensors", f"unusable ({error})", remedy) from error
    try:
        with np.load(folder / "arrays.npz", allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in ARRAY_FIELDS}
        scaler = MinMaxScaler.from_json(json.dumps(meta["scaler"])) if "scaler" in meta else None
    except Exception as error:
        raise CacheError(
            folder / "arrays.npz", f"unusable ({type(error).__name__}: {error})", remedy
        ) from error
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
        scaler=scaler,
    )


def demo_locks(folder: Path) -> tuple[Path, Path]:
    """The demo's two lock files: one builder at a time; readers (shared) against the swap (exclusive).

    A builder holds the first for the whole build and the second only while it renames its finished
    folder into place, so readers of a complete cache never wait for a rebuild.
    """
    return folder.parent / f".{folder.name}.lock", folder.parent / f".{folder.name}.swap.lock"


def _build_into_place(
    folder: Path, name: str, settings: dict, progress: bool, swap_lock: Path, retrain: bool = False
) -> None:
    """Build into a temporary folder next to ``folder``, then rename it into place (hold the build lock)."""
    root = folder.parent
    for leftover in root.glob(f".{name}.build-*"):  # from builders killed mid-build (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=root))
    old = root / f".{name}.build-old-{uuid.uuid4().hex}"
    try:
        _build(scratch, name, settings, progress, retrain)
        with file_lock(swap_lock):  # readers are out for the two renames only
            if folder.exists() or folder.is_symlink():
                os.rename(folder, old)  # a directory cannot replace a non-empty one in one step
            os.rename(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _write(folder: Path, settings: dict, model, toolbox, arrays: dict, report: dict, **meta) -> None:
    """Write a demo's files into ``folder`` (a fresh build folder; the caller adds the manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    toolbox.save(folder / "toolbox.safetensors")
    with atomic_path(folder / "arrays.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    meta["settings"] = settings
    meta["report"] = {**report, **meta.pop("extra_report", {})}
    with atomic_path(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def _build(folder: Path, name: str, settings: dict, progress: bool, retrain: bool = False) -> None:
    """Run the demo's builder into ``folder`` (a fresh folder), then write its manifest."""
    if retrain:
        _BUILDERS[name](folder, settings, progress, retrain=True)
    else:
        _BUILDERS[name](folder, settings, progress)
    write_manifest(folder, name)


def write_manifest(folder: Path, name: str) -> Path:
    """Write ``folder/manifest.json``: format, demo name, a build id, size and SHA-256 of each demo file."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "demo": name,
        "build": uuid.uuid4().hex,
        "files": {
            file_name: {
                "size": (folder / file_name).stat().st_size,
                "sha256": file_sha256(folder / file_name),
            }
            for file_name in DEMO_FILES
        },
    }
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return folder / MANIFEST


def _fit(name, X, y, settings, progress, retrain):
    """The demo's model (shipped weights, or trained here) and its fitted toolbox, with a report."""
    model = _new_model(name, settings)
    record = None if retrain else shipped_record(name)
    if record is not None and record["settings"] == settings:
        model = model.to(torch.float64)
        model.load_state_dict(load_shipped_weights(name))
        model.eval()
        weights = "shipped"
        shipped = _shipped_summary(record, settings)
    else:
        if progress and not retrain:
            print(f"hessview: no shipped weights for the {name!r} demo with these settings; training it")
        train(
            model,
            X,
            y,
            weight_decay=settings["weight_decay"],
            epochs=settings["epochs"],
            lbfgs_steps=settings["lbfgs_steps"],
            newton_steps=settings.get("newton_steps", 0),
            adam_weight_decay=settings.get("adam_weight_decay"),
            seed=settings["seed"],
            progress=progress,
        )
        weights = "retrained" if retrain else "trained"
    toolbox = HessianToolbox(model, X, y, weight_decay=settings["weight_decay"], progress=progress).fit()
    arguments = tuning_arguments(toolbox.n_train)
    tuned = record.get("tuned_damping") if weights == "shipped" else None
    if tuned is not None and tuned.get("arguments") == arguments:  # else: made for other arguments
        apply_tuned_damping(toolbox, tuned)
    elif retrain:  # weights made again (``hessview build --retrain``): tune their damping too (minutes)
        toolbox.tune_damping(**arguments, max_seconds=3600.0)
    with torch.no_grad():
        outputs = toolbox.flat(toolbox.theta, toolbox.X_train)
    report = {
        "weights": weights,
        "loss": float(torch.nn.functional.cross_entropy(outputs, toolbox.y_train))
        + settings["weight_decay"] / 2 * float(toolbox.theta.square().sum()),
        "gradient_norm": toolbox.gradient_norm_,
        "median_sample_gradient_norm": toolbox.median_sample_gradient_norm_,
        "train_accuracy": float((outputs.argmax(1) == toolbox.y_train).double().mean()),
        "lambda_min": toolbox.lambda_min_,
        "lambda_max": toolbox.lambda_max_,
        "damping": toolbox.damping_,
        "damping_reason": toolbox.damping_reason_,
    }
    if weights == "shipped":
        report["shipped"] = shipped
    if toolbox.tuned_lds_ is not None:  # the current damping was tuned (here or with the weights)
        report["tuned_damping"] = tuned_damping_record(toolbox, arguments)
    return model, toolbox, report


def _build_fermi_hubbard(folder: Path, settings: dict, progress: bool, retrain: bool = False) -> None:
    train_set = fermi_hubbard_split(settings.get("split", "train"), progress=progress)
    train_set = train_set.subset(slice(None, None, settings.get("train_stride", 1)))
    test_set = fermi_hubbard_split("test", progress=progress)
    scaler = MinMaxScaler().fit(train_set.X)
    X_train = scaler.transform(train_set.X)[:, None, :]
    X_test = scaler.transform(test_set.X)[:, None, :]
    name = "fermi-hubbard-window" if "split" in settings else "fermi-hubbard"
    model, toolbox, report = _fit(name, X_train, train_set.y, settings, progress, retrain)
    arrays = {"X_test": X_test, "y_test": test_set.y, "x": test_set.V1, "train_x": train_set.V1}
    window = FERMI_HUBBARD_GRIDS[settings["split"]].split(":")[0] if "split" in settings else ""
    window = window.replace("training points with ", " (trained only on ") + ")" if window else ""
    _write(
        folder,
        settings,
        model,
        toolbox,
        arrays,
        report,
        title=f"Extended Fermi-Hubbard chain, L = 12: Luttinger liquid vs CDW-I{window}",
        x_label="V1/J",
        render="1d",
        class_names=["LL", "CDW-I"],
        scaler=json.loads(scaler.to_json()),
    )


def _build_ising(folder: Path, settings: dict, progress: bool, retrain: bool = False) -> None:
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
    model, toolbox, report = _fit("ising", train_set.X, train_set.y, settings, progress, retrain)
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
        report,
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


def _top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Per row, the mean over helpful and harmful of the shared fraction of the top-``k`` columns."""
    shares = []
    for sign in (1, -1):
        top_a = np.argsort(-sign * a, axis=1)[:, :k]
        top_b = np.argsort(-sign * b, axis=1)[:, :k]
        shares.append([len(np.intersect1d(x, z)) / k for x, z in zip(top_a, top_b, strict=True)])
    return np.mean(shares, axis=0)


def compare_with_shipped(demo: Demo, *, k: int = 10, progress: bool = False) -> dict:
    """How closely ``demo``'s model (typically retrained) reproduces the shipped weights of its demo.

    Fits a second toolbox on the shipped weights with the same data (one more Hessian) and compares on
    the demo's test set: the largest difference of a predicted class probability, the fraction of
    equal predicted labels, the mean and smallest top-``k`` overlap of the most helpful and most harmful
    training points (influence on the test loss, :func:`_top_k_overlap`; near-ties among tiny values can
    swap places), the largest influence difference relative to the largest shipped |influence|, and the
    relative distance of the parameter vectors (influence of both at ``demo``'s damping), and the damping
    of ``demo`` beside the shipped one (tuned with the weights).  Bitwise equality is not expected across
    machines or thread counts.

    Raises:
        ValueError: no weights are shipped for ``demo.name`` with its current settings.
    """
    record = shipped_record(demo.name)
    settings = DEMO_SETTINGS[demo.name]
    if record is None or record["settings"] != settings:
        raise ValueError(f"no shipped weights of the {demo.name!r} demo match its current settings")
    shipped = _new_model(demo.name, settings).to(torch.float64)
    shipped.load_state_dict(load_shipped_weights(demo.name))
    tb = demo.toolbox
    other = HessianToolbox(
        shipped.eval(), tb.X_train, tb.y_train, weight_decay=tb.weight_decay, progress=progress
    ).fit()
    shipped_damping = (record.get("tuned_damping") or {}).get("damping", other.damping_)
    other.set_damping(tb.damping_)  # the weights compared at one damping; the dampings are reported apart
    p_new, p_old = tb.predict(demo.X_test), other.predict(demo.X_test)
    influence = [t.influence(demo.X_test, demo.y_test) for t in (tb, other)]
    overlap = _top_k_overlap(*influence, k)
    return {
        "max_probability_difference": float(np.abs(p_new - p_old).max()),
        "same_prediction": float((p_new.argmax(1) == p_old.argmax(1)).mean()),
        f"top{k}_overlap_mean": float(overlap.mean()),
        f"top{k}_overlap_min": float(overlap.min()),
        "influence_relative_difference": float(
            np.abs(influence[0] - influence[1]).max() / np.abs(influence[1]).max()
        ),
        "parameter_relative_distance": float((tb.theta - other.theta).norm() / other.theta.norm()),
        "damping": float(tb.damping_),
        "shipped_damping": float(shipped_damping),
    }
