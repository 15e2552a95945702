"""Energy-landscape interpretability of small networks (Niroomand & Wales, arXiv:2304.02381).

Basin-hopping over a tanh network's weights, a SQLite database of minima and transition states,
disconnectivity graphs, monotonic sequence basins, conserved weights and input-feature relevance.
:class:`LandscapeSummary` holds what :class:`~hessview.widgets.landscape_explorer.LandscapeExplorer`
draws, saved to JSON, so that an app can show a landscape without torch or SciPy.

Every name is imported on first use: ``hessview.landscape.summary`` needs numpy only, and
``from hessview.landscape import Landscape`` imports torch when it runs.
"""

import importlib

_LAZY = {
    "ConservedWeights": "hessview.landscape.conserved",
    "DatabaseError": "hessview.landscape.database",
    "DatabaseInUseError": "hessview.landscape.database",
    "DisconnectivityGraph": "hessview.landscape.disconnectivity",
    "Landscape": "hessview.landscape.landscape",
    "LandscapeSummary": "hessview.landscape.summary",
    "Minimum": "hessview.landscape.database",
    "Superbasin": "hessview.landscape.disconnectivity",
    "TransitionState": "hessview.landscape.database",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
