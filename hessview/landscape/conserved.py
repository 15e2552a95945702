"""Conserved weights across a group of minima and the input-feature relevance they imply.

Niroomand & Wales (arXiv:2304.02381): weights that keep their value across the minima of a group are
the ones the model's decisions rely on. The minima are first aligned to the group's lowest minimum
(:func:`hessview.landscape.symmetry.align`), then each weight's mean :math:`\\mu` and standard deviation
:math:`\\sigma` over the group are taken. An input weight :math:`W_{1,ji}` is conserved to the degree
:math:`c_{ji} = |\\mu_{ji}| / (|\\mu_{ji}| + \\sigma_{ji})` and the relevance of input feature :math:`i` is

.. math:: r_i \\propto \\sum_j \\lVert \\bar W_{2,:j}\\rVert \\, |\\mu_{ji}| \\, c_{ji},

conserved and non-negligible weights feeding hidden units that the output uses; :math:`\\sum_i r_i = 1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hessview.landscape.network import TanhNetwork
from hessview.landscape.symmetry import align


@dataclass(frozen=True)
class ConservedWeights:
    """Aligned weights of a group of minima and their spread.

    Attributes:
        minimum_ids: the group, lowest loss first (the first is the alignment reference).
        aligned: ``(m, P)`` coordinates of the group aligned to the reference.
        mean, spread: ``(P,)`` mean and standard deviation of each weight over the group.
        input_mean, input_spread: the input-layer block ``(hidden, n_inputs)`` of ``mean`` and ``spread``.
        conservation: ``(hidden, n_inputs)`` :math:`|\\mu| / (|\\mu| + \\sigma)`, 1 for a fixed weight.
        output_strength: ``(hidden,)`` norm of each hidden unit's mean output weights.
    """

    minimum_ids: tuple[int, ...]
    aligned: np.ndarray
    mean: np.ndarray
    spread: np.ndarray
    input_mean: np.ndarray
    input_spread: np.ndarray
    conservation: np.ndarray
    output_strength: np.ndarray

    def feature_relevance(self) -> np.ndarray:
        """One score per input feature, summing to 1 (formula in the module docstring)."""
        score = (self.output_strength[:, None] * np.abs(self.input_mean) * self.conservation).sum(0)
        total = score.sum()
        return score / total if total > 0 else np.full_like(score, 1.0 / len(score))


def conserved_weights(
    network: TanhNetwork, minimum_ids: Sequence[int], coords: Sequence[np.ndarray]
) -> ConservedWeights:
    """Align ``coords`` (given lowest loss first) to the first and take each weight's mean and spread."""
    reference = np.asarray(coords[0])
    aligned = np.stack([reference] + [align(network, reference, c)[0] for c in coords[1:]])
    mean = aligned.mean(0)
    spread = aligned.std(0)
    w1_mean, _, w2_mean, _ = network.unpack(mean)
    w1_spread = network.unpack(spread)[0]
    magnitude = np.abs(w1_mean)
    conservation = np.divide(
        magnitude, magnitude + w1_spread, out=np.zeros_like(magnitude), where=magnitude + w1_spread > 0
    )
    return ConservedWeights(
        minimum_ids=tuple(int(i) for i in minimum_ids),
        aligned=aligned,
        mean=mean,
        spread=spread,
        input_mean=w1_mean,
        input_spread=w1_spread,
        conservation=conservation,
        output_strength=np.linalg.norm(w2_mean, axis=0),
    )
