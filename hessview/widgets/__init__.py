"""Jupyter widgets around the Hessian engine.

``Explorer`` shows, for a clicked test point, its most influential training points, resampling
uncertainty and extrapolation flag. ``LandscapeExplorer`` lives in
``hessview.widgets.landscape_explorer`` and is imported only when asked for.
"""

from hessview.widgets.explorer import Explorer
from hessview.widgets.renderers import (
    CallableRenderer,
    FockRenderer,
    HtmlRenderer,
    LatticeRenderer,
    LineRenderer,
    Renderer,
)
from hessview.widgets.results import ExplorerResults
from hessview.widgets.state import ExplorerState

__all__ = [
    "CallableRenderer",
    "Explorer",
    "ExplorerResults",
    "ExplorerState",
    "FockRenderer",
    "HtmlRenderer",
    "LatticeRenderer",
    "LineRenderer",
    "Renderer",
]
