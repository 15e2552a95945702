"""On-disk cache of generated data sets: ``.npz`` files keyed by a hash of every argument."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from hessview._io import CacheError, cache_dir, load_npz, logger, save_npz


def cache_key(kind: str, arguments: dict) -> str:
    """Return a file name that identifies ``kind`` generated with ``arguments``.

    Arrays enter the hash through their float64 bytes, scalars through their JSON text.

    >>> cache_key("demo", {"a": np.arange(2)}) == cache_key("demo", {"a": np.array([0.0, 1.0])})
    True
    >>> cache_key("demo", {"a": 1}) == cache_key("demo", {"a": 2})
    False
    """
    digest = hashlib.sha256(kind.encode())
    for name in sorted(arguments):
        value = arguments[name]
        digest.update(name.encode())
        if isinstance(value, np.ndarray):
            digest.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
        else:
            digest.update(json.dumps(value).encode())
    return f"{kind}-{digest.hexdigest()[:20]}.npz"


def resolve_cache_path(kind: str, arguments: dict, directory: str | Path | None) -> Path:
    """Return the cache file for ``kind``/``arguments`` in ``directory`` (default: hessview's)."""
    folder = cache_dir("datasets") if directory is None else Path(directory)
    return folder / cache_key(kind, arguments)


def load_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """Return the arrays stored at ``path``, or None when they must be computed (again).

    None when there is no such file, and also when the file is damaged (truncated, bit flips, edited,
    another entry's file, or written before hessview stored checksums): that is reported in one line
    (logger ``hessview.cache``) and the caller computes the data again and overwrites the file.
    """
    try:
        return load_npz(path, key=path.name)
    except CacheError as error:
        if error.kind != "missing":
            logger.warning("hessview: cached data set not used: %s; computing it again", error.detail)
        return None


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as a checksummed ``.npz``, atomically (a crash leaves no partial file).

    A cache that cannot be written (read-only, full) is reported in one line; the data are still
    returned by the caller, computed in memory.
    """
    try:
        save_npz(path, arrays, key=path.name)
    except OSError as error:
        logger.warning(
            "hessview: cannot write the data-set cache %s (%s); computed in memory, not kept", path, error
        )
