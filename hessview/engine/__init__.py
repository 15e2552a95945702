"""The Hessian engine: curvature, its inverses and the queries written against them.

It depends on torch, numpy, scipy, safetensors and tqdm only, never on widgets or the app
(``pip install hessview`` installs it alone; ``hessview[widgets]``, ``hessview[app]`` add the rest).
"""

from hessview.engine.errors import ApproximationWarning, DampingWarning, HessviewWarning, NotStationaryWarning
from hessview.engine.hessian import CurvatureTooLargeError
from hessview.engine.losses import CrossEntropy, Loss, SquaredError
from hessview.engine.toolbox import HessianToolbox

__all__ = [
    "ApproximationWarning",
    "CrossEntropy",
    "CurvatureTooLargeError",
    "DampingWarning",
    "HessianToolbox",
    "HessviewWarning",
    "Loss",
    "NotStationaryWarning",
    "SquaredError",
]
