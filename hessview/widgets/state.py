"""The one piece of shared state that every view of the explorer observes."""

from __future__ import annotations

from traitlets import Enum, HasTraits, Int, TraitError, Unicode, validate

SCORE_KINDS = ("influence", "relatif")


class ExplorerState(HasTraits):
    """Selected test point, number of examples shown and the score used to rank them.

    Views never talk to each other: they set and observe these traits (bqplot's pattern).

    >>> state = ExplorerState(n_test=3)
    >>> state.index = 2
    >>> state.index
    2
    >>> state.index = 3
    Traceback (most recent call last):
    ...
    traitlets.traitlets.TraitError: test index 3 is outside 0..2
    """

    n_test = Int(1, read_only=True, help="number of test points; fixed at construction")
    index = Int(0, help="selected test point")
    k = Int(5, help="number of most helpful and most harmful training points shown")
    kind = Enum(SCORE_KINDS, default_value="influence", help="influence or relatif")
    status = Unicode("", help="one-line status message: busy state, selection, or an error")
    thumbnail = Unicode("", help="how the gallery draws examples: one of the renderer's modes ('' if one)")

    def __init__(self, n_test: int, **kwargs):
        if n_test < 1:
            raise ValueError(f"the explorer needs at least one test point, got n_test={n_test}")
        self.set_trait("n_test", int(n_test))
        super().__init__(**kwargs)

    @validate("index")
    def _check_index(self, proposal):
        index = proposal["value"]
        if not 0 <= index < self.n_test:
            raise TraitError(f"test index {index} is outside 0..{self.n_test - 1}")
        return index

    @validate("k")
    def _check_k(self, proposal):
        if proposal["value"] < 1:
            raise TraitError(f"k must be at least 1, got {proposal['value']}")
        return proposal["value"]
