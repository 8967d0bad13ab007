"""The rule index gives exactly the linear scan's results, on generated rules."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver.model import SOURCES, Alert, freeze
from receiver.rulebook.loader import Rulebook, load_rulebook
from receiver.steps.catalog import builtin_registry

SEED = 20240506
RULES = 400
ALERTS = 3000
NOW = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)

VOCABULARY: dict[str, list[str]] = {
    "alertname": [f"Alert{i}" for i in range(12)],
    "namespace": ["prod", "prod-eu", "dev", "staging", "kube-system"],
    "team": ["sre", "db", "web"],
    "severity": ["critical", "warning", "info"],
    "service": ["api", "db", "cache", "queue"],
}
REGEXES = ["prod.*", "a.*|c.*", ".+", "sre|db", "", "(?i)ALERT[0-3]", "Alert1.?", "d.*"]


def _value(rng: random.Random, name: str) -> str:
    return (
        rng.choice([*VOCABULARY[name], ""])
        if rng.random() < 0.15
        else (rng.choice(VOCABULARY[name]))
    )


def _matcher(rng: random.Random, name: str, *, positive: bool = False) -> str:
    weights = [6, 0, 2, 0] if positive else [5, 2, 2, 1]
    op = rng.choices(["=", "!=", "=~", "!~"], weights=weights)[0]
    if op in ("=~", "!~"):
        if name == "alertname":
            value = rng.choice(
                [
                    "|".join(rng.sample(VOCABULARY["alertname"], 2)),
                    "(?i)ALERT[0-3]",
                    "Alert1.?",
                ]
            )
        elif positive:
            value = rng.choice(["prod.*", "sre|db", "d.*", "a.*|c.*"])
        else:
            value = rng.choice(REGEXES)
    else:
        value = rng.choice(VOCABULARY[name]) if positive else _value(rng, name)
    return f'{name}{op}"{value}"'


def _rule(rng: random.Random, i: int) -> dict[str, object]:
    others = [n for n in VOCABULARY if n != "alertname"]
    if rng.random() < 0.9:
        match = [_matcher(rng, "alertname", positive=True)]
        extra = rng.sample(others, rng.choice([0, 1, 1, 2]))
    else:
        # Rules without alertname still need one positive matcher: a catch-all
        # early in the file would hide every later rule and prove nothing.
        first, *extra = rng.sample(others, rng.choice([1, 2, 2]))
        match = [_matcher(rng, first, positive=True)]
    match += [_matcher(rng, n) for n in extra]
    rng.shuffle(match)
    rule: dict[str, object] = {
        "name": f"rule-{i:03d}",
        "match": match,
        "playbook": rng.choice(["p0", "p1", "p2"]),
        "severity": rng.choice(
            [
                "P0",
                "P1",
                "P2",
                "P3",
                {"label": "severity", "map": {"critical": "P0"}, "default": "P3"},
            ]
        ),
    }
    if rng.random() < 0.4:
        rule["continue"] = True
    status = rng.choices(["firing", "resolved", "any", None], weights=[2, 1, 2, 3])[0]
    if status is not None:
        rule["status"] = status
    if rng.random() < 0.35:
        rule["sources"] = rng.sample(list(SOURCES), rng.randint(1, 2))
    return rule


def _alert(rng: random.Random, i: int) -> Alert:
    labels = {
        name: _value(rng, name)
        for name in VOCABULARY
        if rng.random() < (0.95 if name == "alertname" else 0.6)
    }
    if rng.random() < 0.1:
        labels["extra"] = "x"
    if rng.random() < 0.1:
        labels["alertname"] = "NoRuleForMe"
    return Alert(
        source=rng.choice(SOURCES),
        fingerprint=f"fp-{i}",
        status=rng.choice(["firing", "firing", "resolved"]),
        labels=freeze(labels),
        starts_at=NOW - timedelta(minutes=rng.randint(0, 300)),
    )


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> Rulebook:
    rng = random.Random(SEED)  # noqa: S311 (seeded on purpose: reproducible data)
    doc = {
        "playbooks": {"p0": {}, "p1": {}, "p2": {}},
        "rules": [_rule(rng, i) for i in range(RULES)],
    }
    path: Path = tmp_path_factory.mktemp("index") / "generated.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return load_rulebook([path], steps=builtin_registry())


@pytest.fixture(scope="module")
def alerts() -> list[Alert]:
    rng = random.Random(SEED + 1)  # noqa: S311 (seeded on purpose)
    return [_alert(rng, i) for i in range(ALERTS)]


def _summary(book: Rulebook, alert: Alert, *, linear: bool) -> list[tuple[str, ...]]:
    return [
        (m.rule.name, m.severity.value, m.severity_reason, m.rule.rule.playbook)
        for m in book.match(alert, NOW, linear=linear)
    ]


def test_index_equals_linear_scan(book, alerts):
    """For every generated alert, indexed matching equals the linear scan."""
    mismatches = [
        (alert.fingerprint, dict(alert.labels), indexed, linear)
        for alert in alerts
        if (indexed := _summary(book, alert, linear=False))
        != (linear := _summary(book, alert, linear=True))
    ]
    assert mismatches == []


def test_generated_cases_are_not_trivial(book, alerts):
    """The generated data exercises no-match, single, continue and filtered cases."""
    results = [book.match(a, NOW, linear=True) for a in alerts]
    sizes = [len(r) for r in results]
    assert sizes.count(0) > 50
    assert sizes.count(1) > 50
    assert max(sizes) >= 3
    rules = {c.name: c.rule for c in book.rules}
    matched = {m.rule.name for r in results for m in r}
    assert any(rules[n].continue_ for n in matched)
    assert any(rules[n].status == "resolved" for n in matched)
    assert any(rules[n].sources is not None for n in matched)
    # Some rules are filed under a label other than alertname, some under none.
    keys = [book.index._keys(c) for c in book.rules]
    assert any(k and k[0][0] != "alertname" for k in keys)
    assert any(not k for k in keys)


def test_index_prunes_candidates(book, alerts):
    """The index hands over far fewer candidates than there are rules."""
    total = sum(len(book.index.candidates(a.labels)) for a in alerts)
    assert total / len(alerts) < len(book.rules) / 2


def test_candidates_keep_file_order(book, alerts):
    """Candidates come in evaluation order, without duplicates."""
    for alert in alerts[:500]:
        orders = [c.order for c in book.index.candidates(alert.labels)]
        assert orders == sorted(set(orders))


def test_every_matching_rule_is_a_candidate(book, alerts):
    """No rule whose matchers hold is left out of the candidates."""
    from receiver.rulebook.matchers import matches_all  # noqa: PLC0415

    for alert in alerts:
        candidates = {c.order for c in book.index.candidates(alert.labels)}
        for compiled in book.rules:
            if matches_all(compiled.matchers, alert.labels):
                assert compiled.order in candidates, (compiled.name, alert.labels)


@pytest.mark.parametrize(
    ("labels", "status", "source", "expected"),
    [
        (
            {"alertname": "A", "ns": "prod"},
            "firing",
            "alertmanager",
            ["a", "a-ns", "ns-prod", "any"],
        ),
        ({"alertname": "A", "ns": "dev"}, "firing", "alertmanager", ["a", "any"]),
        ({"alertname": "A"}, "resolved", "alertmanager", ["a-resolved"]),
        ({"alertname": "A"}, "firing", "pagerduty", ["a", "pd-only"]),
        ({"alertname": "B", "ns": "prod"}, "firing", "events_v2", ["ns-prod", "any"]),
        ({"ns": ""}, "firing", "alertmanager", ["no-ns", "any"]),
        ({}, "resolved", "events_v2", ["no-ns"]),
    ],
)
def test_hand_written_cases(tmp_path, labels, status, source, expected):
    """A small hand-written rulebook gives the same, expected answers both ways."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        """
