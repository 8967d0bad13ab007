"""A bounded memo: recent answers kept by key, forgotten all at once when full.

A storm repeats its values (alertnames, namespaces, timestamps, plans), so the
hot paths remember what they computed for a value; the memory that takes stays
bounded. Clearing everything at the bound costs nothing per hit, where an LRU
would reorder on every one.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Kept(dict[K, V]):
    """A dict of at most ``limit`` entries: ``keep`` starts over when it is full."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def keep(self, key: K, value: V) -> V:
        """Remember ``value`` for ``key`` (forgetting all else first if full)."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
