"""The energy-landscape app: ready-made landscapes of two small networks, cached, in ``LandscapeExplorer``.

``hessview app landscape`` serves ``notebooks/app-landscape.ipynb``, which calls
:func:`landscape_app`. Two landscapes (Niroomand & Wales 2023, see :class:`hessview.Landscape`),
built once in about a minute with progress bars and kept under ``$HESSVIEW_CACHE_DIR/landscape``:

``"synthetic"``: six standard-normal features, class 1 inside the disc :math:`x_1^2 + x_4^2 < 1.4`:
    only features 1 and 4 decide, so a faithful relevance ranks them first.
``"fermi-hubbard"``: the site occupations :math:`\\langle n_i\\rangle - 1/2` of the 12-site extended
    Fermi-Hubbard ring (exact diagonalisation, :func:`hessview.datasets.fermi_hubbard_chain`),
    standardised, labelled Luttinger liquid (0) or charge-density wave (1). Linearly separable: one
    minimum.
``"ising"``: 4x4 Ising spin configurations (Metropolis, :func:`hessview.datasets.ising_2d`) at 16
    temperatures, labelled ordered (``T < T_c``) or disordered: the network must learn
    :math:`|m|`, which gives a landscape of many minima.

Each landscape is a SQLite database written under a temporary name and renamed when complete;
``meta.json``, written last, records the settings, so a changed setting or an interrupted build
rebuilds. ``quick=True`` (``hessview app landscape --quick``) builds smaller landscapes in seconds.

What the explorer draws (the disconnectivity graph, every basin's conserved weights, relevance and
explanation stability, every minimum's test accuracy) is computed once after the build
(:class:`hessview.landscape.LandscapeSummary`) and kept beside the database as ``explorer.json``;
``meta.json`` records the SHA-256 of both files, and a summary whose files do not match is computed
again. A cached app therefore starts without importing torch or SciPy and computes nothing.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path

import numpy as np

from hessview._io import atomic_path, cache_dir, file_lock, file_sha256

LANDSCAPES = ("synthetic", "fermi-hubbard", "ising")
SETTINGS = {
    "synthetic": {
        "version": 1,
        "n_samples": 240,
        "n_train": 160,
        "hidden": 4,
        "weight_decay": 3e-3,
        "seed": 0,
        "n_steps": 8,
        "temperature": 0.5,
        "step_size": 2.0,
        "max_attempts": 40,
    },
    "fermi-hubbard": {
        "version": 1,
        "V1": [0.0, 3.0, 60],
        "hidden": 2,
        "weight_decay": 3e-3,
        "seed": 0,
        "n_steps": 8,
        "temperature": 0.2,
        "step_size": 2.0,
        "max_attempts": 10,
    },
    "ising": {
        "version": 1,
        "L": 4,
        "T": [1.0, 4.0, 16],
        "n_per_T": 10,
        "n_per_T_test": 4,
        "hidden": 4,
        "weight_decay": 1e-3,
        "seed": 0,
        "n_steps": 20,
        "temperature": 0.2,
        "step_size": 2.0,
        "max_attempts": 30,
    },
}
#: ``quick=True``: (basin-hopping steps, connection attempts) of each landscape
QUICK = {"synthetic": (4, 6), "fermi-hubbard": (2, 2), "ising": (3, 3)}
TITLES = {
    "synthetic": "Synthetic data: only features x1 and x4 decide the class",
    "fermi-hubbard": "Fermi-Hubbard chain: which sites' densities decide LL vs CDW",
    "ising": "2D Ising model, 4x4: which spins decide ordered vs disordered",
}


def settings(name: str, quick: bool = False) -> dict:
    """The settings of landscape ``name`` (fewer basin-hopping steps when ``quick``)."""
    if name not in SETTINGS:
        raise ValueError(f"unknown landscape {name!r}; choose one of {LANDSCAPES}")
    chosen = dict(SETTINGS[name])
    if quick:
        chosen["n_steps"], chosen["max_attempts"] = QUICK[name]
    return chosen


def landscape_data(name: str, chosen: dict, *, progress: bool = False) -> dict:
    """The landscape's data: ``X``, ``y`` (training), ``X_test``, ``y_test``, feature names, lattice."""
    if name == "synthetic":
        rng = np.random.default_rng(chosen["seed"])
        X = rng.normal(size=(chosen["n_samples"], 6))
        y = (X[:, 1] ** 2 + X[:, 4] ** 2 < 1.4).astype(np.int64)
        n = chosen["n_train"]
        return {
            "X": X[:n],
            "y": y[:n],
            "X_test": X[n:],
            "y_test": y[n:],
            "feature_names": [f"x{i}" for i in range(6)],
            "lattice_shape": None,
        }
    if name == "ising":
        from hessview.datasets import ising_2d

        T, L = np.linspace(*chosen["T"]), chosen["L"]
        train = ising_2d(T, L=L, n_per_T=chosen["n_per_T"], seed=chosen["seed"], progress=progress)
        test = ising_2d(T, L=L, n_per_T=chosen["n_per_T_test"], seed=chosen["seed"] + 1, progress=progress)
        return {
            "X": train.X.reshape(len(train.X), -1),
            "y": train.y,
            "X_test": test.X.reshape(len(test.X), -1),
            "y_test": test.y,
            "feature_names": [f"site ({r}, {c})" for r in range(L) for c in range(L)],
            "lattice_shape": (L, L),
        }
    from hessview.datasets import fermi_hubbard_chain

    chain = fermi_hubbard_chain(np.linspace(*chosen["V1"]), progress=progress)
    deviation = chain.density - 0.5
    features = deviation / deviation.std()
    return {
        "X": features,
        "y": chain.y,
        "X_test": features,
        "y_test": chain.y,
        "feature_names": [f"site {i}" for i in range(features.shape[1])],
        "lattice_shape": (features.shape[1],),
    }


