"""Build the demos' caches before their app notebooks run under ``pytest --nbval-lax``.

The app notebooks only read caches (Voila must never train at render time); building them here, in
the pytest process, shows progress and reports a failed build as such instead of a cell timeout.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

# The landscape app notebook builds its landscapes in quick mode here (seconds instead of a minute);
# only hessview.app.landscape_demo reads this variable.
os.environ.setdefault("HESSVIEW_LANDSCAPE_QUICK", "1")

APP_NOTEBOOK_DEMOS = {"app.ipynb": None, "app-ising.ipynb": "ising"}  # None: the app's default


@functools.cache
def _build(name: str) -> None:
    from hessview.app.demos import load_demo

    load_demo(name, progress=True)


def pytest_runtest_setup(item):
    """Before the first cell of an app notebook, make sure its demo is cached."""
    notebook = Path(str(item.fspath)).name
    if notebook in APP_NOTEBOOK_DEMOS:
        from hessview.app.voila import demo_name

        _build(demo_name(APP_NOTEBOOK_DEMOS[notebook]))