playbooks: {noop: {}}
rules:
  - {name: a, match: ['alertname="A"'], continue: true, playbook: noop}
  - {name: a-ns, match: ['ns="prod"', 'alertname="A"'], continue: true, playbook: noop}
  - {name: a-resolved, match: ['alertname="A"'], status: resolved, playbook: noop}
  - name: pd-only
    match: ['alertname="A"']
    sources: [pagerduty]
    playbook: noop
  - {name: ns-prod, match: ['ns="prod"'], continue: true, playbook: noop}
  - {name: no-ns, match: ['ns=""'], status: any, continue: true, playbook: noop}
  - {name: any, match: [], playbook: noop}
""",
        encoding="utf-8",
    )
    book = load_rulebook([path], steps=builtin_registry())
    alert = Alert(source, "fp", status, freeze(labels))
    for linear in (False, True):
        assert [m.rule.name for m in book.match(alert, NOW, linear=linear)] == expected


def test_literal_alternation_is_indexed(tmp_path):
    """A rule pinned only by ``team=~"a|b"`` is filed under a and b, not scanned."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "playbooks": {"p": {}},
                "rules": [
                    {"name": "alt", "match": ['team=~"pay|bill"'], "playbook": "p"},
                    {"name": "open", "match": ['team=~"pay.*"'], "playbook": "p"},
                    {"name": "neg", "match": ['team!~"x"'], "playbook": "p"},
                ],
            }
        ),
        encoding="utf-8",
    )
    book = load_rulebook([path], steps=builtin_registry())
    assert book.index.regex_labels == ("team",)
    names = [c.name for c in book.index.candidates({"team": "bill"})]
    assert names == ["alt", "neg"]
    assert [c.name for c in book.index.candidates({"team": "payroll"})] == [
        "open",
        "neg",
    ]
    assert [c.name for c in book.index.candidates({"team": "ops"})] == ["neg"]
    assert [c.name for c in book.index.candidates({})] == ["neg"]


