"""An index of rules by one required label value, so matching stays cheap at scale.

Each rule is filed under one ``label="value"`` matcher it requires (``alertname``
preferred), or else under each literal of a regex matcher that is a plain
alternation of literals (``team=~"payments|billing"``: fully anchored, so the
label must equal one of them); rules with neither are always candidates. An
alert's candidates are the rules filed under its own label values plus the
unindexed ones, evaluated in file order, so results equal a linear scan's
(``tests/test_index.py`` proves it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from receiver.rulebook.matchers import MatchType
from receiver.rulebook.schema import CompiledRule

_META = frozenset(".^$*+?()[]{}\\|")


def literal_alternatives(pattern: str) -> list[str] | None:
    """``a|b|c`` -> ``["a", "b", "c"]`` when every branch is a non-empty literal."""
    branches = pattern.split("|")
    if any(not b or any(c in _META for c in b) for b in branches):
        return None
    return sorted(set(branches))


class RuleIndex:
    """Candidate lookup by equality matchers; pure and immutable once built."""

    def __init__(self, rules: Iterable[CompiledRule]) -> None:
        self._rules = tuple(rules)
        buckets: dict[tuple[str, str], list[CompiledRule]] = defaultdict(list)
        unindexed: list[CompiledRule] = []
        for compiled in self._rules:
            keys = self._keys(compiled)
            if not keys:
                unindexed.append(compiled)
            for key in keys:
                buckets[key].append(compiled)
        self._buckets = dict(buckets)
        self._unindexed = tuple(unindexed)
        self._labels = tuple(sorted({name for name, _ in self._buckets}))

    @staticmethod
    def _keys(compiled: CompiledRule) -> list[tuple[str, str]]:
        equal = [
            m for m in compiled.matchers if m.type is MatchType.EQUAL and m.value != ""
        ]
        if equal:
            chosen = next((m for m in equal if m.name == "alertname"), equal[0])
            return [(chosen.name, chosen.value)]
        for matcher in compiled.matchers:
            if matcher.type is MatchType.REGEX:
                literals = literal_alternatives(matcher.value)
                if literals:
                    return [(matcher.name, value) for value in literals]
        return []

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
