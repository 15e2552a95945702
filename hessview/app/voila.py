"""The Voila app: an :class:`~hessview.widgets.Explorer` on one of hessview's cached demos.

The demo comes from, in order: the ``name`` argument, ``?demo=NAME`` in the page's URL (Voila
passes it to the kernel as ``$QUERY_STRING``), ``$HESSVIEW_DEMO`` (set by ``hessview app NAME``),
then ``"fermi-hubbard"``. Nothing is trained at render time: ``load_demo`` reads the caches built
by ``hessview build`` (Binder's postBuild runs it).

A restart of the app reads one file: the explorer's precomputed results saved together with the
training inputs and labels the gallery shows, keyed by a digest of the demo's cached files and
verified by its checksum. The demo itself (its model, toolbox and torch) is loaded only when that
file is missing; a damaged one (truncated, edited, swapped in) is reported in one line and computed
again, and a cache that cannot be written keeps the results in memory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from hessview._io import CacheError, cache_dir, file_lock, file_sha256, load_npz, logger
from hessview.widgets.explorer import Explorer
from hessview.widgets.results import ExplorerResults

DEFAULT_DEMO = "fermi-hubbard"
RESULTS_VERSION = "5"  # 3: measurement fields; 4: checksummed files (hessview._io.save_npz); 5: stability
APP_FIELDS = ("title", "x_label", "render", "class_names")  # what the app shows besides the results


def demo_name(name: str | None = None) -> str:
    """Return the demo to show: ``name``, else ``?demo=`` in the URL, else ``$HESSVIEW_DEMO``.

    >>> os.environ.pop("QUERY_STRING", None) and None
    >>> os.environ["HESSVIEW_DEMO"] = "ising"
    >>> demo_name(), demo_name("fermi-hubbard")
    ('ising', 'fermi-hubbard')
    >>> os.environ["QUERY_STRING"] = "demo=fermi-hubbard&x=1"
    >>> demo_name()
    'fermi-hubbard'
    >>> del os.environ["QUERY_STRING"], os.environ["HESSVIEW_DEMO"]
    """
    if name:
        return name
    from_url = parse_qs(os.environ.get("QUERY_STRING", "")).get("demo")
    return from_url[0] if from_url else os.environ.get("HESSVIEW_DEMO") or DEFAULT_DEMO


def demo_fingerprint(name: str) -> str | None:
    """SHA-256 of a built demo's cached files (names and bytes), or None when it is not built.

    A demo's folder (``cache_dir("demos") / name``) is renamed into place complete (see
    :func:`hessview.app.demos.load_demo`); it is read under the demo's shared swap lock, so a rebuild
    in another process is never seen half-way, and a running rebuild does not hold the app up.
    Hidden files are unfinished atomic writes.
    """
    folder = cache_dir("demos") / name
    with file_lock(folder.parent / f".{name}.swap.lock", shared=True):  # see demos.demo_locks
        if not (folder / "meta.json").is_file():
            return None
        digest = hashlib.sha256()
        try:
            for path in sorted(folder.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    digest.update(path.name.encode() + b"\0" + file_sha256(path).encode())
        except OSError:  # unreadable: load_demo reports and rebuilds it
            return None
    return digest.hexdigest()


def results_key(name: str, n_resamples: int, seed: int) -> str | None:
    """The cache key of a demo's explorer results, or None when the demo is not built yet.

    It hashes the demo's cached files (model, toolbox, data, settings) and the resampling settings, so
    a rebuilt demo never reads stale results; the results file stores it and is refused under another.
    """
    fingerprint = demo_fingerprint(name)
    if fingerprint is None:
        return None
    return hashlib.sha256(f"{RESULTS_VERSION}/{fingerprint}/{n_resamples}/{seed}".encode()).hexdigest()


def results_path(name: str, n_resamples: int, seed: int) -> Path | None:
    """Cache file of a demo's explorer results (named by :func:`results_key`), or None when not built."""
    key = results_key(name, n_resamples, seed)
    return None if key is None else cache_dir("explorer") / f"{name}-{key[:20]}.npz"


def _read_cached(path: Path, key: str) -> tuple[ExplorerResults, np.ndarray, dict]:
    """Results, training inputs and app fields saved by :func:`demo_explorer`; CacheError if not usable."""
    arrays = load_npz(path, key=key, remedy="it is computed again on the next start")
    try:
        results = ExplorerResults.from_arrays(arrays, source=path)
        X_train, fields = arrays["X_train"], json.loads(str(arrays["app_fields"]))
    except Exception as error:
        raise CacheError(path, f"unusable ({type(error).__name__}: {error})") from error
    if not isinstance(fields, dict) or set(fields) != set(APP_FIELDS) or len(X_train) != results.n_train:
        raise CacheError(path, "does not hold this app's fields and training inputs")
    return results, X_train, fields


