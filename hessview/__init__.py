"""hessview: a Hessian engine and Jupyter widgets for reliable and interpretable ML in physics.

The compute core (``HessianToolbox``, ``Landscape``, ``hessview.datasets``, ``hessview.models``) knows
nothing of widgets; the widgets (``Explorer``, ``LandscapeExplorer``) are imported lazily so that the core
works without a browser front end.
"""

from hessview.hessian import CurvatureTooLargeError
from hessview.toolbox import HessianToolbox, NotStationaryWarning

__all__ = [
    "CurvatureTooLargeError",
    "Explorer",
    "HessianToolbox",
    "Landscape",
    "LandscapeExplorer",
    "NotStationaryWarning",
]
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
