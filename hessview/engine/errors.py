"""The warnings and errors hessview raises.

Every warning derives from :class:`HessviewWarning`, so ``warnings.simplefilter("error", HessviewWarning)``
turns all of them into errors (the test suite does) and one filter silences them all.
"""

from __future__ import annotations


class HessviewWarning(UserWarning):
    """Base class of every warning hessview raises."""


class NotStationaryWarning(HessviewWarning):
    """The parameters are not a stationary point of the objective: influence and RUE assume one."""


class DampingWarning(HessviewWarning):
    """Automatic damping exceeds ``|lambda|`` along most eigenvectors (inverse mostly ``I/delta``)."""


class ApproximationWarning(HessviewWarning):
    """An approximation's estimated error is large (a low-rank complement, an unconverged retraining)."""
