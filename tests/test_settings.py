"""Settings: names, sources, precedence, the YAML forms, errors, the reference."""

from __future__ import annotations

import json
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

from receiver.cli import main
from receiver.engine.guards import GuardDefaults
from receiver.errors import ConfigError
from receiver.runtime import build_runtime
from receiver.settings import (
    Settings,
    SettingsDeprecationWarning,
    flat_keys,
    groups,
    load_settings,
)
from receiver.settings.reference import render
from receiver.store import Retention
from receiver.web.handlers import Backpressure, EdgeLimits

ROOT = Path(__file__).resolve().parents[1]

# Every variable the receiver has ever read (those documented before settings
# were grouped, then each added since): each must still set its setting. A new
# setting is added here; a name is never taken out.
LEGACY_VARIABLES = [
    "HOST",
    "PORT",
    "RULES",
    "MODE",
    "DIAGNOSTICS_REUSE",
    "AUTH_TOKENS",
    "BASIC_AUTH",
    "READ_TOKENS",
    "REPLAY_TOKENS",
    "APPROVE_TOKENS",
    "ADMIN_TOKENS",
    "APPROVER_TOKENS",
    "PAGERDUTY_SECRETS",
    "ROUTING_KEYS",
    "INCIDENT_TICK_INTERVAL",
    "PAGERDUTY_ALERTNAME_FROM",
    "MAX_BODY_BYTES",
    "MAX_UNAUTHENTICATED_BODY_BYTES",
    "UNAUTHENTICATED_BODY_READS",
    "BODY_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_LABELS",
    "MAX_ANNOTATIONS",
    "MAX_LABEL_VALUE_BYTES",
    "MAX_ANNOTATION_VALUE_BYTES",
    "MAX_ALERT_BYTES",
    "STORE",
    "STORE_ALLOW_EVICTION",
    "WORKERS",
    "RETENTION",
    "RETENTION_PAYLOADS",
    "RETENTION_DECISIONS",
    "JOURNAL_MAX_DEPTH",
    "JOURNAL_MAX_AGE",
    "JOURNAL_SHED_PAUSE",
    "PRUNE_INTERVAL",
    "JOURNAL_LEASE",
    "JOURNAL_MAX_ATTEMPTS",
    "PAUSED",
    "COOLDOWN",
    "BUDGET_MAX",
    "BUDGET_WINDOW",
    "GLOBAL_BUDGET_MAX",
    "GLOBAL_BUDGET_WINDOW",
    "CIRCUIT_FAILURES",
    "CIRCUIT_COOL_OFF",
    "APPROVAL_TTL",
    "APPROVAL_SWEEP",
    "HTTP_ALLOWLIST",
    "ALERTMANAGER_URL",
    "PROMETHEUS_URL",
    "PROMETHEUS_TARGETS",
    "REDIS_TARGETS",
    "REDIS_TIMEOUT",
    "SINKS",
    "PAGERDUTY_API_URL",
    "PAGERDUTY_API_TOKEN",
    "PAGERDUTY_FROM",
    "PAGERDUTY_EVENTS_URL",
    "PAGERDUTY_ROUTING_KEY",
    "SLACK_WEBHOOK_URL",
    "SLACK_SIGNING_SECRET",
    "SLACK_APPROVERS",
    "APPROVAL_ONCALL_TIMEOUT",
    "WEBHOOK_URLS",
    "NOTE_MAX_CHARS",
    "SINK_ATTEMPTS",
    "SINK_MAX_WAIT",
    "SINK_TIMEOUT",
    "NAMESPACES",
    "KUBE_MODE",
    "KUBECONFIG",
    "KUBE_CONTEXT",
    "KUBE_HOST",
    "KUBE_TOKEN_FILE",
    "KUBE_CA_FILE",
    "KUBE_INSECURE",
    "KUBE_REQUEST_TIMEOUT",
    "KUBE_POLL_INTERVAL",
    "KUBE_ALLOWED_KINDS",
    "LOG_FORMAT",
    "LOG_LEVEL",
]


def test_every_setting_keeps_its_variable_name():
    """The flat RECEIVER_* names are exactly those listed: none lost, none unlisted."""
    assert {f"RECEIVER_{k.upper()}" for k in flat_keys()} == {
        f"RECEIVER_{v}" for v in LEGACY_VARIABLES
    }
    fields = sum(len(cls.model_fields) for cls in groups().values())
    assert len(flat_keys()) == fields


