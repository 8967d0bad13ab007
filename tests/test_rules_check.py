"""`receiver rules check` on good and bad rule files: exit code and located errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from receiver.cli import main
from receiver.errors import RuleError
from receiver.rulebook.loader import load_rulebook

FIXTURES = Path(__file__).parent / "fixtures" / "rules"
GOOD = FIXTURES / "good"
BAD = FIXTURES / "bad"

# fixture file -> (rule named in the error or None for playbook errors,
#                  field path, message fragment)
BAD_CASES: dict[str, tuple[str | None, str, str]] = {
    "unknown_field.yaml": ("typo-rule", "rules[0].contnue", "unknown field"),
    "unknown_step_type.yaml": (
        None,
        "playbooks.restart.remediation[0]",
        "unknown step type 'k8s.explode'; expected one of",
    ),
    "bad_matcher.yaml": (
        "no-operator",
        "rules[0].match[1]",
        "bad matcher format: 'namespace'",
    ),
    "bad_regex.yaml": (
        "lookahead",
        "rules[0].match[0]",
        "invalid regex 'prod(?!-canary).*': invalid perl operator",
    ),
    "missing_playbook.yaml": (
        "orphan",
        "rules[0].playbook",
        "unknown playbook 'restart-api' (known:",
    ),
    "playbook_field_missing.yaml": ("no-playbook", "rules[0].playbook", "required"),
    "duplicate_rule.yaml": ("twice", "rules[1].name", "duplicate rule name"),
    "bad_severity.yaml": ("too-low", "rules[0].severity", "'P0', 'P1', 'P2' or 'P3'"),
    "diagnostic_under_remediation.yaml": (
        None,
        "playbooks.mixed.remediation",
        "step 0 (k8s.pods) only reads; list it under diagnostics",
    ),
    "remediation_under_diagnostics.yaml": (
        None,
        "playbooks.sneaky.diagnostics",
        "step 0 (k8s.rollout_restart) changes things; list it under remediation",
    ),
    "delete_pattern_bare_star.yaml": (
        None,
        "playbooks.flush.remediation[0].pattern",
        "pattern '*' has no literal prefix",
    ),
    "template_empty_label.yaml": (
        None,
        "playbooks.pods.diagnostics[0].namespace",
        "bad placeholder '{labels.}'",
    ),
    "template_unknown_alert_field.yaml": (
        None,
        "playbooks.query.diagnostics[0].query",
        "unknown placeholder '{alert.nope}'",
    ),
    "scale_min_above_max.yaml": (
        None,
        "playbooks.scale.remediation[0]",
        "min (5) is above max (2)",
    ),
    "incidents_bad_duration.yaml": (
        None,
        "incidents.severities.P1.acknowledge",
        "duration",
    ),
    "incidents_bad_shift_change.yaml": (
        None,
        "incidents.shift_changes[0]",
        "'9am' is not a time of day; write HH:MM (UTC)",
    ),
    "template_in_a_field_without_a_slot.yaml": (
        None,
        "playbooks.hook.remediation[0].json",
        (
            "this field takes no templates: it declares no slot grammar, so "
            "{alert.fingerprint} cannot be filled safely"
        ),
    ),
    "template_promql_outside_a_string.yaml": (
        None,
        "playbooks.promql-window.diagnostics[0].query",
        "{labels.window} is outside a quoted string",
    ),
    "template_url_port.yaml": (
        None,
        "playbooks.probe.diagnostics[0].url",
        "{labels.port} is in the user info or port of the URL",
    ),
    "one_of_value_outside_its_slot.yaml": (
        None,
        "playbooks.breaker.labels.siem.one_of",
        "'x:y' is not a Redis key part: it contains ':'",
    ),
    "namespace_not_dns1123.yaml": (
        None,
        "playbooks.uppercase-namespace.diagnostics[0].namespace",
        "'Production' is not a DNS-1123 label",
    ),
    "duration_too_large.yaml": (
        None,
        "playbooks.long-cooldown.guards.cooldown",
        "duration '99999999999999999999d' is too large; the most is 999999999 days",
    ),
    "duration_non_ascii_digit.yaml": (
        None,
        "playbooks.arabic-five.guards.require_firing_for",
        "invalid duration '\u0665m'; use ASCII digits",
    ),
    "one_of_value_outside_a_param_slot.yaml": (
        None,
        "playbooks.param-breaker.labels.siem.one_of",
        "'x:y' is not a Redis key part: it contains ':'",
    ),
    "param_unused.yaml": (
        None,
        "playbooks.param-unused.params.replicas",
        "parameter is never used by a step",
    ),
    "param_undeclared.yaml": (
        None,
        "playbooks.param-undeclared.diagnostics[1].namespace",
        "{params.ns} names no declared parameter (declared: namespace)",
    ),
    "param_missing.yaml": (
        "forgets-deployment",
        "rules[0].with.deployment",
        "missing: the parameter has no default",
    ),
    "param_unknown_in_with.yaml": (
        "typo-in-with",
        "rules[0].with.nmspace",
        "unknown parameter (this playbook declares: namespace)",
    ),
    "param_wrong_type.yaml": (
        "upper-case-namespace",
        "rules[0].with.namespace",
        "'Prod' is not a namespace: 'Prod' is not a DNS-1123 label",
    ),
    "param_bad_default.yaml": (
        None,
        "playbooks.param-bad-default.params.namespace.default",
        "its default: 'Prod_1' is not a DNS-1123 label",
    ),
    "param_does_not_fit_its_slot.yaml": (
        "spaced-namespace",
        "rules[0].with.where",
        (
            "cannot fill playbooks.param-does-not-fit-its-slot.diagnostics[0]"
            ".namespace: 'a b' is not a Kubernetes namespace: it contains whitespace"
        ),
    ),
    "param_binding_needs_a_name.yaml": (
        "production",
        "rules[1].with",
        (
            "rule staging runs 'param-binding-needs-a-name' with other values; "
            "name this binding with `as:`"
        ),
    ),
    "param_as_names_another_playbook.yaml": (
        "shadowing",
        "rules[0].as",
        "'param-as-names-another-playbook-events' is already a playbook's name",
    ),
    "param_binding_described_twice.yaml": (
        "by-title",
        "rules[1].as.description",
        "rule by-key describes 'production-pods' otherwise",
    ),
    "param_binding_description_unknown_field.yaml": (
        "typo-in-as",
        "rules[0].as.descripton",
        "unknown field",
    ),
    "template_default_outside_its_slot.yaml": (
        None,
        "playbooks.template-default-outside-its-slot.diagnostics[0].namespace",
        "the default 'Prod' of {labels.namespace|Prod} is not a Kubernetes namespace",
    ),
    "multiple_matchers_in_one_item.yaml": (
        "comma-item",
        "rules[0].match[0]",
        "holds 2 matchers; put exactly one matcher in each list item",
    ),
}

MINIMAL = """\
playbooks:
  noop: {}
