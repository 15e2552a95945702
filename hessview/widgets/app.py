"""The Voila app: an :class:`~hessview.widgets.Explorer` on one of hessview's cached demos.

The demo comes from, in order: the ``name`` argument, ``?demo=NAME`` in the page's URL (Voila
passes it to the kernel as ``$QUERY_STRING``), ``$HESSVIEW_DEMO`` (set by ``hessview app NAME``),
then ``"fermi-hubbard"``. Nothing is trained at render time: ``load_demo`` reads the caches built
by ``hessview build`` (Binder's postBuild runs it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np

from hessview._io import cache_dir
from hessview.widgets.explorer import Explorer
from hessview.widgets.results import ExplorerResults

DEFAULT_DEMO = "fermi-hubbard"
RESULTS_VERSION = "1"


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


def _array_bytes(value) -> bytes:
    if value is None:
        return b"none"
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value).tobytes()


def results_path(name: str, demo, n_resamples: int, seed: int) -> Path:
    """Cache file of a demo's :class:`ExplorerResults`, keyed by everything they depend on.

    The key hashes the fitted parameters, the training data fingerprint, the test set, the
    control parameters and the resampling settings, so a rebuilt demo never reads stale results.
    """
    digest = hashlib.sha256(RESULTS_VERSION.encode())
    digest.update(demo.toolbox.data_fingerprint().encode())
    for value in (demo.toolbox.theta, demo.X_test, demo.y_test, demo.x, demo.train_x):
        digest.update(_array_bytes(value))
    digest.update(f"{n_resamples}/{seed}".encode())
    return cache_dir("explorer") / f"{name}-{digest.hexdigest()[:20]}.npz"


def demo_results(name: str, demo, *, n_resamples: int = 200, seed: int = 0) -> ExplorerResults:
    """Return a demo's precomputed explorer results, from the cache when present."""
    path = results_path(name, demo, n_resamples, seed)
    if path.exists():
        try:
            return ExplorerResults.load(path)
        except (OSError, ValueError):
            pass  # unreadable or from an older layout: compute again below
    results = ExplorerResults.from_toolbox(
        demo.toolbox,
        demo.X_test,
        demo.y_test,
        x=demo.x,
        train_x=demo.train_x,
        n_resamples=n_resamples,
        seed=seed,
    )
    results.save(path)
    return results


def demo_explorer(name: str | None = None, *, n_resamples: int = 200, seed: int = 0, **kwargs) -> Explorer:
    """Load a cached demo (building it on first use) and return its explorer.

    The explorer's precomputed results are cached too (see :func:`results_path`), so a restart
    of the app only reads files. ``kwargs`` go to :class:`~hessview.widgets.Explorer` (e.g. ``k``).
    """
    from hessview.demos import load_demo

    name = demo_name(name)
    demo = load_demo(name, progress=False)
    options = dict(
        x=demo.x,
        x_label=demo.x_label,
        train_x=demo.train_x,
        render=demo.render,
        title=demo.title,
        class_names=getattr(demo, "class_names", None),
        results=demo_results(name, demo, n_resamples=n_resamples, seed=seed),
    )
    options.update(kwargs)
    return Explorer(demo.toolbox, demo.X_test, demo.y_test, **options)
