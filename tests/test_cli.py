"""The ``hessview`` command: argument checking, the Voila command line, cache building, serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

import hessview.app.cli as cli

ROOT = Path(__file__).resolve().parents[1]
DEMO = os.environ.get("HESSVIEW_DEMO", "fermi-hubbard")  # served by the end-to-end test below


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["app", "no-such-demo"], "invalid choice"),
        (["app", "--port", "0"], "port must lie in 1..65535"),
        (["app", "--port", "http"], "port must be an integer"),
        (["build", "mnist"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("open_browser", [False, True])
def test_voila_command_is_understood_by_voila(open_browser, tmp_path):
    from voila.app import Voila

    command = cli.voila_command(tmp_path / "app.ipynb", 9123, open_browser=open_browser)
    assert command[:3] == [sys.executable, "-m", "voila"]
    app = Voila()
    app.parse_command_line(command[3:])
    config = app.config
    assert config.Voila.ip == "127.0.0.1"
    assert config.Voila.port == 9123 and config.Voila.port_retries == 0
    assert 60 <= config.VoilaExecutor.timeout < 3600
    assert config.VoilaConfiguration.show_tracebacks is False
    if open_browser:
        assert "open_browser" not in config.Voila and Voila().open_browser is True
    else:
        assert config.Voila.open_browser is False
    assert app.extra_args == [str(tmp_path / "app.ipynb")]


def test_free_port_skips_a_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port = cli.free_port(taken)
        assert port != taken
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_app_notebook_is_the_repository_notebook():
    assert cli.app_notebook() == ROOT / "notebooks" / "app.ipynb"


def test_app_notebook_written_when_hessview_is_installed_without_notebooks(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "hessview" / "cli.py"))
    monkeypatch.setenv("HESSVIEW_CACHE_DIR", str(tmp_path / "cache"))
    path = cli.app_notebook()
    assert path.parent == tmp_path / "cache" / "app"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert any("demo_explorer()" in cell.source for cell in notebook.cells)


def test_build_loads_every_demo_with_progress(monkeypatch):
    import hessview.app.demos
    import hessview.app.landscape_demo

    calls = []
    monkeypatch.setattr(
        hessview.app.demos,
        "load_demo",
        lambda name, *, progress=True, rebuild=False, retrain=False: calls.append(
            (name, progress, rebuild, retrain)
        ),
    )
    monkeypatch.setattr(
        hessview.app.landscape_demo,
        "build",
        lambda *, quick=False, progress=True, rebuild=False: calls.append(("landscape", progress, rebuild)),
    )
    assert cli.main(["build"]) == 0
    assert calls == [(name, True, False, False) for name in cli.DEMOS] + [("landscape", True, False)]
    calls.clear()
    assert cli.main(["build", "ising", "--rebuild"]) == 0
    assert calls == [("ising", True, True, False)]
    calls.clear()
    monkeypatch.setattr(hessview.app.demos, "compare_with_shipped", lambda demo: {"same_prediction": 1.0})
    assert cli.main(["build", "fermi-hubbard", "--retrain"]) == 0
    assert calls == [("fermi-hubbard", True, False, True)]


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port``, read from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A = LISTEN
                if len(address) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    found.add(address)
    return found


@pytest.fixture(scope="module")
def demo_cache(request):
    if DEMO == "fermi-hubbard":  # built once per session, its (true) warnings asserted there
        return request.getfixturevalue("fermi_hubbard_demo")
    from hessview.app.demos import load_demo

    return load_demo(DEMO, progress=False)


def test_app_serves_the_explorer_on_localhost(demo_cache):
    port = cli.free_port(18866)
    server = subprocess.Popen(
        [sys.executable, "-m", "hessview.app.cli", "app", DEMO, "--no-browser", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])),
    )
    try:
        lines = [server.stdout.readline() for _ in range(2)]  # "preparing ...", then "serving ..."
        assert f"serving the {DEMO!r} explorer at http://127.0.0.1:{port}/" in lines[1]
        deadline, page = time.monotonic() + 120, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as response:
                    page = response.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert page is not None, "Voila did not answer"
        assert "application/vnd.jupyter.widget-view+json" in page  # the explorer was displayed
        assert "There was an error when executing cell" not in page
        assert listening_addresses(port) == {"127.0.0.1"}
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert listening_addresses(port) == set(), "Voila outlived the hessview command"
