"""Small file helpers shared by every cache: atomic writes and the cache directory."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(text: str) -> str:
    """Return ``text`` as a CSV cell that no spreadsheet evaluates: a leading formula character is quoted.

    A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a single quote in
    front (OWASP's advice against CSV injection); other text is returned unchanged. Apply it to text
    cells only, never to numbers (``-0.5`` must stay a number).

    >>> print(csv_safe("=1+1"), csv_safe("-x"), csv_safe("LL"))
    '=1+1 '-x LL
    """
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def cache_dir(subdir: str | None = None) -> Path:
    """Return hessview's cache directory, creating it.

    ``$HESSVIEW_CACHE_DIR`` wins; otherwise ``$XDG_CACHE_HOME/hessview`` or ``~/.cache/hessview``.
    """
    root = os.environ.get("HESSVIEW_CACHE_DIR")
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "hessview")
    path = Path(root) / subdir if subdir else Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or an exception inside the block leaves any existing file at ``path`` untouched.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