rules:
  - name: r1
    match: ['alertname="X"', 'namespace=~"prod.*"']
    severity: P2
    playbook: noop
"""


def test_every_bad_fixture_has_an_expectation():
    """Each file under fixtures/rules/bad has an expected error here, and back."""
    assert {p.name for p in BAD.glob("*.yaml")} == set(BAD_CASES)


def _users(path, field, rule):
    """Playbook errors name the rules that use the playbook (if any do)."""
    if rule is not None or not field.startswith("playbooks."):
        return rule
    playbook = field.split(".")[1]
    rules = yaml.safe_load(path.read_text()).get("rules") or []
    users = [r["name"] for r in rules if r.get("playbook") == playbook]
    return ", ".join(users) or None


@pytest.mark.parametrize(("name", "expected"), sorted(BAD_CASES.items()))
def test_bad_fixture(capsys, name, expected):
    """`receiver rules check` exits 1 and names the file, the rule and the field."""
    rule, field, fragment = expected
    rule = _users(BAD / name, field, rule)
    path = BAD / name
    assert main(["rules", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    [line] = lines
    prefix = f"error: {path}: "
    if rule is not None:
        prefix += f"rule {rule!r}: "
    assert line.startswith(prefix + f"{field}: "), line
    assert fragment in line


@pytest.mark.parametrize(("name", "expected"), sorted(BAD_CASES.items()))
def test_bad_fixture_rule_error_details(name, expected):
    """load_rulebook raises one RuleError detail with file, rule and field set."""
    rule, field, fragment = expected
    rule = _users(BAD / name, field, rule)
    with pytest.raises(RuleError) as info:
        load_rulebook([BAD / name])
    [detail] = info.value.details
    assert detail.file == str(BAD / name)
    assert detail.rule == rule
    assert detail.field == field
    assert fragment in detail.message


def test_bad_directory_lists_every_problem(capsys):
    """Checking the whole bad directory reports every file's problem at once."""
    assert main(["rules", "check", str(BAD)]) == 1
    err = capsys.readouterr().err
    for name, (_, _, fragment) in BAD_CASES.items():
        assert f"{BAD / name}: " in err
        assert fragment in err


def test_minimal_file_from_the_issue(tmp_path, capsys):
    """The minimal rule file from the issue is valid."""
    path = tmp_path / "minimal.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert main(["rules", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "ok: 1 rules, 1 playbooks in 1 files"
    assert err == ""
    assert (GOOD / "minimal.yaml").read_text(encoding="utf-8").endswith(MINIMAL)


