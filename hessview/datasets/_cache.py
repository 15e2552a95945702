"""On-disk cache of generated data sets: ``.npz`` files keyed by a hash of every argument."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from hessview._io import atomic_path, cache_dir


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
    """Return the arrays stored at ``path``, or None when there is no such file."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as ``.npz`` atomically (a crash leaves no partial file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
