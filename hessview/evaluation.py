"""Evaluation of influence against retraining: the linear datamodeling score (LDS).

``hessview.evaluation.lds(toolbox, X_test, ...)`` is :func:`hessview.engine.evaluation.lds`; see there.
"""

from hessview.engine.evaluation import LDSResult, lds, spearman_columns

__all__ = ["LDSResult", "lds", "spearman_columns"]
