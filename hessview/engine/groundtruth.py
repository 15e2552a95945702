"""Ground truth on demand: retraining, group effects and damping tuned against retraining.

(Filled in by the ground-truth work; ``HessianToolbox`` inherits these methods.)
"""

from __future__ import annotations


class GroundTruthMixin:
    """Methods of :class:`~hessview.engine.toolbox.HessianToolbox` that compare influence with retraining."""
