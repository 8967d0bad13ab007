"""The rule index answers exactly as the linear scan, on any rules and labels.

Property-tested with Hypothesis over regexes the generated-rules test of
``test_index.py`` does not use (empty alternatives, flags, classes, newlines,
non-ASCII), negative and empty-string matchers, and label values a Go JSON
decoder reads as U+FFFD (a lone surrogate, which a rule test can write).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from receiver.model import Alert, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.rulebook.matchers import Matcher, MatcherError, MatchType
from receiver.steps.catalog import builtin_registry

STEPS = builtin_registry()
NOW = datetime(2024, 1, 1, tzinfo=UTC)
NAMES = ["a", "b", "alertname"]
VALUES = ["", "x", "y", "xy", "x|y", "X", "\n", "é", "x\n", " x", "a.b", "x\ud800"]
REGEXES = [
    *["", ".*", ".+", "x", "x|y", "y|x", "x|", "|x", "(?i)x", "x.*", "[xy]"],
    *["[^x]*", "(?s).*", "x\\|y", "\\Qx|y\\E", "é", "a.b", "a\\.b", "(x)", "x?"],
    *["\n", "x$", "^x", "(?m)x$", "\\x78", "X|x", "(?:)", "x*", "\\n", " x"],
    *["x|xy", "xy|x", "x\ufffd", "x.", "\\C"],
]


def _book(rules: list[dict[str, object]]):
    doc = {"playbooks": {"p": {}}, "rules": rules}
    return load_rulebook([], {"generated.yaml": json.dumps(doc)}, steps=STEPS)


def _names(book, labels: dict[str, str], status: str, *, linear: bool) -> list[str]:
    alert = Alert(
        source="alertmanager", fingerprint="f", status=status, labels=freeze(labels)
    )
    return [m.rule.name for m in book.match(alert, NOW, linear=linear)]


@st.composite
def matchers(draw: st.DrawFn) -> str:
    op = MatchType(draw(st.sampled_from(["=", "!=", "=~", "!~"])))
    name = draw(st.sampled_from(NAMES))
    if op in (MatchType.REGEX, MatchType.NOT_REGEX):
        texts = st.text(alphabet="xy|.*()?é\n", max_size=6)
        value = draw(st.one_of(st.sampled_from(REGEXES), texts))
    else:
        value = draw(
            st.one_of(st.sampled_from(VALUES[:-1]), st.text("xy|é\n", max_size=4))
        )
    try:
        return str(Matcher.new(name, op, value))
    except MatcherError:
        assume(condition=False)
        raise


RULES = st.lists(
    st.tuples(
        st.lists(matchers(), max_size=3),
        st.booleans(),
        st.sampled_from(["firing", "resolved", "any"]),
    ),
    min_size=1,
    max_size=8,
)
LABELS = st.dictionaries(
    st.sampled_from([*NAMES, "c"]),
    st.one_of(st.sampled_from(VALUES), st.text("xy|é\n", max_size=4)),
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(RULES, st.lists(LABELS, min_size=1, max_size=4))
def test_index_equals_linear_scan_on_any_rules(rules, label_sets):
    """Indexed matching equals the linear scan for every generated case."""
    book = _book(
        [
            {"name": f"r{i}", "match": m, "playbook": "p", "continue": c, "status": s}
            for i, (m, c, s) in enumerate(rules)
        ]
    )
    for labels in label_sets:
        for status in ("firing", "resolved"):
            assert _names(book, labels, status, linear=False) == _names(
                book, labels, status, linear=True
            ), (rules, labels, status)


def test_a_lone_surrogate_label_value_meets_a_regex_set_rule():
    """A value Go reads as U+FFFD matches through the index as without it."""
    book = _book(
        [
            {"name": "prod", "match": ['ns=~"prod.*"'], "playbook": "p"},
            {"name": "fffd", "match": ['ns=~"x\ufffd"'], "playbook": "p"},
        ]
    )
    for value, expected in [("prod\ud800", ["prod"]), ("x\udfff", ["fffd"])]:
        labels = {"ns": value}
        assert _names(book, labels, "firing", linear=True) == expected
        assert _names(book, labels, "firing", linear=False) == expected