def renderer_spec(demo, X_train: np.ndarray):
    """How the gallery draws a demo's training inputs: Fock states as density profiles, else ``demo.render``.

    A demo whose inputs are the ``C(L, L/2)`` Fock amplitudes of a half-filled chain, scaled by one
    global min-max scaler (the Fermi-Hubbard demos), gets a :class:`~hessview.widgets.renderers.FockRenderer`
    spec that undoes the scaling; any other demo keeps its own ``render``.

    >>> import types
    >>> scaler = types.SimpleNamespace(per_feature=False, min_=np.asarray(0.0), scale_=np.asarray(2.0))
    >>> renderer_spec(types.SimpleNamespace(scaler=scaler, render="1d"), np.zeros((3, 1, 20)))
    {'kind': 'fock', 'L': 6, 'N': 3, 'offset': 0.0, 'scale': 2.0}
    >>> renderer_spec(types.SimpleNamespace(scaler=None, render="2d"), np.zeros((3, 16, 16)))
    '2d'
    """
    scaler = getattr(demo, "scaler", None)
    n_features = int(np.prod(X_train.shape[1:]))
    if scaler is not None and not scaler.per_feature:
        for L in range(2, 21, 2):
            if math.comb(L, L // 2) == n_features:
                offset, scale = float(np.ravel(scaler.min_)[0]), float(np.ravel(scaler.scale_)[0])
                return {"kind": "fock", "L": L, "N": L // 2, "offset": offset, "scale": scale}
    return demo.render


def _compute(name: str, n_resamples: int, seed: int) -> tuple[ExplorerResults, np.ndarray, dict]:
    """Load (or build) the demo, query its toolbox once for every test point, and cache the answer."""
    from hessview.app.demos import load_demo

    demo = load_demo(name, progress=False)
    results = ExplorerResults.from_toolbox(
        demo.toolbox,
        demo.X_test,
        demo.y_test,
        x=demo.x,
        train_x=demo.train_x,
        n_resamples=n_resamples,
        seed=seed,
    )
    X_train = demo.toolbox.X_train
    X_train = X_train.detach().cpu().numpy() if hasattr(X_train, "detach") else np.asarray(X_train)
    fields = {field: getattr(demo, field, None) for field in APP_FIELDS}
    fields["render"] = renderer_spec(demo, X_train)
    key = results_key(name, n_resamples, seed)  # after load_demo: a (re)build changes the files
    if key is not None:
        path = results_path(name, n_resamples, seed)
        try:
            results.save(path, key=key, X_train=X_train, app_fields=np.array(json.dumps(fields)))
        except OSError as error:
            logger.warning("hessview: cannot write the explorer cache %s (%s); results not kept", path, error)
    return results, X_train, fields


def demo_explorer(name: str | None = None, *, n_resamples: int = 200, seed: int = 0, **kwargs) -> Explorer:
    """Return the explorer of a cached demo (building the demo on first use).

    When the explorer's results for this build of the demo are cached (see :func:`results_path`),
    nothing else is read: no model, no toolbox, no torch. ``kwargs`` go to
    :class:`~hessview.widgets.Explorer` (e.g. ``k``).
    """
    name = demo_name(name)
    key, cached = results_key(name, n_resamples, seed), None
    if key is not None:
        try:
            cached = _read_cached(results_path(name, n_resamples, seed), key)
        except CacheError as error:
            if error.kind != "missing":
                logger.warning(
                    "hessview: cached explorer results not used: %s; computing them again", error.detail
                )
    results, X_train, fields = cached or _compute(name, n_resamples, seed)
    options = dict(
        x=results.x,
        x_label=fields["x_label"],
        train_x=results.train_x,
        render=fields["render"],
        title=fields["title"],
        class_names=fields["class_names"],
        results=results,
        X_train=X_train,
    )
    options["retrain"] = functools.partial(_retrain_source, name)  # loaded on the first click only
    options.update(kwargs)
    return Explorer(None, None, **options)


def _retrain_source(name: str):
    """The demo's toolbox and test set, for the explorer's "retrain without the top-k" action."""
    from hessview.app.demos import load_demo

    demo = load_demo(name, progress=False)
    return demo.toolbox, demo.X_test, demo.y_test