@pytest.mark.parametrize(
    ("variable", "raw", "path", "expected"),
    [
        ("RECEIVER_HOST", "::", "server.host", "::"),
        ("RECEIVER_PORT", "9000", "server.port", 9000),
        ("RECEIVER_RULES", "a.yaml,b", "engine.rules", [Path("a.yaml"), Path("b")]),
        ("RECEIVER_PAUSED", "true", "engine.paused", True),
        ("RECEIVER_STORE_ALLOW_EVICTION", "true", "store.allow_eviction", True),
        ("RECEIVER_RETENTION", "3d", "retention.max_age", timedelta(days=3)),
        (
            "RECEIVER_JOURNAL_SHED_PAUSE",
            "250ms",
            "journal.shed_pause",
            timedelta(milliseconds=250),
        ),
        (
            "RECEIVER_PRUNE_INTERVAL",
            "90s",
            "retention.prune_interval",
            timedelta(seconds=90),
        ),
        (
            "RECEIVER_NAMESPACES",
            "prod\nstaging",
            "guards.namespaces",
            ["prod", "staging"],
        ),
        ("RECEIVER_NAMESPACES", "", "guards.namespaces", []),
        ("RECEIVER_KUBECONFIG", "/k/config", "kube.kubeconfig", Path("/k/config")),
        ("RECEIVER_KUBE_ALLOWED_KINDS", "Pod", "kube.allowed_kinds", ["Pod"]),
        ("RECEIVER_SINKS", "slack", "sinks.default", ["slack"]),
        ("RECEIVER_PAGERDUTY_FROM", "a@b.c", "pagerduty.from_email", "a@b.c"),
        (
            "RECEIVER_APPROVAL_ONCALL_TIMEOUT",
            "1s",
            "pagerduty.oncall_timeout",
            timedelta(seconds=1),
        ),
        (
            "RECEIVER_SLACK_APPROVERS",
            "U1=a@b.c,U2=d",
            "slack.approvers",
            {"U1": "a@b.c", "U2": "d"},
        ),
        ("RECEIVER_STORE", "sqlite:///s.db", "store.url", "sqlite:///s.db"),
    ],
)
def test_a_variable_sets_its_grouped_setting(variable, raw, path, expected):
    """Each flat variable, as plain text, lands in its group with its type."""
    env = {variable: raw}
    if variable == "RECEIVER_SINKS":
        env["RECEIVER_SLACK_WEBHOOK_URL"] = "https://hooks.example/x"
    value: object = load_settings(environ=env)
    for part in path.split("."):
        value = getattr(value, part)
    assert value == expected


def test_secret_lists_and_pairs_stay_secret():
    """Token lists and target URLs arrive as secrets, split where written."""
    settings = load_settings(
        environ={
            "RECEIVER_AUTH_TOKENS": "tok-1,tok-2",
            "RECEIVER_REDIS_TARGETS": "app=redis://:pw-7@cache:6379/0",
        }
    )
    assert [t.get_secret_value() for t in settings.auth.tokens] == ["tok-1", "tok-2"]
    assert "pw-7" not in repr(settings)
    assert "pw-7" in settings.secret_values()


def test_a_file_variable_wins_over_the_plain_one(tmp_path):
    """RECEIVER_X_FILE is read (and stripped) instead of RECEIVER_X."""
    path = tmp_path / "tokens"
    path.write_text("from-file-1\nfrom-file-2\n")
    settings = load_settings(
        environ={
            "RECEIVER_AUTH_TOKENS": "plain",
            "RECEIVER_AUTH_TOKENS_FILE": str(path),
            "RECEIVER_KUBE_TOKEN_FILE": "/var/run/token",
        }
    )
    assert [t.get_secret_value() for t in settings.auth.tokens] == [
        "from-file-1",
        "from-file-2",
    ]
    # A setting whose own name ends in _FILE is a plain variable.
    assert settings.kube.token_file == Path("/var/run/token")


