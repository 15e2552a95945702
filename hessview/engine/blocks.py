"""Matrices too large for memory, written to a ``.npy`` file block of rows by block of rows.

The file is an ordinary NumPy array file, reopened memory-mapped (``numpy.load(path, mmap_mode="r")``), so
only the rows being read occupy memory. It is written to a temporary file renamed onto ``path`` when the
last block is in (``hessview._io.atomic_path``): an interrupted run never leaves a partial matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hessview._io import atomic_path


def write_row_blocks(
    path,
    shape: tuple[int, int],
    block_rows: int,
    compute_rows: Callable[[int, int], np.ndarray],
    *,
    dtype=np.float64,
    progress: bool = True,
    desc: str = "blocks",
) -> np.memmap:
    """Fill a ``shape`` array with ``compute_rows(start, stop)`` for consecutive row blocks; return it mapped.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "squares.npy"
    >>> write_row_blocks(path, (5, 2), 2, lambda a, b: np.arange(a, b)[:, None] ** 2 * [1, -1],
    ...                  progress=False).tolist()
    [[0.0, 0.0], [1.0, -1.0], [4.0, -4.0], [9.0, -9.0], [16.0, -16.0]]
    """
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1:
        raise ValueError(f"block_size must be a positive integer, not {block_rows!r}")
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"path must end in .npy (a NumPy array file), not {path.name!r}")
    n_rows = shape[0]
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        starts = range(0, n_rows, block_rows)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            stop = min(start + block_rows, n_rows)
            out[start:stop] = compute_rows(start, stop)
        out.flush()
        del out
    return np.load(path, mmap_mode="r")
