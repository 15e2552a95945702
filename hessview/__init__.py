"""hessview: a Hessian engine and Jupyter widgets for reliable and interpretable ML in physics.

The compute core (``HessianToolbox``, ``Landscape``, ``hessview.datasets``, ``hessview.models``) knows
nothing of widgets. Every public name is imported on first use: the core works without a browser front
end, and the app, which reads precomputed results, starts without importing torch.
"""

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
    "CurvatureTooLargeError": "hessview.hessian",
    "HessianToolbox": "hessview.toolbox",
    "NotStationaryWarning": "hessview.toolbox",
    "Explorer": "hessview.widgets",
    "LandscapeExplorer": "hessview.widgets.landscape_explorer",
    "Landscape": "hessview.landscape",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hessview' has no attribute {name!r}")
