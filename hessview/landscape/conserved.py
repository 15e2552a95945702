"""Conserved weights across a group of minima and the input-feature relevance they imply.

Niroomand & Wales (arXiv:2304.02381): weights that keep their value across the minima of a group are
the ones the model's decisions rely on. The minima are first aligned to the group's lowest minimum
(:func:`hessview.landscape.symmetry.align`), then each weight's mean :math:`\\mu` and standard deviation
:math:`\\sigma` over the group are taken. An input weight :math:`W_{1,ji}` is conserved to the degree
:math:`c_{ji} = |\\mu_{ji}| / (|\\mu_{ji}| + \\sigma_{ji})` and the relevance of input feature :math:`i` is

.. math:: r_i \\propto \\sum_j \\lVert \\bar W_{2,:j}\\rVert \\, |\\mu_{ji}| \\, c_{ji},

conserved and non-negligible weights feeding hidden units that the output uses; :math:`\\sum_i r_i = 1`.
The weights are those of the network on standardised inputs (:class:`~hessview.landscape.Landscape`
standardises every feature), so the score does not depend on the units of any feature.

Its uncertainty (:func:`bootstrap_relevance`) is the spread of :math:`r` over bootstrap resamples of the
group's minima (drawn with replacement, aligned once).
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
        return _relevance(self.output_strength, self.input_mean, self.conservation)


def _relevance(output_strength, input_mean, conservation) -> np.ndarray:
    score = (output_strength[:, None] * np.abs(input_mean) * conservation).sum(0)
    total = score.sum()
    return score / total if total > 0 else np.full_like(score, 1.0 / len(score))


def _statistics(network: TanhNetwork, aligned: np.ndarray):
    mean = aligned.mean(0)
    spread = aligned.std(0)
    w1_mean, _, w2_mean, _ = network.unpack(mean)
    w1_spread = network.unpack(spread)[0]
    magnitude = np.abs(w1_mean)
    conservation = np.divide(
        magnitude, magnitude + w1_spread, out=np.zeros_like(magnitude), where=magnitude + w1_spread > 0
    )
    return mean, spread, w1_mean, w1_spread, conservation, np.linalg.norm(w2_mean, axis=0)


def bootstrap_relevance(
    network: TanhNetwork, weights: ConservedWeights, n_resamples: int, seed: int
) -> np.ndarray:
    """Relevance of ``n_resamples`` bootstrap resamples of the group's aligned minima, ``(B, n_inputs)``."""
    rng = np.random.default_rng(seed)
    m = len(weights.aligned)
    out = np.empty((n_resamples, network.n_inputs))
    for b in range(n_resamples):
        sample = weights.aligned[rng.integers(0, m, size=m)]
        _, _, w1_mean, _, conservation, strength = _statistics(network, sample)
        out[b] = _relevance(strength, w1_mean, conservation)
    return out


def conserved_weights(
    network: TanhNetwork, minimum_ids: Sequence[int], coords: Sequence[np.ndarray]
) -> ConservedWeights:
    """Align ``coords`` (given lowest loss first) to the first and take each weight's mean and spread."""
    reference = np.asarray(coords[0])
    aligned = np.stack([reference] + [align(network, reference, c)[0] for c in coords[1:]])
    mean, spread, w1_mean, w1_spread, conservation, strength = _statistics(network, aligned)
    return ConservedWeights(
        minimum_ids=tuple(int(i) for i in minimum_ids),
        aligned=aligned,
        mean=mean,
        spread=spread,
        input_mean=w1_mean,
        input_spread=w1_spread,
        conservation=conservation,
        output_strength=strength,
    )