def test_an_unreadable_file_variable_names_itself(tmp_path):
    """RECEIVER_X_FILE naming a missing file is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match="RECEIVER_ADMIN_TOKENS_FILE"):
        load_settings(environ={"RECEIVER_ADMIN_TOKENS_FILE": str(tmp_path / "none")})


def test_other_receiver_variables_are_not_settings():
    """RECEIVER_* variables that name no setting (test switches) are left alone."""
    settings = load_settings(
        environ={"RECEIVER_REQUIRE_E2E": "1", "RECEIVER_KUBE__MODE": "host"}
    )
    assert settings == Settings()


def test_precedence_is_defaults_yaml_environment_flags(tmp_path):
    """YAML over defaults, environment over YAML, flags over both; groups merge."""
    config = tmp_path / "receiver.yaml"
    config.write_text(
        "server: {host: example.test, port: 9000}\n"
        "kube: {mode: kubeconfig, context: from-yaml}\n"
        "auth: {tokens: [yaml-token]}\n"
    )
    settings = load_settings(
        config,
        environ={"RECEIVER_PORT": "9100", "RECEIVER_KUBE_CONTEXT": "from-env"},
        overrides={"server": {"port": 9200, "host": None}},
    )
    assert settings.server.host == "example.test"
    assert settings.server.port == 9200
    assert settings.kube.mode == "kubeconfig"
    assert settings.kube.context == "from-env"
    assert settings.server.max_connections == 1000


def test_nested_yaml_loads_without_warnings(tmp_path):
    """The grouped form is the current one: it loads silently."""
    config = tmp_path / "receiver.yaml"
    config.write_text(
        "store: {url: 'sqlite:///s.db'}\n"
        "sinks: {attempts: 2}\n"
        "retention: {max_age: 1d}\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        settings = load_settings(config, environ={})
    assert settings.store.url == "sqlite:///s.db"
    assert settings.sinks.attempts == 2
    assert settings.retention.max_age == timedelta(days=1)


def test_flat_yaml_keys_still_load_with_a_warning_naming_the_new_key(tmp_path):
    """kube_mode: host loads as kube.mode, warning once per key, never a value."""
    config = tmp_path / "receiver.yaml"
    config.write_text(
        "kube_mode: host\nkube_host: https://k8s:6443\nstore: sqlite:///old.db\n"
        "auth_tokens: [flat-secret-5]\nsinks: []\n"
    )
    with pytest.warns(SettingsDeprecationWarning) as caught:
        settings = load_settings(config, environ={})
    messages = [str(w.message) for w in caught]
    assert any("'kube_mode'" in m and "kube: {mode: ...}" in m for m in messages)
    assert any("'store'" in m and "store: {url: ...}" in m for m in messages)
    assert len(messages) == 5
    assert not any("flat-secret-5" in m for m in messages)
    assert settings.kube.mode == "host"
    assert settings.kube.host == "https://k8s:6443"
    assert settings.store.url == "sqlite:///old.db"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kube_mdoe: host", "unknown setting 'kube_mdoe' (did you mean 'kube_mode'?)"),
        ("kube: {mdoe: host}", "unknown setting 'kube.mdoe' (did you mean 'mode'?)"),
        ("serve: {}", "unknown setting 'serve' (did you mean 'server'?)"),
        ("- a list", "must hold a mapping of settings"),
        ("kube: [", "cannot read config file"),
        ("server: {port: 99999}", "server.port (RECEIVER_PORT): Input should be less"),
    ],
)
def test_bad_config_files_name_the_key(tmp_path, text, message):
    """An unknown key, a typo or a bad value fails with the key and a hint."""
    config = tmp_path / "receiver.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert message in str(caught.value)


@pytest.mark.parametrize("value", ["0s", "1ms", "1s", "1999ms"])
def test_a_journal_lease_too_short_to_renew_is_refused(value):
    """0s or a few seconds: refused, naming the setting, the minimum and why."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECEIVER_JOURNAL_LEASE": value})
    message = str(caught.value)
    assert "journal.lease (RECEIVER_JOURNAL_LEASE): must be at least 2s" in message
    assert "renewed every third of it" in message


@pytest.mark.parametrize(("value", "seconds"), [("2s", 2), ("5m", 300)])
def test_a_journal_lease_of_2s_or_more_loads(value, seconds):
    """The minimum itself, and the default, load."""
    settings = load_settings(environ={"RECEIVER_JOURNAL_LEASE": value})
    assert settings.journal.lease.total_seconds() == seconds


def test_a_missing_config_file_is_an_error(tmp_path):
    """--config naming no file fails rather than silently using defaults."""
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_a_config_that_is_a_directory_says_so(tmp_path):
    """--config naming a directory says so, not "no such file"."""
    with pytest.raises(ConfigError, match="it is a directory"):
        load_settings(tmp_path, environ={})


