"""The ``hessview`` command: ``hessview app [NAME]`` serves the explorer with Voila; ``hessview build``.

``hessview app`` first builds any missing cache of the demo (with progress bars), then runs Voila on
the app notebook, bound to 127.0.0.1, and prints the address it serves.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from hessview._io import cache_dir

DEMOS = ("fermi-hubbard", "fermi-hubbard-window", "ising")
DEFAULT_PORT = 8866
EXECUTION_TIMEOUT_S = 600
APP_NOTEBOOK = "app.ipynb"


def app_notebook() -> Path:
    """Return the app notebook Voila serves.

    The repository's ``notebooks/app.ipynb`` when hessview runs from a checkout, else a copy shipped
    in the package, else a two-cell notebook written to the cache directory.
    """
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "notebooks" / APP_NOTEBOOK, package / "notebooks" / APP_NOTEBOOK):
        if candidate.is_file():
            return candidate
    import nbformat

    from hessview._io import atomic_path

    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# hessview explorer"),
            nbformat.v4.new_code_cell("from hessview.app.voila import demo_explorer\n\ndemo_explorer()"),
        ]
    )
    path = cache_dir("app") / APP_NOTEBOOK
    with atomic_path(path) as tmp:
        nbformat.write(notebook, str(tmp))
    return path


def free_port(start: int = DEFAULT_PORT, attempts: int = 50) -> int:
    """Return the first port from ``start`` on which 127.0.0.1 can listen."""
    for port in range(start, start + attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}..{start + attempts - 1}")


def voila_command(notebook: Path, port: int, *, open_browser: bool) -> list[str]:
    """Return the command line that serves ``notebook`` with Voila on 127.0.0.1:``port``."""
    command = [
        sys.executable,
        "-m",
        "voila",
        str(notebook),
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--Voila.port_retries=0",
        f"--VoilaExecutor.timeout={EXECUTION_TIMEOUT_S}",
        "--VoilaConfiguration.show_tracebacks=False",
    ]
    if not open_browser:
        command.append("--no-browser")
    return command


def build(names: list[str], *, rebuild: bool = False) -> None:
    """Build (or load, when present) the caches of the named demos, with progress bars."""
    from hessview.app.demos import load_demo

    for name in names:
        print(f"hessview: preparing the {name!r} demo", flush=True)
        load_demo(name, progress=True, rebuild=rebuild)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must lie in 1..65535, got {port}")
    return port


def parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    top = argparse.ArgumentParser(prog="hessview", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True)
    app = commands.add_parser("app", help="serve the interactive explorer with Voila")
    app.add_argument("name", nargs="?", default=DEMOS[0], choices=DEMOS, help="demo to show")
    app.add_argument(
        "--port",
        type=_port,
        default=None,
        help=f"port on 127.0.0.1 (default: the first free one from {DEFAULT_PORT})",
    )
    app.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    app.add_argument("--rebuild", action="store_true", help="rebuild the demo's caches first")
    make = commands.add_parser("build", help="only build the demos' caches")
    make.add_argument(  # no argparse choices: Python < 3.12 rejects an empty list with them
        "names", nargs="*", metavar="NAME", help=f"demos to build (default: all of {', '.join(DEMOS)})"
    )
    make.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the ``hessview`` command; returns the exit status."""
    command_line = parser()
    args = command_line.parse_args(argv)
    if args.command == "build":
        for name in args.names:
            if name not in DEMOS:
                command_line.error(
                    f"argument NAME: invalid choice: {name!r} (choose from {', '.join(DEMOS)})"
                )
        build(args.names or list(DEMOS), rebuild=args.rebuild)
        return 0
    build([args.name], rebuild=args.rebuild)
    port = args.port or free_port()
    command = voila_command(app_notebook(), port, open_browser=not args.no_browser)
    environment = dict(os.environ, HESSVIEW_DEMO=args.name)
    print(
        f"hessview: serving the {args.name!r} explorer at http://127.0.0.1:{port}/ (Ctrl+C to stop)",
        flush=True,
    )
    server = subprocess.Popen(command, env=environment)
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated CLI must not leave Voila running
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
