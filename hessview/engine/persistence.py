"""What a saved toolbox holds, in one place, and how it is verified on load.

A toolbox file is a safetensors file (never pickle) whose metadata holds one JSON document:

- ``format``: ``hessview.toolbox/2``. Files of another format (older ones included) are refused with a
  message saying how to rebuild them: caches are rebuildable, so there is no migration.
- ``settings``: every constructor argument that changes the numbers (:class:`ToolboxSettings`).
- ``fitted``: the fitted facts that are not tensors (method chosen, screening).
- ``model_fingerprint``, ``data_fingerprint``: which model and training data the file was made for.
- ``checksum``: SHA-256 over every tensor (name, dtype, shape, bytes) and the JSON above, so that a flipped
  bit, a tensor swapped in from another file or an edited field is detected.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import torch

from hessview._io import CacheError

FORMAT = "hessview.toolbox/2"


class CorruptCacheError(CacheError):
    """A saved file is damaged, of another format or made for something else; the message says what to do."""


@dataclass(frozen=True)
class ToolboxSettings:
    """The constructor arguments of a toolbox that a saved file must reproduce."""

    loss: str
    weight_decay: float
    damping: str | float
    dtype: str
    method: str
    rank: int
    curvature: str
    lanczos_tol: float
    screen: bool

    def to_json(self) -> dict:
        """A JSON-ready dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, data, path) -> ToolboxSettings:
        """Rebuild from :meth:`to_json`'s dict, refusing missing or unknown fields."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise CorruptCacheError(
                f"{path}: the saved settings are malformed (expected fields {sorted(names)}, found {got}); "
                "refit the toolbox and save it again"
            )
        return cls(**data)


def checksum(tensors: dict[str, torch.Tensor], document: dict) -> str:
    """SHA-256 over the tensors (sorted by name: name, dtype, shape, bytes) and the JSON document."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(document, sort_keys=True).encode())
    return digest.hexdigest()


def seal(tensors: dict[str, torch.Tensor], document: dict) -> dict:
    """The metadata to write: ``document`` with its format and checksum."""
    document = {**document, "format": FORMAT}
    return {"hessview": json.dumps({**document, "checksum": checksum(tensors, document)})}


def unseal(metadata: dict | None, tensors: dict[str, torch.Tensor], path) -> dict:
    """Parse and verify the metadata written by :func:`seal`; return the document without the checksum."""
    rebuild = "refit the toolbox (HessianToolbox(...).fit()) and save it again"
    try:
        document = json.loads((metadata or {})["hessview"])
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise CorruptCacheError(f"{path} has no readable hessview metadata ({err!r}); {rebuild}") from err
    if not isinstance(document, dict):
        raise CorruptCacheError(f"{path}: the hessview metadata is not a JSON object; {rebuild}")
    if document.get("format") != FORMAT:
        raise CorruptCacheError(
            f"{path} is a toolbox file of format {document.get('format')!r}, but this hessview reads "
            f"{FORMAT!r}; caches are rebuildable: {rebuild} (demo caches: hessview build --rebuild)"
        )
    stored = document.pop("checksum", None)
    if stored != checksum(tensors, document):
        raise CorruptCacheError(
            f"{path} is corrupt: its checksum does not match its contents (a damaged file, a tensor from "
            f"another file or edited metadata); {rebuild}"
        )
    return document