def test_regex_only_rules_are_filed_in_an_automaton(tmp_path):
    """Open regexes go to one RE2 set per label; the most selective one is chosen."""
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "playbooks": {"p": {}},
                "rules": [
                    {
                        "name": "two",
                        "match": ['x=~".*"', 'namespace=~"prod-.*"'],
                        "playbook": "p",
                        "continue": True,
                    },
                    {"name": "empty-ok", "match": ['team=~"a.*|"'], "playbook": "p"},
                ],
            }
        ),
        encoding="utf-8",
    )
    book = load_rulebook([path], steps=builtin_registry())
    two = book.rules[0]
    assert str(book.index.filed_regex(two)) == 'namespace=~"prod-.*"'
    assert book.index.regex_labels == ("namespace", "team")
    # A missing label is matched as "", which "a.*|" accepts.
    assert [c.name for c in book.index.candidates({})] == ["empty-ok"]
    assert [c.name for c in book.index.candidates({"namespace": "prod-eu"})] == [
        "two",
        "empty-ok",
    ]
    assert [c.name for c in book.index.candidates({"team": "b"})] == []


def _book_of(matcher_sets: list[list[str]]) -> Rulebook:
    from receiver.rulebook.matchers import Matcher  # noqa: PLC0415
    from receiver.rulebook.schema import CompiledRule, Playbook, Rule  # noqa: PLC0415

    rules = [
        CompiledRule(
            i,
            Rule.model_validate(
                {
                    "name": f"r{i}",
                    "match": m,
                    "playbook": "p",
                    "status": "any",
                    "continue": True,
                }
            ),
            tuple(Matcher.parse(x) for x in m),
            "generated",
        )
        for i, m in enumerate(matcher_sets)
    ]
    return Rulebook(tuple(rules), {"p": Playbook()})


def _names(book: Rulebook, labels: dict[str, str], *, linear: bool) -> list[str]:
    alert = Alert("alertmanager", "fp", "firing", freeze(labels))
    return [m.rule.name for m in book.match(alert, NOW, linear=linear)]


def test_amtool_vectors_through_the_index():
    """Every amtool conformance vector answers the same through the index."""
    from test_matchers import CONFORMANCE, ERROR, HIT  # noqa: PLC0415

    cases = [(m, labels, exp) for _, m, labels, exp in CONFORMANCE if exp != ERROR]
    # One rulebook holding every vector's matchers as a rule, so each vector's
    # regexes share automata with all the others.
    book = _book_of([m for m, _, _ in cases])
    for i, (matchers, labels, expected) in enumerate(cases):
        indexed = _names(book, labels, linear=False)
        assert indexed == _names(book, labels, linear=True), (matchers, labels)
        assert (f"r{i}" in indexed) == (expected == HIT), (matchers, labels)


def test_oversized_automaton_falls_back_rule_by_rule(monkeypatch):
    """A label whose regexes do not fit one automaton is matched rule by rule."""
    from receiver.rulebook import index  # noqa: PLC0415

    monkeypatch.setattr(index, "SET_MEMORY", 1)
    sets = [[f'team=~"t{i}.*"'] for i in range(50)]
    book = _book_of(sets)
    assert book.index.regex_labels == ("team",)
    for labels in ({"team": "t7x"}, {"team": "t49"}, {}, {"team": "zz"}):
        assert _names(book, labels, linear=False) == _names(book, labels, linear=True)
    assert _names(book, {"team": "t49"}, linear=False) == ["r4", "r49"]


# ------------------------------------------------------------ property

_ATOMS = ["a", "b", "prod", "-", ".", "é", "\\d", "[a-c]", "x?", "(?i)P"]
_LABEL_NAMES = ["namespace", "team", "job"]


@st.composite
def _regex(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_ATOMS), min_size=0, max_size=4))
    tail = draw(st.sampled_from(["", ".*", ".+", "|dev", "|", "(-eu)?"]))
    text = "".join(parts) + tail
    return text.replace("(?i)", "") if "(?i)" in text[1:] else text


@st.composite
def _matchers(draw: st.DrawFn) -> list[str]:
    out = []
    for name in draw(st.lists(st.sampled_from(_LABEL_NAMES), min_size=1, max_size=3)):
        op = draw(st.sampled_from(["=~", "=~", "=~", "!~", "!="]))
        value = draw(_regex()) if "~" in op else draw(st.sampled_from(["a", ""]))
        out.append(f'{name}{op}"{value}"')
    return out


_VALUES = st.text(alphabet=st.sampled_from("abcdprodéP-.1x\n"), max_size=8)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    rules=st.lists(_matchers(), min_size=1, max_size=40),
    alerts=st.lists(
        st.dictionaries(st.sampled_from(_LABEL_NAMES), _VALUES, max_size=3),
        min_size=1,
        max_size=20,
    ),
)
def test_automaton_equals_naive_evaluation(rules, alerts):
    """For generated regex rules and labels, the index equals rule-by-rule matching."""
    from receiver.rulebook.matchers import MatcherError, matches_all  # noqa: PLC0415

    try:
        book = _book_of(rules)
    except MatcherError:
        return  # a generated regex RE2 refuses is not a rule
    for labels in alerts:
        naive = [c.name for c in book.rules if matches_all(c.matchers, labels)]
        assert _names(book, labels, linear=False) == naive
