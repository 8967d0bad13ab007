"""Regex answers remembered per label value equal fresh answers, and stay bounded."""

from __future__ import annotations

import random

from receiver.model import freeze
from receiver.rulebook import index as index_module
from receiver.rulebook import matchers as matchers_module
from receiver.rulebook.index import RuleIndex
from receiver.rulebook.matchers import Matcher
from receiver.rulebook.schema import CompiledRule, Rule

PATTERNS = ("(?i).*\\bsplunk\\b.*", "prod-.*", "a|b", ".+", "")
VALUES = (
    "Splunk down",
    "splunkd",
    "x splunk y",
    "",
    "prod-eu",
    "a",
    "b",
    "\ud800 splunk",
)


def test_remembered_answers_equal_fresh_answers(monkeypatch):
    """=~ and !~ answer as a freshly parsed matcher does, over repeated values."""
    monkeypatch.setattr(matchers_module, "SEEN_VALUES", 3)
    rng = random.Random(3)  # noqa: S311 (seeded on purpose)
    for pattern in PATTERNS:
        for op in ("=~", "!~"):
            text = f'alertname{op}"{pattern}"'
            kept = Matcher.parse(text)
            for _ in range(60):
                labels = freeze({"alertname": rng.choice(VALUES)})
                assert kept.matches(labels) == Matcher.parse(text).matches(labels)
                assert len(kept._seen) <= 3


def test_remembered_answers_do_not_change_equality_or_hash():
    """A matcher that has answered equals (and hashes as) one that has not."""
    used = Matcher.parse('namespace=~"prod-.*"')
    used.matches(freeze({"namespace": "prod-eu"}))
    fresh = Matcher.parse('namespace=~"prod-.*"')
    assert used == fresh
    assert hash(used) == hash(fresh)


def _rule(order: int, matcher: str) -> CompiledRule:
    rule = Rule.model_validate(
        {"name": f"r{order}", "match": [matcher], "severity": "P3", "playbook": "p"}
    )
    return CompiledRule(order, rule, (Matcher.parse(matcher),), "rules.yaml")


def test_regex_set_answers_stay_bounded_and_exact(monkeypatch):
    """The index's per-label regex set remembers at most SEEN_VALUES values."""
    monkeypatch.setattr(index_module, "SEEN_VALUES", 4)
    rules = [_rule(i, f'namespace=~"{p}"') for i, p in enumerate(PATTERNS[:4])]
    index = RuleIndex(rules)
    assert index._sets  # the regex-only rules are filed in an RE2 set
    for i in range(40):
        value = ("prod-eu", "a", "b", f"n{i}", "")[i % 5]
        labels = freeze({"namespace": value})
        found = [c.rule.name for c in index.candidates(labels)]
        expected = [c.rule.name for c in rules if c.matchers[0].matches(labels)]
        assert found == expected
        assert all(len(s._seen) <= 4 for s in index._sets)
