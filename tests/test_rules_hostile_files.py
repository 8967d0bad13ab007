"""Hostile rule and rule-test files are refused with file and reason, quickly.

Non-UTF-8 text, duplicate keys, deep nesting, alias bombs, self-referring
aliases and oversized files: each is one ``RuleError`` detail naming the file,
never a traceback, never a hang, never silently taken.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.cli import main
from receiver.errors import RuleError
from receiver.rulebook import loader
from receiver.rulebook.loader import load_rulebook
from receiver.rulebook.ruletest import run_file
from receiver.steps.catalog import builtin_registry

GOOD = "playbooks:\n  noop: {}\nrules:\n  - name: r1\n    playbook: noop\n"
# Ten to the eighth strings once expanded, in a playbook's http.request body
# (any JSON), where validation would walk every one of them.
BOMB = (
    "playbooks:\n  p:\n    remediation:\n      - type: http.request\n"
    "        url: https://example.com/x\n        json:\n"
    '          x0: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
    + "".join(
        f"          x{i}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
        for i, (a, b) in enumerate(zip("abcdefg", "bcdefgh", strict=True), 1)
    )
    + "rules:\n  - name: r\n    playbook: p\n"
)
# Each anchor 30 levels deep, each holding the one before: 90 once expanded.
DEEP_ALIASES = "".join(
    f"{name}: &{name} " + "[" * 30 + (f"*{before}" if before else "x") + "]" * 30 + "\n"
    for before, name in [("", "a"), ("a", "b"), ("b", "c")]
)


def _refused(tmp_path: Path, content: str | bytes, name: str = "bad.yaml") -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(RuleError) as info:
        load_rulebook([path], steps=builtin_registry())
    [detail] = info.value.details
    assert detail.file == str(path)
    return detail.message


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            GOOD.replace("noop\n", 'noop\n    match: ["a=\\"\xff\\""]\n').encode(
                "latin-1"
            ),
            "is not UTF-8 text",
        ),
        (GOOD + "    severity: P1\n    severity: P3\n", "duplicate key 'severity'"),
        ("playbooks: {noop: {}, noop: {description: x}}\n", "duplicate key 'noop'"),
        ("rules: " + "[" * 5000 + "]" * 5000 + "\n", "nests too deeply"),
        ("rules: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nests too deeply"),
        (BOMB, "expands to more than"),
        ("playbooks: &a {noop: *a}\n", "refers to a value that contains it"),
        (DEEP_ALIASES, "once its aliases are expanded"),
    ],
    ids=[
        *["non-utf8", "dup-key", "dup-flow", "deep-list", "deep-map", "bomb"],
        *["cycle", "deep-aliases"],
    ],
)
def test_hostile_rule_files_are_refused_with_a_reason(tmp_path, content, fragment):
    """Each is one detail naming the file and what is wrong."""
    assert fragment in _refused(tmp_path, content)


def test_a_file_past_the_size_bound_is_refused(tmp_path, monkeypatch):
    """An oversized file is refused without being read whole."""
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 1000)
    assert "larger than" in _refused(tmp_path, GOOD + "#" * 2000 + "\n")


def test_anchors_and_merge_keys_still_load(tmp_path):
    """Legitimate aliases (``as: *prod``) and merge keys are fine."""
    path = tmp_path / "ok.yaml"
    path.write_text(
        "playbooks:\n  noop: &base {description: d}\n"
        "  other: {<<: *base, runbook_url: https://x}\n"
        "rules:\n"
        "  - {name: a, playbook: noop, as: &prod {name: n, description: x}}\n"
        "  - {name: b, playbook: noop, as: *prod}\n",
        encoding="utf-8",
    )
    book = load_rulebook([path], steps=builtin_registry())
    assert [r.name for r in book.rules] == ["a", "b"]
    assert book.playbooks["other"].description == "d"


def test_rules_check_says_it_in_one_line(tmp_path, capsys):
    """The CLI prints one error line and exits 1, without a traceback."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"rules: []\n# caf\xe9\n")
    assert main(["rules", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    expected = (
        f"error: {path}: is not UTF-8 text (invalid continuation byte at byte 15); "
        "save it as UTF-8"
    )
    assert err.strip().splitlines() == [expected]


def test_a_hostile_rule_test_file_fails_as_a_file(tmp_path):
    """A rule test file that is not UTF-8, or repeats a key, is a failed file."""
    latin = tmp_path / "a.test.yaml"
    latin.write_bytes(b"tests: []\n# caf\xe9\n")
    [result] = run_file(latin, None, steps=builtin_registry())
    assert not result.ok
    assert "is not UTF-8 text" in result.message
    dup = tmp_path / "b.test.yaml"
    dup.write_text("tests: []\ntests: []\n", encoding="utf-8")
    [result] = run_file(dup, None, steps=builtin_registry())
    assert "duplicate key 'tests'" in result.message


def test_rule_test_times_without_an_offset_are_utc(tmp_path, monkeypatch):
    """``at``/``startsAt`` without an offset are UTC whatever the local zone."""
    monkeypatch.setenv("TZ", "America/New_York")
    import time  # noqa: PLC0415

    time.tzset()
    try:
        rules = tmp_path / "r.yaml"
        rules.write_text(
            "playbooks: {noop: {}}\nrules:\n  - name: m\n    playbook: noop\n"
            "    severity: {matrix: impact_duration}\n",
            encoding="utf-8",
        )
        case = tmp_path / "c.test.yaml"
        case.write_text(
            "rule_files: [r.yaml]\ntests:\n  - name: ten minutes\n"
            "    at: 2026-11-26T10:10:00\n"
            "    alert: {labels: {a: b}, startsAt: '2026-11-26T10:00:00Z'}\n"
            "    expect: [{rule: m, severity: P1}]\n",
            encoding="utf-8",
        )
        [result] = run_file(case, None, steps=builtin_registry())
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert result.ok, result.problems
