"""Small file helpers shared by every cache: the cache directory, atomic writes, checksums, file locks."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

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


class CacheError(ValueError):
    """A cached file is missing, damaged, of an unknown format or made with other settings.

    The message names the file, what is wrong with it and how to make it again; ``path`` is the file,
    ``problem`` the reason, ``detail`` the message without the advice, and ``kind`` one of
    ``"missing"``, ``"stale"`` (made with other settings, nothing is wrong with it) or ``"damaged"``
    (truncated, edited, swapped, unreadable, of an unknown format, or written before hessview stored
    checksums).

    >>> str(CacheError("/c/x.npz", "truncated", "hessview build --rebuild ising"))
    '/c/x.npz: truncated; rebuild it with `hessview build --rebuild ising`'
    """

    def __init__(self, path, problem: str | None = None, remedy: str | None = None, *, kind: str = "damaged"):
        if problem is None:  # CacheError("a whole message"), as subclasses elsewhere may raise it
            self.path, self.problem, self.kind, self.detail = None, str(path), kind, str(path)
            super().__init__(str(path))
            return
        self.path, self.problem, self.kind = Path(path), problem, kind
        self.detail = text = f"{path}: {problem}"  # without the remedy, for a caller that acts on it
        if remedy:
            text += f"; rebuild it with `{remedy}`" if remedy.startswith("hessview ") else f"; {remedy}"
        super().__init__(text)


logger = logging.getLogger("hessview.cache")  # one-line notices about caches (damaged, read-only)

_RESOLVED_ROOTS: dict[tuple[str, str], Path] = {}


def cache_root() -> Path:
    """Return hessview's cache directory as an absolute path (not created).

    ``$HESSVIEW_CACHE_DIR`` when it is set and not empty, with ``~`` expanded and a relative path taken
    from the working directory of the first call (the answer is kept for the life of the process, so a
    later ``chdir`` does not move the cache); otherwise ``$XDG_CACHE_HOME/hessview`` (when that is
    absolute, as the XDG specification requires) or ``~/.cache/hessview``. :func:`cache_environment`
    hands the resolved path to child processes (the Voila kernel), so that every process agrees.
    """
    raw = os.environ.get("HESSVIEW_CACHE_DIR", "").strip()
    key = ("HESSVIEW_CACHE_DIR", raw)
    if not raw:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        raw = os.path.join(xdg if os.path.isabs(xdg) else os.path.join("~", ".cache"), "hessview")
        key = ("default", raw)
    if key not in _RESOLVED_ROOTS:
        _RESOLVED_ROOTS[key] = Path(os.path.abspath(os.path.expanduser(raw)))
    return _RESOLVED_ROOTS[key]


def cache_environment(environment: dict | None = None) -> dict:
    """Return ``environment`` (default ``os.environ``) with ``HESSVIEW_CACHE_DIR`` set to :func:`cache_root`.

    A child process started with it (the Voila kernel, whose working directory is the notebook's) uses
    the same cache as this one, whatever ``$HESSVIEW_CACHE_DIR`` looked like (relative, ``~``, empty).
    """
    environment = dict(os.environ if environment is None else environment)
    environment["HESSVIEW_CACHE_DIR"] = str(cache_root())
    return environment


def cache_dir(subdir: str | None = None) -> Path:
    """Return hessview's cache directory (see :func:`cache_root`) or its ``subdir``, creating it if possible.

    A cache that cannot be created (a read-only file system) is returned all the same: readers find
    nothing there and writers fall back to computing in memory.
    """
    path = cache_root() / subdir if subdir else cache_root()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


CHECKSUM_KEY = "__hessview_checksum__"
ENTRY_KEY = "__hessview_key__"


def arrays_sha256(arrays: dict, key: str) -> str:
    """SHA-256 of ``key`` and every array's name, dtype, shape and bytes, in name order.

    >>> a = {"x": np.arange(3)}
    >>> arrays_sha256(a, "k") == arrays_sha256({"x": np.arange(3)}, "k") != arrays_sha256(a, "other")
    True
    """
    digest = hashlib.sha256(key.encode() + b"\0")
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_npz(path: str | os.PathLike, arrays: dict, *, key: str) -> None:
    """Write ``arrays`` to ``path`` as ``.npz``, atomically, with ``key`` and a checksum of both.

    ``key`` names what the file holds (a cache key); :func:`load_npz` can demand it, so that a file
    copied over from another cache entry is refused like a damaged one.
    """
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    reserved = sorted({CHECKSUM_KEY, ENTRY_KEY} & set(arrays))
    if reserved:
        raise ValueError(f"the array names {reserved} are reserved for the checksum")
    stamp = {ENTRY_KEY: np.array(key), CHECKSUM_KEY: np.array(arrays_sha256(arrays, key))}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays, **stamp)


def load_npz(path: str | os.PathLike, *, key: str | None = None, remedy: str | None = None) -> dict:
    """Read and verify a file written by :func:`save_npz`; raise :class:`CacheError` unless it is intact.

    Refused: a missing file (``kind="missing"``), a file that is not a readable ``.npz`` (truncated,
    bit flips the zip format notices), one without a checksum (older hessview, another program), one
    whose arrays do not match the checksum (bit flips in the data, an edited file) and, when ``key``
    is given, one written under another key (a file swapped in from another entry). ``remedy`` says
    how to make the file again and ends the message.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "a.npz"
    >>> save_npz(path, {"x": np.arange(3)}, key="demo")
    >>> load_npz(path, key="demo")["x"].tolist()
    [0, 1, 2]
    >>> load_npz(path, key="other")
    Traceback (most recent call last):
    ...
    hessview._io.CacheError: ...a.npz: was written for 'demo', not 'other' (a swapped file)
    """
    path = Path(path)
    if not path.is_file():
        raise CacheError(path, "no such file", remedy, kind="missing")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except Exception as error:  # zipfile.BadZipFile, EOFError, ValueError, OSError, zlib.error, ...
        raise CacheError(path, f"unreadable ({type(error).__name__}: {error})", remedy) from error
    checksum, stored_key = arrays.pop(CHECKSUM_KEY, None), arrays.pop(ENTRY_KEY, None)
    if checksum is None or stored_key is None or checksum.shape != () or stored_key.shape != ():
        raise CacheError(path, "has no checksum (written by an older hessview or another program)", remedy)
    if str(checksum) != arrays_sha256(arrays, str(stored_key)):
        raise CacheError(path, "checksum mismatch (damaged or edited)", remedy)
    if key is not None and str(stored_key) != key:
        raise CacheError(path, f"was written for {str(stored_key)!r}, not {key!r} (a swapped file)", remedy)
    return arrays


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


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, shared: bool = False, waiting: str | None = None) -> Iterator[bool]:
    """Hold an advisory lock (``fcntl.flock``) on ``path`` for the block; yield whether it is held.

    Exclusive by default (one writer), shared with ``shared=True`` (readers, who exclude writers but not
    each other). A process that must wait logs ``waiting`` once (e.g. "another process is building
    ..."). The lock file is created if needed and never removed (removing it would let two processes
    lock two different files). Where the lock file can neither be created nor opened (a read-only
    cache), an exclusive lock raises that ``OSError`` (the caller cannot write there either) and a
    shared one runs the block unlocked, yielding False (nobody can write there). Without ``fcntl``
    (Windows) the block runs unlocked and the value is True.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    path = Path(path)
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if not shared:
            raise
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError:
            yield False
            return
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(descriptor, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                logger.warning(waiting)
            fcntl.flock(descriptor, mode)
        yield True
    finally:
        os.close(descriptor)  # closing the last descriptor releases the lock
