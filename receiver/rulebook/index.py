"""An index of rules by required label values, so matching stays cheap at scale.

Each rule is filed in one of three ways, the first that applies:

1. under one ``label="value"`` matcher it requires (``alertname`` preferred);
2. under each literal of a regex matcher that is a plain alternation of literals
   (``team=~"payments|billing"``: fully anchored, so the label must equal one);
3. under one of its other regex matchers (``namespace=~"prod-.*"``), in a
   multi-pattern automaton per label (an RE2 set of every such regex), so all
   regex-only rules of a label are tried with one pass over the label's value.

Rules with none of these (only ``!=``/``!~``, or no matchers) are always
candidates. An alert's candidates are the rules filed under its own label
values, the rules whose filed regex matches its value of that label (a missing
label is matched as ``""``, as Alertmanager does), and the unfiled ones,
evaluated in file order with every matcher checked again. The sets are built
from the very strings and options each ``Matcher`` compiled, so they answer
exactly as the rule's own regex does; results equal a linear scan's
(``tests/test_index.py`` proves it, on generated rules and the amtool vectors).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

import re2

from receiver.kept import Kept
from receiver.rulebook.matchers import (
    RE2_OPTIONS,
    SEEN_VALUES,
    Matcher,
    MatchType,
    as_go_reads_it,
)
from receiver.rulebook.schema import CompiledRule

_META = frozenset(".^$*+?()[]{}\\|")
# An RE2 set compiles every pattern into one automaton within this much memory
# (bytes); a set that does not fit is not built, and that label's rules are
# tried one by one instead (never a wrong answer, only a slower one).
SET_MEMORY = 64 << 20


def literal_alternatives(pattern: str) -> list[str] | None:
    """``a|b|c`` -> ``["a", "b", "c"]`` when every branch is a non-empty literal."""
    branches = pattern.split("|")
    if any(not b or any(c in _META for c in b) for b in branches):
        return None
    return sorted(set(branches))


def _selectivity(matcher: Matcher, shared: int) -> tuple[int, bool, int]:
    """Rank regexes for filing (higher is better).

    A regex fewer rules share first (``namespace=~"prod.*"`` in every rule says
    little), then one that refuses the empty string, then more literal text.
    """
    matches_empty = matcher.matches({})
    literal = sum(c not in _META for c in matcher.value)
    return (-shared, not matches_empty, literal)


class _RegexSet:
    """The filed regexes of one label, matched together by one RE2 set."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._patterns: dict[str, int] = {}
        self._rules: list[list[CompiledRule]] = []
        self._matchers: list[Matcher] = []
        self._set: re2.Set | None = None
        # Set results by label value: a storm repeats its values.
        self._seen: Kept[str, tuple[int, ...]] = Kept(SEEN_VALUES)

    def add(self, matcher: Matcher, compiled: CompiledRule) -> None:
        index = self._patterns.get(matcher.value)
        if index is None:
            index = len(self._rules)
            self._patterns[matcher.value] = index
            self._rules.append([])
            self._matchers.append(matcher)
        self._rules[index].append(compiled)

    def compile(self) -> None:
        options = re2.Options()
        options.log_errors = RE2_OPTIONS.log_errors
        options.max_mem = SET_MEMORY
        automaton = re2.Set.SearchSet(options)
        try:
            for matcher in self._matchers:
                # The exact anchored text Matcher.new compiled, with its options.
                automaton.Add(anchored(matcher.value))
            automaton.Compile()
        except re2.error:
            # Too big for one automaton: this label's rules are tried one by one.
            self._set = None
            return
        self._set = automaton

    @staticmethod
    def _match(automaton: re2.Set, value: str) -> tuple[int, ...]:
        try:
            return tuple(automaton.Match(value) or ())
        except UnicodeEncodeError:
            # A lone surrogate cannot reach RE2 as UTF-8: read it as each
            # Matcher does (U+FFFD, as Go decodes it), so both answer alike.
            return tuple(automaton.Match(as_go_reads_it(value)) or ())

    def candidates(self, labels: Mapping[str, str]) -> Iterable[CompiledRule]:
        if self._set is None:
            hits: Iterable[int] = (
                i for i, m in enumerate(self._matchers) if m.matches(labels)
            )
        else:
            value = labels.get(self.label, "")
            seen = self._seen.get(value)
            if seen is None:
                seen = self._seen.keep(value, self._match(self._set, value))
            hits = seen
        for i in hits:
            yield from self._rules[i]


def anchored(pattern: str) -> str:
    """A matcher's regex as Alertmanager anchors it (and ``Matcher.new`` compiles)."""
    return f"^(?:{pattern})$"


class RuleIndex:
    """Candidate lookup by equality matchers and regex sets; immutable once built."""

    def __init__(self, rules: Iterable[CompiledRule]) -> None:
        self._rules = tuple(rules)
        buckets: dict[tuple[str, str], list[CompiledRule]] = defaultdict(list)
        sets: dict[str, _RegexSet] = {}
        unindexed: list[CompiledRule] = []
        self._shared: Counter[tuple[str, str]] = Counter(
            (m.name, m.value)
            for compiled in self._rules
            if not self._keys(compiled)
            for m in {m for m in compiled.matchers if m.type is MatchType.REGEX}
        )
        for compiled in self._rules:
            keys = self._keys(compiled)
            if keys:
                for key in keys:
                    buckets[key].append(compiled)
                continue
            regex = self._regex(compiled)
            if regex is None:
                unindexed.append(compiled)
                continue
            sets.setdefault(regex.name, _RegexSet(regex.name)).add(regex, compiled)
        for regex_set in sets.values():
            regex_set.compile()
        self._buckets = dict(buckets)
        self._sets = tuple(sets[name] for name in sorted(sets))
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

    def _regex(self, compiled: CompiledRule) -> Matcher | None:
        """The regex matcher a rule with no literal key is filed under, if any."""
        regexes = [m for m in compiled.matchers if m.type is MatchType.REGEX]
        if not regexes:
            return None
        return max(
            regexes, key=lambda m: _selectivity(m, self._shared[m.name, m.value])
        )

    @property
    def rules(self) -> tuple[CompiledRule, ...]:
        """All rules in evaluation order."""
        return self._rules

    @property
    def regex_labels(self) -> tuple[str, ...]:
        """Labels with an automaton of filed regexes."""
        return tuple(s.label for s in self._sets)

    def filed_regex(self, compiled: CompiledRule) -> Matcher | None:
        """The regex a rule is filed under in an automaton (None: not so filed)."""
        return None if self._keys(compiled) else self._regex(compiled)

    def candidates(self, labels: Mapping[str, str]) -> list[CompiledRule]:
        """Rules that may match ``labels``, in evaluation order."""
        found: list[CompiledRule] = list(self._unindexed)
        twice = False
        for name in self._labels:
            value = labels.get(name)
            if value is not None:
                found.extend(self._buckets.get((name, value), ()))
                # str.isascii is a flag check; only a lone surrogate reads
                # otherwise, and a rule filed under a literal regex alternative
                # matches the value as Go reads it (U+FFFD), as Matcher does.
                if not value.isascii() and (read := as_go_reads_it(value)) != value:
                    found.extend(self._buckets.get((name, read), ()))
                    twice = True
        for regex_set in self._sets:
            found.extend(regex_set.candidates(labels))
        if twice:
            found = list({c.order: c for c in found}.values())
        if len(found) > 1:
            found.sort(key=lambda c: c.order)
        return found
