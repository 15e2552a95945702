"""The ``hessview`` command: ``hessview app [NAME]`` serves the explorer with Voila; ``hessview build``.

``hessview app`` first checks that the port is free, builds any missing or damaged cache of the demo
(with progress bars), then runs Voila on the app notebook, bound to 127.0.0.1, and prints the address
it serves. ``hessview app landscape`` serves the energy-landscape app; ``hessview app --toolbox PATH
--model MODULE:CLASS`` serves your own saved toolbox and model in the same explorer (see
:mod:`hessview.app.own`). Voila and its kernels get ``$HESSVIEW_CACHE_DIR`` as the absolute folder this
command used (:func:`hessview._io.cache_environment`), so the kernel reads the caches just built.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from hessview._io import cache_dir, cache_environment

DEMOS = ("fermi-hubbard", "fermi-hubbard-window", "ising")
LANDSCAPE = "landscape"
APPS = (*DEMOS, LANDSCAPE)
DEFAULT_PORT = 8866
EXECUTION_TIMEOUT_S = 600
APP_NOTEBOOK = "app.ipynb"
LANDSCAPE_NOTEBOOK = "app-landscape.ipynb"
OWN_MODEL_NOTEBOOK = "app-own-model.ipynb"
#: What each app notebook runs, for the copy written when hessview is installed without its notebooks.
NOTEBOOK_CODE = {
    APP_NOTEBOOK: ("hessview explorer", "from hessview.app.voila import demo_explorer\n\ndemo_explorer()"),
    LANDSCAPE_NOTEBOOK: (
        "hessview energy landscapes",
        "from hessview.app.landscape_demo import landscape_app\n\nlandscape_app()",
    ),
    OWN_MODEL_NOTEBOOK: (
        "hessview: your own model",
        "from hessview.app.own import own_explorer\n\nown_explorer()",
    ),
}


def app_notebook(name: str = APP_NOTEBOOK) -> Path:
    """Return the app notebook ``name`` Voila serves (``app.ipynb`` by default).

    The repository's ``notebooks/NAME`` when hessview runs from a checkout, else a copy shipped in
    the package, else a two-cell notebook written to the cache directory.
    """
    if name not in NOTEBOOK_CODE:
        raise ValueError(f"unknown app notebook {name!r}; choose one of {sorted(NOTEBOOK_CODE)}")
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "notebooks" / name, package / "notebooks" / name):
        if candidate.is_file():
            return candidate
    import nbformat

    from hessview._io import atomic_path

    heading, code = NOTEBOOK_CODE[name]
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(f"# {heading}"), nbformat.v4.new_code_cell(code)]
    )
    path = cache_dir("app") / name
    with atomic_path(path) as tmp:
        nbformat.write(notebook, str(tmp))
    return path


def free_port(start: int = DEFAULT_PORT, attempts: int = 50) -> int:
    """Return the first port from ``start`` on which 127.0.0.1 can listen."""
    for port in range(start, start + attempts):
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {start}..{start + attempts - 1}")


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1 can listen on ``port`` now (a bind test, as Voila will do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_in_use(port: int) -> int:
    print(
        f"hessview: error: port {port} on 127.0.0.1 is in use; stop what listens there, choose another "
        "with --port PORT, or leave out --port to take the first free one",
        file=sys.stderr,
        flush=True,
    )
    return 2


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


def build(names: list[str], *, rebuild: bool = False, retrain: bool = False, quick: bool = False) -> None:
    """Build (or load, when present) the caches of the named demos (and ``landscape``), with progress bars.

    With ``retrain`` every model is trained from scratch instead of loaded from the shipped weights,
    and how closely it reproduces them is printed (:func:`hessview.app.demos.compare_with_shipped`).
    """
    for name in names:
        if name == LANDSCAPE:  # nothing to retrain: the landscapes are sampled, not shipped
            # cached and intact, this reads three small files and imports neither torch nor SciPy
            from hessview.app.landscape_demo import build as build_landscapes

            print("hessview: preparing the energy landscapes", flush=True)
            build_landscapes(quick=quick, progress=True, rebuild=rebuild)
            continue
        from hessview.app.demos import compare_with_shipped, load_demo
        from hessview.models.shipped import shipped_record

        print(f"hessview: {'retraining' if retrain else 'preparing'} the {name!r} demo", flush=True)
        demo = load_demo(name, progress=True, rebuild=rebuild, retrain=retrain)
        if not retrain:
            continue
        if shipped_record(name) is None:
            print(f"hessview: no shipped weights of {name!r} to compare with", flush=True)
            continue
        try:
            comparison = compare_with_shipped(demo)
        except ValueError as error:
            print(f"hessview: {error}", flush=True)
            continue
        print(f"hessview: {name!r} retrained vs shipped weights:", flush=True)
        for key, value in comparison.items():
            print(f"  {key}: {value:.3g}", flush=True)


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
    app = commands.add_parser(
        "app",
        help="serve the interactive explorer with Voila",
        description="Serve a demo (default: fermi-hubbard), the energy-landscape app (landscape), or your "
        "own model (--toolbox PATH --model MODULE:CLASS) with Voila on 127.0.0.1.",
    )
    app.add_argument("name", nargs="?", default=None, choices=APPS, help="demo to show")
    app.add_argument(
        "--port",
        type=_port,
        default=None,
        help=f"port on 127.0.0.1 (default: the first free one from {DEFAULT_PORT})",
    )
    app.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    app.add_argument("--rebuild", action="store_true", help="rebuild the demo's caches first")
    app.add_argument(
        "--quick",
        action="store_true",
        help="landscape: build smaller landscapes (seconds instead of a minute)",
    )
    own = app.add_argument_group("your own model")
    own.add_argument("--toolbox", metavar="PATH", help="a toolbox file written by tb.save(PATH)")
    own.add_argument(
        "--model",
        metavar="MODULE:CLASS",
        help="your model class, importable from the current folder and built without arguments; its "
        "weights come from the toolbox file (or --weights) and must match the toolbox's fingerprint",
    )
    own.add_argument(
        "--data",
        metavar="PATH",
        help="optional test set (.npz): X_test and any of y_test, x, train_x, x_label, class_names, title",
    )
    own.add_argument("--weights", metavar="PATH", help="optional state dict (.safetensors) of the model")
    make = commands.add_parser("build", help="only build the demos' caches")
    make.add_argument(  # no argparse choices: Python < 3.12 rejects an empty list with them
        "names", nargs="*", metavar="NAME", help=f"demos to build (default: all of {', '.join(APPS)})"
    )
    make.add_argument("--rebuild", action="store_true", help="rebuild even if cached")
    make.add_argument(
        "--retrain",
        action="store_true",
        help="train the models from scratch instead of loading the shipped weights, and compare the two",
    )
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the ``hessview`` command; returns the exit status."""
    command_line = parser()
    args = command_line.parse_args(argv)
    if args.command == "build":
        for name in args.names:
            if name not in APPS:
                command_line.error(f"argument NAME: invalid choice: {name!r} (choose from {', '.join(APPS)})")
        build(args.names or list(APPS), rebuild=args.rebuild, retrain=args.retrain)
        return 0
    own_model = args.toolbox is not None or args.model is not None
    if own_model:
        if args.name is not None:
            command_line.error(f"give either a demo name ({args.name}) or --toolbox/--model, not both")
        if args.toolbox is None or args.model is None:
            command_line.error("--toolbox and --model go together (your toolbox file and MODULE:CLASS)")
    elif args.data is not None or args.weights is not None:
        command_line.error("--data and --weights need --toolbox and --model")
    if args.quick and args.name != LANDSCAPE:
        command_line.error("--quick applies to the landscape app only")
    if args.port is not None and not port_is_free(args.port):  # before a build that may take minutes
        return _port_in_use(args.port)
    # the kernel runs in the notebook's folder: hand it the cache folder resolved here (absolute)
    environment = cache_environment()
    if own_model:
        notebook, what, environment = _prepare_own_model(args, environment)
    elif args.name == LANDSCAPE:
        build([LANDSCAPE], rebuild=args.rebuild, quick=args.quick)
        notebook, what = app_notebook(LANDSCAPE_NOTEBOOK), "landscape app"
        environment["HESSVIEW_LANDSCAPE_QUICK"] = "1" if args.quick else ""
    else:
        name = args.name or DEMOS[0]
        build([name], rebuild=args.rebuild)
        notebook, what = app_notebook(), f"{name!r} explorer"
        environment["HESSVIEW_DEMO"] = name
    port = args.port or free_port()
    if not port_is_free(port):  # taken while the caches were built
        return _port_in_use(port)
    command = voila_command(notebook, port, open_browser=not args.no_browser)
    print(f"hessview: serving the {what} at http://127.0.0.1:{port}/ (Ctrl+C to stop)", flush=True)
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


def _prepare_own_model(args, environment: dict) -> tuple[Path, str, dict]:
    """Check the user's files, compute the explorer's results once; the notebook and its environment."""
    from hessview.app.own import prepare

    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)  # MODULE:CLASS is importable from the current folder, here and in Voila
    paths = {
        name: os.path.abspath(value) if value is not None else None
        for name, value in (("toolbox", args.toolbox), ("data", args.data), ("weights", args.weights))
    }
    print(f"hessview: preparing the explorer of {args.model} with {paths['toolbox']}", flush=True)
    try:
        prepare(paths["toolbox"], args.model, paths["data"], paths["weights"], progress=True)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"hessview: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    environment.update(
        HESSVIEW_TOOLBOX=paths["toolbox"],
        HESSVIEW_MODEL=args.model,
        HESSVIEW_DATA=paths["data"] or "",
        HESSVIEW_WEIGHTS=paths["weights"] or "",
        PYTHONPATH=os.pathsep.join(p for p in (here, environment.get("PYTHONPATH", "")) if p),
    )
    return app_notebook(OWN_MODEL_NOTEBOOK), f"explorer of {args.model}", environment


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
