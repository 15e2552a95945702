"""The weights published with Dawid et al., MLST 3, 015002 (2022), MIT licence (``data/LICENSE``)."""

from __future__ import annotations

from pathlib import Path

import torch

from hessview.models.architectures import CNN1D_tiny_ED

PUBLISHED_WEIGHTS = Path(__file__).parent / "data" / "Conv1D_original_l005_12site.pt"


def load_published_weights(dtype: torch.dtype = torch.float64) -> CNN1D_tiny_ED:
    """Return the paper's trained ``CNN1D_tiny_ED`` (eval mode) from ``Conv1D_original_l005_12site.pt``.

    Copyright (c) 2021 Anna Dawid, MIT licence.  The network expects inputs min-max normalised with one
    global min and max over the paper's training set (``MinMaxScaler()`` fitted on
    ``fermi_hubbard_split("train").X``).  These weights are not a stationary point of the eval-mode
    objective (reference README), so refit with :func:`hessview.models.train` before using influence
    functions.

    >>> sum(p.numel() for p in load_published_weights().parameters())
    740
    """
    state = torch.load(PUBLISHED_WEIGHTS, map_location="cpu", weights_only=True)
    model = CNN1D_tiny_ED()
    model.load_state_dict(state)
    return model.to(dtype).eval()
