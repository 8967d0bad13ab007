"""``receiver rules test``, in the spirit of ``promtool test rules``.

A test file may name its rule files, so it runs on its own; failures say per
field what was expected and what came out; cases may set ``endsAt`` and assert
planned steps and their decisions; a schema error fails only its own case.
"""

from __future__ import annotations

from pathlib import Path

from receiver.cli import main

ROOT = Path(__file__).resolve().parents[1]

RULES = """
playbooks:
  restart:
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
    remediation:
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
    guards: {require_firing_for: 5m}
rules:
  - name: crashloop
    match: ['alertname="CrashLoop"']
    status: any
    severity: P1
    playbook: restart
"""

CASES = """
rule_files: [rules/crash.yaml]
tests:
  - name: passes
    at: 2026-01-01T10:10:00Z
    alert:
      labels: {alertname: CrashLoop, namespace: prod, deployment: api}
      startsAt: 2026-01-01T10:00:00Z
    expect:
      - rule: crashloop
        severity: P1
        playbook: restart
        steps:
          - {type: k8s.pods, decision: dry_run}
          - type: k8s.rollout_restart
            decision: dry_run
            reason_contains: would rollout restart deployment/api
  - name: wrong severity and decision
    at: 2026-01-01T10:10:00Z
    execute: true
    alert:
      labels: {alertname: CrashLoop, namespace: prod, deployment: api}
      startsAt: 2026-01-01T10:09:00Z
    expect:
      - rule: crashloop
        severity: P0
        steps:
          - {type: k8s.pods, decision: run}
          - {type: k8s.rollout_restart, decision: run}
  - name: a typo in this case only
    alert:
      labels: {alertname: CrashLoop}
      startAt: 2026-01-01T10:00:00Z
    expect: []
  - name: ended alerts never remediate
    at: 2026-01-01T12:00:00Z
    execute: true
    alert:
      labels: {alertname: CrashLoop, namespace: prod, deployment: api}
      status: resolved
      startsAt: 2026-01-01T10:00:00Z
      endsAt: 2026-01-01T10:30:00Z
    expect:
      - rule: crashloop
        steps:
          - {type: k8s.pods, decision: run}
          - type: k8s.rollout_restart
            decision: skipped
            reason_contains: alert resolved
  - name: nothing matches but something was expected
    alert:
      labels: {alertname: Other}
    expect:
      - {rule: crashloop}
"""


def _write(tmp_path: Path) -> Path:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "crash.yaml").write_text(RULES)
    test = tmp_path / "crash.test.yaml"
    test.write_text(CASES)
    return test


def test_runbook_test_file_runs_on_its_own(capsys):
    """The runbook's test file names its rule file and passes when run alone."""
    code = main(["rules", "test", str(ROOT / "rules/tests/runbook.test.yaml")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.rstrip().endswith(" 0 failed"), out


def test_failures_say_expected_and_got_per_field(tmp_path, capsys):
    """Each differing field is one line: expected this, got that."""
    code = main(["rules", "test", str(_write(tmp_path))])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert any(line.endswith(": passes") and line.startswith("PASS") for line in lines)
    assert any(
        line.startswith("PASS") and line.endswith("ended alerts never remediate")
        for line in lines
    ), out
    block = out.split("wrong severity and decision\n", 1)[1].split("FAIL", 1)[0]
    assert "  match 1 severity: expected P0, got P1" in block
    assert (
        "  match 1 step 2 (k8s.rollout_restart) decision: expected run, got skipped"
        in block
    )
    assert "  match 1 step 1" not in block  # the diagnostic matched
    assert "matches: expected 1 (crashloop), got 0 (none)" in out
    assert out.rstrip().endswith("2 passed, 3 failed"), out


def test_schema_error_fails_only_its_case(tmp_path, capsys):
    """A typo in one case fails that case, naming the field; the rest still run."""
    main(["rules", "test", str(_write(tmp_path))])
    out = capsys.readouterr().out
    assert "FAIL" in out
    typo = out.split("a typo in this case only\n", 1)[1].splitlines()
    assert typo[0].startswith("  alert.startAt: Extra inputs are not permitted")
    assert "PASS" in out.split("a typo in this case only", 1)[1]


def test_missing_rule_files_fail_the_file(tmp_path, capsys):
    """rule_files that do not load fail the file, saying which and why."""
    test = tmp_path / "x.test.yaml"
    test.write_text(
        "rule_files: [nope.yaml]\ntests:\n  - {name: a, alert: {labels: {}}, "
        "expect: []}\n"
    )
    assert main(["rules", "test", str(test)]) == 1
    out = capsys.readouterr().out
    assert "rule_files do not load" in out
    assert "nope.yaml" in out


def test_file_without_rules_says_where_to_name_them(tmp_path, capsys):
    """A test file alone, naming no rule files, says how to give it rules."""
    test = tmp_path / "x.test.yaml"
    test.write_text("tests:\n  - {name: a, alert: {labels: {}}, expect: []}\n")
    assert main(["rules", "test", str(test)]) == 1
    assert "rule_files" in capsys.readouterr().out