def _folder(name: str, quick: bool) -> Path:
    return cache_dir("landscape") / (f"{name}-quick" if quick else name)


def _is_complete(folder: Path, chosen: dict) -> bool:
    meta = folder / "meta.json"
    if not meta.is_file() or not (folder / "landscape.sqlite").is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("settings") == chosen
    except (OSError, ValueError):
        return False


def _lock(name: str, folder: Path):
    """One builder of a landscape at a time: a second one waits, then finds the first one's build."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    waiting = f"another process is building the {name!r} landscape; waiting for it"
    return file_lock(folder.parent / f".{folder.name}.lock", waiting=waiting)


def load_landscape(name: str, *, quick: bool = False, progress: bool = True, rebuild: bool = False):
    """Return ``(landscape, data)`` for landscape ``name``, exploring and connecting it on first use."""
    from hessview.landscape import Landscape

    chosen = settings(name, quick)
    folder = _folder(name, quick)
    data = landscape_data(name, chosen, progress=progress)
    options = dict(hidden=chosen["hidden"], weight_decay=chosen["weight_decay"], seed=chosen["seed"])
    if rebuild or not _is_complete(folder, chosen):
        with _lock(name, folder):
            if rebuild or not _is_complete(folder, chosen):
                _build(name, folder, chosen, data, options, progress)
    return Landscape(data["X"], data["y"], db=folder / "landscape.sqlite", **options), data


def _summary_ready(folder: Path, chosen: dict) -> bool:
    """Whether the folder holds a complete landscape and a summary of it that matches its checksums."""
    from hessview.landscape.summary import FORMAT

    if not _is_complete(folder, chosen):
        return False
    try:
        recorded = json.loads((folder / "meta.json").read_text()).get("summary") or {}
        return recorded.get("format") == FORMAT and all(
            file_sha256(folder / file) == recorded.get("sha256", {}).get(file) for file in SUMMARY_FILES
        )
    except (OSError, ValueError, AttributeError):
        return False


#: the files whose SHA-256 ``meta.json`` records for the explorer's summary
SUMMARY_FILES = ("landscape.sqlite", "explorer.json")


def prepare(name: str, *, quick: bool = False, progress: bool = True, rebuild: bool = False) -> Path:
    """Build landscape ``name`` and the explorer's summary of it where missing or stale; its folder.

    When both are cached and match the checksums in ``meta.json``, this reads three small files and
    imports nothing heavy.
    """
    chosen = settings(name, quick)
    folder = _folder(name, quick)
    if not rebuild and _summary_ready(folder, chosen):
        return folder
    landscape, data = load_landscape(name, quick=quick, progress=progress, rebuild=rebuild)
    try:
        with _lock(name, folder):
            if rebuild or not _summary_ready(folder, chosen):
                _write_summary(name, folder, landscape, data, progress)
    finally:
        landscape.close()
    return folder


def _write_summary(name: str, folder: Path, landscape, data: dict, progress: bool) -> None:
    """Compute what the explorer draws (every basin) into ``explorer.json``; record checksums in meta.json."""
    from hessview.landscape.summary import FORMAT, LandscapeSummary

    if progress:
        print(f"hessview: precomputing the explorer's view of the {name!r} landscape", flush=True)
    LandscapeSummary.compute(landscape, data["X_test"], data["y_test"]).save(folder / "explorer.json")
    meta = json.loads((folder / "meta.json").read_text())
    meta["summary"] = {
        "format": FORMAT,
        "sha256": {file: file_sha256(folder / file) for file in SUMMARY_FILES},
    }
    meta["display"] = {
        "feature_names": list(data["feature_names"]),
        "lattice_shape": None if data["lattice_shape"] is None else list(data["lattice_shape"]),
    }
    with atomic_path(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def load_summary(name: str, *, quick: bool = False, progress: bool = False):
    """Return ``(summary, display)`` of landscape ``name``: its LandscapeSummary and feature names/lattice.

    Built first where missing or stale (:func:`prepare`).
    """
    from hessview.landscape.summary import LandscapeSummary

    folder = prepare(name, quick=quick, progress=progress)
    display = json.loads((folder / "meta.json").read_text())["display"]
    shape = display["lattice_shape"]
    display = {
        "feature_names": display["feature_names"],
        "lattice_shape": None if shape is None else tuple(shape),
    }
    return LandscapeSummary.load(folder / "explorer.json"), display


def _build(name: str, folder: Path, chosen: dict, data: dict, options: dict, progress: bool) -> None:
    """Explore and connect one landscape into ``folder`` (its database renamed into place when complete)."""
    from hessview.landscape import Landscape

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    building = folder / ".building.sqlite"
    if progress:
        print(f"hessview: building the {name!r} energy landscape", flush=True)
    landscape = Landscape(data["X"], data["y"], db=building, **options)
    landscape.explore(
        chosen["n_steps"],
        temperature=chosen["temperature"],
        step_size=chosen["step_size"],
        progress=progress,
    )
    landscape.connect(max_attempts=chosen["max_attempts"], progress=progress)
    landscape.close()
    os.replace(building, folder / "landscape.sqlite")
    with atomic_path(folder / "meta.json") as tmp:
        tmp.write_text(json.dumps({"settings": chosen, "title": TITLES[name]}, indent=1))


def build(*, quick: bool = False, progress: bool = True, rebuild: bool = False) -> None:
    """Build (or find cached) every landscape of the app and the explorer's summary of it."""
    for name in LANDSCAPES:
        prepare(name, quick=quick, progress=progress, rebuild=rebuild)


