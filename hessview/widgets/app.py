"""The Voila app: an :class:`~hessview.widgets.Explorer` on one of hessview's cached demos.

The demo comes from, in order: the ``name`` argument, ``?demo=NAME`` in the page's URL (Voila
passes it to the kernel as ``$QUERY_STRING``), ``$HESSVIEW_DEMO`` (set by ``hessview app NAME``),
then ``"fermi-hubbard"``. Nothing is trained at render time: ``load_demo`` reads the caches built
by ``hessview build`` (Binder's postBuild runs it).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

from hessview.widgets.explorer import Explorer

DEFAULT_DEMO = "fermi-hubbard"


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


def demo_explorer(name: str | None = None, **kwargs) -> Explorer:
    """Load a cached demo (building it on first use) and return its explorer.

    ``kwargs`` go to :class:`~hessview.widgets.Explorer` (e.g. ``k``).
    """
    from hessview.demos import load_demo

    demo = load_demo(demo_name(name), progress=False)
    options = dict(
        x=demo.x,
        x_label=demo.x_label,
        train_x=demo.train_x,
        render=demo.render,
        title=demo.title,
        class_names=getattr(demo, "class_names", None),
    )
    options.update(kwargs)
    return Explorer(demo.toolbox, demo.X_test, demo.y_test, **options)