def test_defaults_are_stated_once():
    """The engine's, store's and edge's own defaults are the settings' defaults."""
    runtime = build_runtime(Settings())
    assert runtime.guards == GuardDefaults()
    assert runtime.retention == Retention()
    assert runtime.limits == EdgeLimits()
    assert runtime.backpressure == Backpressure()


def test_replay_honours_the_namespace_allowlist(tmp_path, capsys):
    """`receiver replay` applies the settings' namespace allowlist, as serve does."""
    example = ROOT / "examples" / "alertmanager" / "sark-api-down.firing.json"
    args = ["replay", "--json", "--rules", str(ROOT / "rules"), str(example)]
    args += ["--at", "2026-11-26T10:20:00Z"]

    def k8s_steps(extra: list[str]) -> list[dict[str, str]]:
        capsys.readouterr()
        assert main([*args, *extra]) == 0
        trace = json.loads(capsys.readouterr().out)
        return [
            step
            for alert in trace["alerts"]
            for match in alert["matches"]
            for step in match["steps"]
            if step["type"].startswith("k8s.")
        ]

    config = tmp_path / "receiver.yaml"
    config.write_text("guards: {namespaces: [staging]}\n")
    open_steps = k8s_steps([])
    assert open_steps
    assert not any("not allowed" in s["reason"] for s in open_steps)
    fenced = k8s_steps(["--config", str(config)])
    assert len(fenced) == len(open_steps)
    for step in fenced:
        assert step["decision"] == "skipped"
        assert "namespace 'production' is not allowed" in step["reason"]


def test_the_settings_reference_is_current():
    """docs/settings.md is what scripts/settings-reference.py renders now."""
    assert (ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == render(), (
        "docs/settings.md is stale: run .venv/bin/python scripts/settings-reference.py"
    )


def test_the_reference_lists_every_setting():
    """Each field appears with its key, variable and description."""
    text = render()
    for group, cls in groups().items():
        for field, info in cls.model_fields.items():
            assert info.description, f"{group}.{field} has no description"
            assert f"| `{group}.{field}` | `{cls.env_name(field)}` |" in text


def test_the_references_yaml_example_loads(tmp_path):
    """The YAML example in docs/settings.md is a valid settings file."""
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    blocks = text.split("```yaml\n")[1:]
    assert blocks
    for block in blocks:
        config = tmp_path / "example.yaml"
        config.write_text(block.split("```", 1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            settings = load_settings(config, environ={})
        assert settings.kube.mode == "in-cluster"


def test_serve_logs_each_deprecated_key(tmp_path, capsys):
    """`receiver serve` with flat YAML keys logs setting_deprecated per key."""
    config = tmp_path / "receiver.yaml"
    config.write_text("log_level: warning\nstore: 'sqlite:///:memory:'\n")
    code = main(
        ["serve", "--config", str(config), "--rules", str(tmp_path / "missing")]
    )
    assert code == 1
    logged = capsys.readouterr()
    text = logged.out + logged.err
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    deprecated = [line for line in lines if line["event"] == "setting_deprecated"]
    assert len(deprecated) == 2
    assert "server: {log_level: ...}" in deprecated[0]["detail"]
    assert any(line["event"] == "serve_failed" for line in lines)


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        (
            "RECEIVER_REDIS_TARGETS",
            "cache=redis://:s3cretpart/rest@redis:6379/0",
            "redis.targets['cache']",
        ),
        (
            "RECEIVER_PROMETHEUS_TARGETS",
            "p=http://user:s3cretpart#rest@prom:9090",
            "prometheus.targets['p']",
        ),
        (
            "RECEIVER_WEBHOOK_URLS",
            "https://hook:s3cretpart?rest@example.com/x",
            "sinks.webhook_urls[0]",
        ),
    ],
)
def test_a_url_whose_password_breaks_it_is_refused_without_the_password(
    variable, value, setting
):
    """An unencoded / # or ? in a password: refused, naming the setting, not the URL.

    Read as given, the URL has no password to redact and a 'port' holding part
    of it, which later errors printed.
    """
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={variable: value})
    assert setting in str(caught.value)
    assert "percent-encode" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    encoded = value.replace("s3cretpart/rest", "s3cretpart%2Frest")
    encoded = encoded.replace("s3cretpart#rest", "s3cretpart%23rest")
    encoded = encoded.replace("s3cretpart?rest", "s3cretpart%3Frest")
    load_settings(environ={variable: encoded})  # encoded, it loads