@pytest.mark.parametrize("path", sorted(GOOD.glob("*.yaml")), ids=lambda p: p.name)
def test_good_fixture(path, capsys):
    """Every good fixture passes rules check on its own."""
    assert main(["rules", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: ")
    assert err == ""


def test_good_directory(capsys):
    """The good directory passes as a whole (no duplicates across files)."""
    assert main(["rules", "check", str(GOOD)]) == 0
    book = load_rulebook([GOOD])
    out = capsys.readouterr().out
    assert out.strip() == (
        f"ok: {len(book.rules)} rules, {len(book.playbooks)} playbooks in "
        f"{len(book.files)} files"
    )
    assert "r1" in {r.name for r in book.rules}


def test_duplicate_rule_across_files(tmp_path, capsys):
    """A rule name reused in another file is an error naming the first file."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(MINIMAL, encoding="utf-8")
    second.write_text(
        "rules:\n  - name: r1\n    match: ['a=\"b\"']\n    playbook: noop\n",
        encoding="utf-8",
    )
    assert main(["rules", "check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"error: {second}: rule 'r1': rules[0].name: duplicate rule name" in err
    assert f"(first in {first})" in err


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("rules: [", "invalid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("rulez: []\n", "unknown top-level field"),
        ("rules: {r1: x}\n", "must be a list of rules"),
        ("playbooks: [noop]\n", "must be a mapping of name to playbook"),
    ],
)
def test_file_level_errors(tmp_path, capsys, text, fragment):
    """Broken files are reported with the file name and what is wrong."""
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["rules", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"error: {path}" in err
    assert fragment in err


def test_missing_and_empty_paths(tmp_path, capsys):
    """A missing file or a directory without rule files is an error, not ok."""
    assert main(["rules", "check", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    assert main(["rules", "check", str(tmp_path)]) == 1
    assert "no rule files" in capsys.readouterr().err


def test_several_errors_in_one_file_all_reported(tmp_path, capsys):
    """Every problem in a file is listed, not just the first."""
    path = tmp_path / "many.yaml"
    path.write_text(
        "playbooks:\n  noop: {}\nrules:\n"
        "  - name: a\n    match: ['x']\n    playbook: noop\n"
        "  - name: b\n    match: ['y=\"1\"']\n    playbook: nope\n"
        "  - name: c\n    match: ['z=\"1\"']\n    playbook: noop\n    severity: P9\n",
        encoding="utf-8",
    )
    assert main(["rules", "check", str(path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert any("rule 'a'" in line and "bad matcher format" in line for line in lines)
    assert any("rule 'b'" in line and "unknown playbook" in line for line in lines)
    assert any("rule 'c'" in line and "severity" in line for line in lines)


PARAMS_ALL_WRONG = """\
playbooks:
  pods:
    params:
      namespace: {type: namespace}
      replicas: {type: text, default: "3"}
    diagnostics:
      - type: k8s.pods
        namespace: "{params.namespace}"
        workload: "{params.app}"
rules:
  - name: first
    match: ['alertname="X"']
    playbook: pods
  - name: second
    match: ['alertname="Y"']
    playbook: pods
    with: {namespace: production}
    as: pods-production
"""


def test_unused_undeclared_and_missing_params_are_reported_together(tmp_path, capsys):
    """Each parameter problem of a pack is its own line with rule and field."""
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_ALL_WRONG, encoding="utf-8")
    assert main(["rules", "check", str(path)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    users = "rule 'first, second'"
    assert sorted(lines) == sorted(
        [
            (
                f"error: {path}: {users}: playbooks.pods.diagnostics[0].workload: "
                "{params.app} names no declared parameter (declared: namespace, "
                "replicas); add it under params"
            ),
            (
                f"error: {path}: {users}: playbooks.pods.params.replicas: "
                "parameter is never used by a step; remove it"
            ),
        ]
    ), "a broken playbook is not bound, so its rules report nothing more"
    path.write_text(
        PARAMS_ALL_WRONG.replace("{params.app}", "api").replace(
            '      replicas: {type: text, default: "3"}\n', ""
        ),
        encoding="utf-8",
    )
    assert main(["rules", "check", str(path)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: {path}: rule 'first': rules[0].with.namespace: missing: the "
        "parameter has no default"
    ), "the rule passing it is fine; only the one forgetting it is named"


def test_params_used_only_by_a_verify_or_a_list_field_are_used(tmp_path, capsys):
    """A parameter that fills a verify check or a list item is not reported unused."""
    path = tmp_path / "verify.yaml"
    path.write_text(
        """\
playbooks:
  breaker:
    params:
      siem: {type: redis_key_part, default: splunk}
      namespace: {type: namespace, default: production}
    diagnostics:
      - type: redis.get
        keys: ["circuit:{params.siem}:state"]
    remediation:
      - type: redis.reset_circuit_breaker
        breaker: splunk
        verify:
          type: prometheus.query
          query: sum(up{namespace="{params.namespace}"})
          condition: "> 0"
          timeout: 1m
rules:
  - name: r
    match: ['alertname="X"']
    playbook: breaker
""",
        encoding="utf-8",
    )
    assert main(["rules", "check", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("ok: 1 rules, 1 playbooks")
