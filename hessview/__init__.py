"""hessview: a Hessian engine and Jupyter widgets for reliable and interpretable ML in physics.

Layout: ``hessview.engine`` (the Hessian engine, no widget dependency), ``hessview.widgets`` (Jupyter
widgets), ``hessview.app`` (demos, the Voila entry point, the CLI), beside ``hessview.datasets``,
``hessview.models`` and ``hessview.landscape``. Every public name and subpackage is imported on first use:
the engine works without a browser front end, and the app, which reads precomputed results, starts without
importing torch. The modules that lived at the top level before the engine had its own subpackage
(``hessview.toolbox``, ``hessview.hessian``, ``hessview.demos``, ``hessview.cli``, ...) are still importable
under their old names: they are the same module objects as their new homes.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__all__ = [
    "ApproximationWarning",
    "CurvatureTooLargeError",
    "DampingWarning",
    "Explorer",
    "HessianToolbox",
    "HessviewWarning",
    "Landscape",
    "LandscapeExplorer",
    "NotStationaryWarning",
]
__version__ = "0.1.0"

_LAZY = {
    "CurvatureTooLargeError": "hessview.engine.hessian",
    "HessianToolbox": "hessview.engine.toolbox",
    "NotStationaryWarning": "hessview.engine.errors",
    "HessviewWarning": "hessview.engine.errors",
    "DampingWarning": "hessview.engine.errors",
    "ApproximationWarning": "hessview.engine.errors",
    "Explorer": "hessview.widgets",
    "LandscapeExplorer": "hessview.widgets.landscape_explorer",
    "Landscape": "hessview.landscape",
}


_SUBPACKAGES = ("app", "datasets", "engine", "evaluation", "landscape", "models", "widgets")

# old module path -> where the module lives now
_MOVED = {
    **{
        f"hessview.{name}": f"hessview.engine.{name}"
        for name in (
            "blocks",
            "cg",
            "distributed",
            "extrapolation",
            "ggn",
            "hessian",
            "losses",
            "lowrank",
            "params",
            "screening",
            "spectrum",
            "toolbox",
            "uncertainty",
            "_validation",
        )
    },
    "hessview.demos": "hessview.app.demos",
    "hessview.cli": "hessview.app.cli",
    "hessview.widgets.app": "hessview.app.voila",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import a moved module under its old name as the very same module object."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())


_EXTRAS = {"bqplot": "widgets", "ipywidgets": "widgets", "traitlets": "widgets", "voila": "app"}


def _import(module: str):
    """Import ``module``; a missing optional dependency says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        extra = _EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        raise ModuleNotFoundError(
            f"{module} needs {err.name}, which the engine alone does not install: "
            f'pip install "hessview[{extra}]"',
            name=err.name,
        ) from err


def __getattr__(name):
    if name in _LAZY:
        return getattr(_import(_LAZY[name]), name)
    if name in _SUBPACKAGES or f"hessview.{name}" in _MOVED:
        return _import(f"hessview.{name}")
    raise AttributeError(f"module 'hessview' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