HOW_TO_READ = [
    "<b>The tree</b> (disconnectivity graph): every line ending at the bottom is one <i>minimum</i> of the "
    "training loss, i.e. one way the network can be trained; its height is that minimum's loss (lower is "
    "better). Two lines join at the height of the lowest barrier (transition state) between them.",
    "<b>Click a minimum</b> (or pick a basin from the list). The minima that drain to the same bottom form a "
    "basin; the panels then describe that basin.",
    "<b>Feature relevance</b> (bars, summing to 1): how strongly each input drives the decisions of the "
    "networks in that basin, read off the weights that stay the same across its minima (conserved weights). "
    "A feature whose weights change from minimum to minimum, or are near zero, scores low.",
    "<b>Conserved weights</b>: the hidden units' input weights averaged over the basin's aligned minima.",
    "<b>Check it against what you know</b>: in the synthetic data only x1 and x4 decide the class; in the "
    "Fermi-Hubbard chain and the Ising lattice every site is equivalent by translation symmetry, so all "
    "sites should score alike (the Ising landscape, fitted to 160 configurations, shows how far a finite "
    "training set departs from that).",
]


def landscape_app(*, quick: bool | None = None, progress: bool = False):
    """The landscape app: every landscape in :class:`~hessview.widgets.landscape_explorer.LandscapeExplorer`.

    ``quick`` defaults to ``$HESSVIEW_LANDSCAPE_QUICK`` (set by ``hessview app landscape --quick``).
    The root widget has the CSS class ``hv-landscape``.
    """
    import ipywidgets as widgets

    from hessview.widgets.landscape_explorer import LandscapeExplorer

    if quick is None:
        quick = os.environ.get("HESSVIEW_LANDSCAPE_QUICK", "") not in ("", "0")
    intro = widgets.HTML(
        "<h3 style='margin:4px 0'>Energy landscapes of three small networks</h3>"
        "<div class='hv-explain'>Which inputs drive a network's decisions? Instead of one trained network, "
        "hessview samples many minima of the training loss over the weights (basin-hopping) and joins them "
        "by transition states (Niroomand &amp; Wales 2023). Losses are mean cross-entropy plus "
        "weight decay, in nats per training sample. Click a minimum (a line's lowest point) in a tree.</div>"
    )
    how_to = widgets.Accordion(
        children=[
            widgets.HTML(
                "<ol style='margin:2px 0 2px 18px;padding:0'>"
                + "".join(f"<li>{step}</li>" for step in HOW_TO_READ)
                + "</ol>"
            )
        ],
        selected_index=None,
    )
    how_to.set_title(0, "How to read this")
    how_to.add_class("hv-howto")
    children = [intro, how_to]
    for name in LANDSCAPES:
        summary, display = load_summary(name, quick=quick, progress=progress)  # computes nothing if cached
        explorer = LandscapeExplorer(summary, **display, title=TITLES[name])
        explorer.add_class(f"hv-landscape-{name}")
        children.append(explorer)
        if name != LANDSCAPES[-1]:
            children.append(widgets.HTML("<hr>"))
    note = " (quick build: fewer basin-hopping steps)" if quick else ""
    children.append(widgets.HTML(f"<div style='color:#666'>{html.escape(note)}</div>" if note else ""))
    app = widgets.VBox(children)
    app.add_class("hv-landscape")
    return app
