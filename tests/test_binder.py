"""The Binder environment (binder/) agrees with pyproject.toml and with itself."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def runtime_dependencies() -> dict[str, Requirement]:
    """The engine's dependencies and those of every extra the app needs (widgets, app, all)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = [*project["dependencies"], *extras["widgets"], *extras["app"], *extras["all"]]
    requirements = (Requirement(r) for r in names)
    return {canonicalize_name(r.name): r for r in requirements if canonicalize_name(r.name) != "hessview"}


def binder_pins() -> dict[str, Version]:
    pins = {}
    for line in (BINDER / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"not pinned: {line}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"pinned twice: {name}"
        pins[name] = Version(specifiers[0].version)
    return pins


def test_every_runtime_dependency_is_pinned_within_pyproject_ranges():
    pins = binder_pins()
    for name, requirement in runtime_dependencies().items():
        assert name in pins, f"binder/requirements.txt does not pin {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"binder pins {name}=={pins[name]} outside pyproject's {requirement}"
        )


def test_torch_is_the_cpu_build_from_the_cpu_index():
    text = (BINDER / "requirements.txt").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    assert binder_pins()["torch"].local == "cpu"


def test_widget_back_end_and_front_ends_match():
    pins = binder_pins()
    assert pins["ipywidgets"].major == 8
    assert pins["jupyterlab-widgets"].major == 3
    assert pins["widgetsnbextension"].major == 4


def test_pins_satisfy_each_others_declared_requirements():
    """Where the pinned version is the one installed here, its own requirements must accept the pins."""
    pins = binder_pins()
    checked = 0
    for name, version in pins.items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed.public != version.public:
            continue
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            other = canonicalize_name(requirement.name)
            if other in pins:
                checked += 1
                assert requirement.specifier.contains(pins[other], prereleases=True), (
                    f"{name}=={version} requires {requirement}, binder pins {other}=={pins[other]}"
                )
    assert checked > 0, "no pinned version is installed here: nothing was cross-checked"


def test_runtime_python_matches_pyproject():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert runtime.startswith("python-")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert Version(runtime.removeprefix("python-")) in SpecifierSet(project["requires-python"])


@pytest.mark.parametrize("script", ["postBuild", "start"])
def test_scripts_are_executable_and_share_the_cache_directory(script):
    path = BINDER / script
    assert os.access(path, os.X_OK), f"binder/{script} is not executable"
    assert ".hessview-cache" in path.read_text() and "HESSVIEW_CACHE_DIR" in path.read_text()


def test_post_build_installs_hessview_and_precomputes_every_demo():
    text = (BINDER / "postBuild").read_text()
    assert "pip install --no-deps -e ." in text
    assert "\nhessview build\n" in text  # no name: every demo (see hessview.app.cli)
