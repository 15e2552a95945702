"""The package layout: an engine without widget dependencies, old import paths kept."""

import subprocess
import sys

import pytest


def test_engine_imports_no_widget_or_app_package():
    code = (
        "import sys, hessview.engine, hessview.engine.toolbox, hessview.engine.distributed;"
        "from hessview import HessianToolbox;"
        "widgets = {'ipywidgets', 'bqplot', 'voila', 'traitlets'};"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in widgets"
        " or m.startswith('hessview.widgets') or m.startswith('hessview.app'));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("hessview.toolbox", "hessview.engine.toolbox"),
        ("hessview.hessian", "hessview.engine.hessian"),
        ("hessview.distributed", "hessview.engine.distributed"),
        ("hessview.demos", "hessview.app.demos"),
        ("hessview.cli", "hessview.app.cli"),
        ("hessview.widgets.app", "hessview.app.voila"),
    ],
)
def test_old_module_paths_are_the_new_modules(old, new):
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)


def test_subpackages_are_lazy_attributes():
    code = (
        "import sys, hessview;"
        "assert 'hessview.datasets' not in sys.modules;"
        "assert callable(hessview.datasets.fermi_hubbard_chain);"
        "assert hessview.models.CNN1D_tiny_ED and hessview.landscape.Landscape;"
        "assert hessview.widgets.Explorer and hessview.demos.load_demo and hessview.engine.HessianToolbox;"
        "from hessview.toolbox import NotStationaryWarning;"
        "assert NotStationaryWarning is hessview.NotStationaryWarning;"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_a_missing_widget_dependency_names_the_extra():
    code = (
        "import sys; sys.modules['bqplot'] = None\n"  # as if only the engine were installed
        "import hessview\n"
        "try:\n    hessview.Explorer\nexcept ModuleNotFoundError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 'pip install "hessview[widgets]"' in out.stdout, out.stderr
