"""Disjoint sets with path halving and union by size (used for superbasins and connectivity)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class UnionFind:
    """Disjoint sets over hashable items.

    >>> uf = UnionFind([1, 2, 3])
    >>> uf.union(1, 3)
    >>> uf.find(1) == uf.find(3), uf.find(1) == uf.find(2)
    (True, False)
    >>> sorted(map(sorted, uf.groups()))
    [[1, 3], [2]]
    """

    def __init__(self, items: Iterable[Hashable] = ()):
        self.parent: dict = {}
        self.size: dict = {}
        for item in items:
            self.add(item)

    def add(self, item: Hashable) -> None:
        """Add ``item`` as its own set (no-op if present)."""
        if item not in self.parent:
            self.parent[item] = item
            self.size[item] = 1

    def find(self, item: Hashable) -> Hashable:
        """The representative of ``item``'s set."""
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: Hashable, b: Hashable) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> list[set]:
        """All sets, as Python sets."""
        out: dict = {}
        for item in self.parent:
            out.setdefault(self.find(item), set()).add(item)
        return list(out.values())
