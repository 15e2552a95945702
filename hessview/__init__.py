"""hessview: a Hessian engine and Jupyter widgets for reliable and interpretable ML in physics.

The compute core (``HessianToolbox``, ``Landscape``, ``hessview.datasets``, ``hessview.models``) knows
nothing of widgets; the widgets (``Explorer``, ``LandscapeExplorer``) are imported lazily so that the core
works without a browser front end.
"""

from hessview.toolbox import HessianToolbox

__all__ = ["HessianToolbox", "Explorer", "Landscape", "LandscapeExplorer"]
__version__ = "0.1.0"

_LAZY = {
    "Explorer": "hessview.widgets",
    "LandscapeExplorer": "hessview.widgets.landscape_explorer",
    "Landscape": "hessview.landscape",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hessview' has no attribute {name!r}")
