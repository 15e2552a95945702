"""Energy-landscape interpretability of small networks (Niroomand & Wales, arXiv:2304.02381).

Basin-hopping over a tanh network's weights, a SQLite database of minima and transition states,
disconnectivity graphs, monotonic sequence basins, conserved weights and input-feature relevance.
"""

from hessview.landscape.conserved import ConservedWeights
from hessview.landscape.database import DatabaseError, DatabaseInUseError, Minimum, TransitionState
from hessview.landscape.disconnectivity import DisconnectivityGraph, Superbasin
from hessview.landscape.landscape import Landscape

__all__ = [
    "ConservedWeights",
    "DatabaseError",
    "DatabaseInUseError",
    "DisconnectivityGraph",
    "Landscape",
    "Minimum",
    "Superbasin",
    "TransitionState",
]
