"""An index of rules by one equality matcher each, so matching stays cheap at scale.

Each rule is filed under one ``label="value"`` matcher it requires (``alertname``
preferred); rules without one are always candidates. An alert's candidates are the
rules filed under its own label values plus the unindexed ones, evaluated in file
order, so results equal a linear scan's (``tests/test_index.py`` proves it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from receiver.rulebook.matchers import MatchType
from receiver.rulebook.schema import CompiledRule


class RuleIndex:
    """Candidate lookup by equality matchers; pure and immutable once built."""

    def __init__(self, rules: Iterable[CompiledRule]) -> None:
        self._rules = tuple(rules)
        buckets: dict[tuple[str, str], list[CompiledRule]] = defaultdict(list)
        unindexed: list[CompiledRule] = []
        for compiled in self._rules:
            key = self._key(compiled)
            if key is None:
                unindexed.append(compiled)
            else:
                buckets[key].append(compiled)
        self._buckets = dict(buckets)
        self._unindexed = tuple(unindexed)
        self._labels = tuple(sorted({name for name, _ in self._buckets}))

    @staticmethod
    def _key(compiled: CompiledRule) -> tuple[str, str] | None:
        equal = [
            m for m in compiled.matchers if m.type is MatchType.EQUAL and m.value != ""
        ]
        if not equal:
            return None
        chosen = next((m for m in equal if m.name == "alertname"), equal[0])
        return (chosen.name, chosen.value)

    @property
    def rules(self) -> tuple[CompiledRule, ...]:
        """All rules in evaluation order."""
        return self._rules

    def candidates(self, labels: Mapping[str, str]) -> list[CompiledRule]:
        """Rules that may match ``labels``, in evaluation order."""
        found: list[CompiledRule] = list(self._unindexed)
        for name in self._labels:
            value = labels.get(name)
            if value is not None:
                found.extend(self._buckets.get((name, value), ()))
        if len(found) > 1:
            found.sort(key=lambda c: c.order)
        return found
