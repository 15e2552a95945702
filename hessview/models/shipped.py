"""Trained weights of hessview's demos, shipped inside the package with a record of how they were made.

Each demo of :mod:`hessview.app.demos` whose weights are shipped has ``data/<name>.safetensors`` (a
state_dict, float64, a few kB) and an entry in ``data/demo-weights.json``: the demo's settings at the
time (so a demo whose settings changed since is trained again instead), the architecture, the seed,
the git commit and library versions it was trained with, the command that made it, its final
objective, gradient norm, stationarity ratio, extreme Hessian eigenvalues, accuracies, and the file's
SHA-256, checked on every load.  ``hessview build --retrain NAME`` trains from scratch instead and
reports how closely the result reproduces the shipped weights (``benchmarks/bench_retrain_demos.py``
measures it for all demos and, with ``--ship``, writes new shipped weights).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hessview._io import atomic_path

SHIPPED_DIR = Path(__file__).parent / "data"
RECORD_FILE = "demo-weights.json"


def _check_name(name) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"a demo name must be a plain non-empty string, got {name!r}")
    return name


def _folder(folder) -> Path:
    return SHIPPED_DIR if folder is None else Path(folder)


def shipped_records(folder: str | Path | None = None) -> dict[str, dict]:
    """Return ``{demo name: record}`` from ``folder / "demo-weights.json"`` (empty when there is none).

    ``folder`` defaults to :data:`SHIPPED_DIR`, the package's ``models/data``.
    """
    path = _folder(folder) / RECORD_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def shipped_record(name: str, folder: str | Path | None = None) -> dict | None:
    """Return how the shipped weights of demo ``name`` were made, or ``None`` when none are shipped."""
    return shipped_records(folder).get(_check_name(name))


def load_shipped_weights(name: str, folder: str | Path | None = None) -> dict[str, torch.Tensor] | None:
    """Return the shipped state_dict of demo ``name`` (float64 tensors), or ``None`` when none is shipped.

    Raises:
        ValueError: the file's SHA-256 differs from the one recorded when it was written.
    """
    record = shipped_record(name, folder)
    if record is None:
        return None
    path = _folder(folder) / f"{name}.safetensors"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise ValueError(
            f"the shipped weights {path} do not match their record (SHA-256 {digest[:12]}... instead of "
            f"{record['sha256'][:12]}...); reinstall hessview or run `hessview build --retrain {name}`"
        )
    return load_file(str(path))


def ship_weights(name: str, model: torch.nn.Module, record: dict, folder: str | Path | None = None) -> Path:
    """Write ``model``'s state_dict as the shipped weights of demo ``name`` with its ``record``; return it.

    Both files are written atomically; the record gains the file's SHA-256.  For maintainers
    (``benchmarks/bench_retrain_demos.py --ship``).
    """
    folder = _folder(folder)
    path = folder / f"{_check_name(name)}.safetensors"
    state = {key: value.detach().to(torch.float64).contiguous() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
        tmp.chmod(0o644)  # package data, readable by everyone
    records = shipped_records(folder)
    records[name] = {**record, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    with atomic_path(folder / RECORD_FILE) as tmp:
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        tmp.chmod(0o644)
    return path
