"""Typed template slots: what each step field takes, at load and at render time."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from receiver.errors import RenderError, SlotError
from receiver.model import Alert, freeze
from receiver.rulebook.schema import Playbook, playbook_model
from receiver.rulebook.steps import HttpVerify, PrometheusVerify, template_fields
from receiver.rulebook.templates import (
    GRAMMARS,
    Slot,
    check_slot_template,
    parse_duration,
    promql_string,
    quote_meta,
)
from receiver.steps.catalog import builtin_registry
from receiver.steps.http.get import HttpGet
from receiver.steps.http.request import HttpRequest
from receiver.steps.k8s.delete_pod import K8sDeletePod
from receiver.steps.k8s.pods import K8sPods
from receiver.steps.k8s.scale import K8sScale
from receiver.steps.prometheus.query import PrometheusQuery
from receiver.steps.redis.delete_pattern import RedisDeletePattern
from receiver.steps.redis.get import RedisGet
from receiver.steps.redis.reset_circuit_breaker import RedisResetCircuitBreaker

STEP_TYPES_REGISTRY = builtin_registry()
STEP_TYPES = STEP_TYPES_REGISTRY.steps


def alert(**labels: str) -> Alert:
    return Alert(
        source="alertmanager",
        fingerprint="0123abcd",
        status="firing",
        labels=freeze(labels),
        annotations=freeze({"summary": "a b"}),
    )


# ----------------------------------------------------------------- render time

REFUSED = [
    # (step, labels, message fragment)
    (
        HttpRequest(url="https://h.test/api/breakers/{labels.breaker}/reset"),
        {"breaker": "../../admin/shutdown?all=true#"},
        (
            "label breaker='../../admin/shutdown?all=true#' for url is not a URL path "
            "segment: it contains '/'; step not run"
        ),
    ),
    (
        HttpRequest(url="https://h.test/api/breakers/{labels.breaker}/reset"),
        {"breaker": ".."},
        "is not a URL path segment: it contains '..'",
    ),
    (
        HttpRequest(url="https://h.test/api/{labels.breaker}"),
        {"breaker": "."},
        "'.' would name the current path segment",
    ),
    (
        HttpRequest(url="https://h.test/api/{labels.breaker}"),
        {"breaker": "a?b"},
        "it contains '?'",
    ),
    (
        HttpRequest(url="https://h.test/api/{labels.breaker}"),
        {"breaker": "a#"},
        "it contains '#'",
    ),
    (
        HttpRequest(url="https://h.test/api/{labels.breaker}"),
        {"breaker": "a\\b"},
        "it contains '\\\\'",
    ),
    (
        HttpRequest(url="https://h.test/api/{labels.breaker}"),
        {"breaker": "a\r\nHost: evil"},
        "it contains whitespace ('\\r')",
    ),
    (
        HttpGet(url="http://{labels.host}/health"),
        {"host": "h.test:99999"},
        "label host='h.test:99999' for url is not a host name: it contains ':'",
    ),
    (
        HttpGet(url="http://{labels.host}/health"),
        {"host": "h.test\n"},
        "is not a host name: it contains whitespace ('\\n')",
    ),
    (
        HttpGet(url="http://{labels.host}/health"),
        {"host": "a..b"},
        "'a..b' is not a valid host name",
    ),
    (
        RedisResetCircuitBreaker(breaker="{labels.siem}"),
        {"siem": "x:y"},
        "label siem='x:y' for breaker is not a Redis key part: it contains ':'",
    ),
    (
        RedisGet(keys=["circuit:{labels.siem}:state"]),
        {"siem": "*"},
        "it contains the glob character '*'",
    ),
    (
        RedisDeletePattern(pattern="policy:{labels.tenant}:*"),
        {"tenant": "a[bc]"},
        "it contains the glob character '['",
    ),
    (
        RedisGet(keys=["circuit:{labels.siem}:state"]),
        {"siem": "x" * 129},
        "it is longer than 128 characters",
    ),
    (
        K8sPods(namespace="{labels.namespace}", workload="sark"),
        {"namespace": "production\n"},
        (
            "label namespace='production\\n' for namespace is not a Kubernetes "
            "namespace: it contains whitespace ('\\n')"
        ),
    ),
    (
        K8sPods(namespace="production", workload="{labels.deployment}"),
        {"deployment": "Sark"},
        "is not a Kubernetes name: it contains 'S'",
    ),
    (
        K8sPods(namespace="production", workload="{labels.deployment}"),
        {"deployment": "x" * 254},
        "is not a DNS-1123 subdomain",
    ),
    (
        K8sDeletePod(namespace="production", selector="app={labels.app}"),
        {"app": "x,tier!=db"},
        "is not a Kubernetes label value: it contains ','",
    ),
    (
        PrometheusQuery(query='up{job="{labels.job}"}'),
        {"job": "a\ud800"},
        "it is not valid Unicode text",
    ),
]


@pytest.mark.parametrize(("step", "labels", "fragment"), REFUSED)
def test_a_value_outside_its_slot_is_a_slot_error_naming_label_and_field(
    step, labels, fragment
):
    """Each grammar refuses what could change the step, saying which label and why."""
    with pytest.raises(SlotError) as info:
        step.rendered(alert(**labels))
    assert fragment in str(info.value)
    assert str(info.value).endswith("; step not run")
    assert info.value.name in labels


ACCEPTED = [
    (
        HttpRequest(url="https://h.test/api/breakers/{labels.breaker}/reset"),
        {"breaker": "payments%2F"},
        "url",
        "https://h.test/api/breakers/payments%252F/reset",
    ),
    (
        HttpRequest(url="https://h.test/api/breakers/{labels.breaker}/reset"),
        {"breaker": "siem:splunk@1"},
        "url",
        "https://h.test/api/breakers/siem%3Asplunk%401/reset",
    ),
    (
        HttpRequest(url="https://h.test/run?who={labels.who}&x=1"),
        {"who": "a&b=c#d /e"},
        "url",
        "https://h.test/run?who=a%26b%3Dc%23d%20%2Fe&x=1",
    ),
    (
        HttpGet(url="http://{labels.host}:8080/health"),
        {"host": "sark.example.test"},
        "url",
        "http://sark.example.test:8080/health",
    ),
    (
        PrometheusQuery(query='up{job="{labels.job}"}'),
        {"job": 'a"} or vector(1) # \\'},
        "query",
        'up{job="a\\"} or vector(1) # \\\\"}',
    ),
    (
        PrometheusQuery(query="up{job='{labels.job}'}"),
        {"job": "it's\n"},
        "query",
        "up{job='it\\'s\\n'}",
    ),
    (
        PrometheusQuery(query='up{pod=~"{labels.deployment}-.*"}'),
        {"deployment": ".*|kube-.*"},
        "query",
        'up{pod=~"\\\\.\\\\*\\\\|kube-\\\\.\\\\*-.*"}',
    ),
    (
        PrometheusQuery(query='up{pod!~ "{labels.deployment}"}'),
        {"deployment": "a+b"},
        "query",
        'up{pod!~ "a\\\\+b"}',
    ),
    (
        K8sPods(namespace="{labels.namespace}", workload="{labels.deployment}-canary"),
        {"namespace": "prod-1", "deployment": "sark.v2"},
        "workload",
        "sark.v2-canary",
    ),
    (
        RedisGet(keys=["circuit:{labels.siem}:state"]),
        {"siem": "splunk-eu_1"},
        "keys",
        ["circuit:splunk-eu_1:state"],
    ),
]


@pytest.mark.parametrize(("step", "labels", "field", "expected"), ACCEPTED)
def test_a_value_inside_its_slot_is_escaped_for_where_it_goes(
    step, labels, field, expected
):
    """Accepted values are percent-encoded, or string- or regex-escaped, per slot."""
    rendered = step.rendered(alert(**labels))
    assert getattr(rendered, field) == expected


def test_a_regex_slot_matches_only_the_value_itself():
    """A value in =~"..." is QuoteMeta'd: '.*|kube-.*' matches only that text."""
    value = ".*|kube-.*"
    regex = quote_meta(value)
    assert re.fullmatch(regex, value)
    assert not re.fullmatch(regex, "kube-proxy")
    assert not re.fullmatch(regex, "anything")


def test_promql_strings_escape_quotes_backslashes_and_control_characters():
    r"""Control characters become \\xNN; the other quote needs no escape."""
    assert promql_string("a\"b'c\\\x01\x7f\n") == "a\\\"b'c\\\\\\x01\\x7f\\n"
    assert promql_string("a'b", "'") == "a\\'b"


def test_missing_labels_are_a_render_error_not_a_slot_error():
    """A label the alert lacks is 'cannot fill', not a grammar violation."""
    with pytest.raises(RenderError, match="alert has no label 'siem'") as info:
        RedisResetCircuitBreaker(breaker="{labels.siem}").rendered(alert())
    assert not isinstance(info.value, SlotError)


def test_one_of_narrows_a_label_to_the_listed_values():
    """siem=payments-api is a valid key part, but not one of splunk, datadog."""
    step = RedisResetCircuitBreaker(breaker="{labels.siem}")
    choices = {"siem": ["splunk", "datadog"]}
    assert step.rendered(alert(siem="splunk"), choices).breaker == "splunk"
    with pytest.raises(SlotError) as info:
        step.rendered(alert(siem="payments-api"), choices)
    assert str(info.value) == (
        "label siem='payments-api' for breaker is not one of splunk, datadog: the "
        "playbook's labels.siem.one_of allows only these; step not run"
    )


def test_verify_fields_are_rendered_and_named_in_slot_errors():
    """A bad value in a verification names verify.<field>."""
    step = RedisResetCircuitBreaker.model_validate(
        {
            "breaker": "splunk",
            "verify": {
                "type": "http.get",
                "url": "https://h.test/siem/{labels.siem}",
            },
        }
    )
    with pytest.raises(SlotError, match=r"for verify\.url is not a URL path segment"):
        step.rendered(alert(siem="a/b"))


def test_long_values_are_cut_in_the_message():
    """A huge label value is shown cut, with its length."""
    with pytest.raises(SlotError) as info:
        K8sPods(namespace="{labels.namespace}", workload="x").rendered(
            alert(namespace="A" * 5000)
        )
    assert "... (5000 characters)" in str(info.value)
    assert len(str(info.value)) < 400


# ----------------------------------------------------------------- load time

LOAD_ERRORS = [
    (Slot.PROMQL, "rate(x[{labels.window}])", "is outside a quoted string"),
    (Slot.PROMQL, "up{job=`{labels.job}`}", "inside a `raw` string"),
    (Slot.PROMQL, 'up # {labels.job}\n{job="x"}', "is in a comment"),
    (Slot.PROMQL, '"\\{labels.A}', "follows a backslash"),
    (Slot.PROMQL, 'up{job="a\\{labels.job}"}', "follows a backslash"),
    (Slot.URL, "{labels.scheme}://h.test/", "must start with http:// or https://"),
    (Slot.URL, "http://h.test:{labels.port}/", "in the user info or port"),
    (Slot.URL, "http://{labels.user}@h.test/", "in the user info or port"),
    (Slot.URL, "http://h.test/x#{labels.frag}", "in the URL's fragment"),
    (Slot.URL, "http://h.test:99999/x", "is not a valid URL"),
    (Slot.URL, "ftp://h.test/x", "must start with http:// or https://"),
    (Slot.NAMESPACE, "Production", "is not a DNS-1123 label"),
    (Slot.NAMESPACE, "prod\n", "is not a DNS-1123 label"),
    (Slot.K8S_NAME, "-{labels.x}", "can never be a Kubernetes name"),
    (Slot.REDIS_KEY_PART, "a:b", "it contains ':'"),
    (Slot.K8S_NAME, "{labels.}", "bad placeholder"),
    (Slot.K8S_NAME, "{alert.nope}", "unknown placeholder"),
]


@pytest.mark.parametrize(("slot", "text", "fragment"), LOAD_ERRORS)
def test_templates_are_checked_against_their_slot_when_rules_load(slot, text, fragment):
    """Placeholders in places a grammar cannot fill, and invalid literals, fail."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        check_slot_template(text, slot)


def test_promql_placeholders_in_strings_and_regexes_load():
    """The runbook's PromQL shapes load: ="{...}" and =~"{...}-.*"."""
    text = 'sum(x{namespace="{labels.namespace}",pod=~"{labels.deployment}-.*"})'
    assert check_slot_template(text, Slot.PROMQL) == text


def test_a_field_without_a_slot_refuses_placeholders():
    """name, json_path, headers and json bodies take no templates."""
    for data in (
        {"url": "https://h.test/", "json_path": "{labels.path}"},
        {"url": "https://h.test/", "name": "probe {labels.x}"},
    ):
        with pytest.raises(ValidationError, match="this field takes no templates"):
            HttpGet.model_validate(data)
    with pytest.raises(ValidationError, match="this field takes no templates"):
        HttpRequest.model_validate(
            {"url": "https://h.test/", "headers": {"X-Who": "{labels.who}"}}
        )


def test_every_step_field_that_takes_templates_declares_a_known_slot():
    """Every templated field of every step has a grammar with docs."""
    for model in STEP_TYPES.values():
        for field, slot in template_fields(model).items():
            assert slot in GRAMMARS, (model, field)
            assert GRAMMARS[slot].doc


def test_playbook_one_of_values_must_fit_every_slot_they_fill():
    """A one_of value that a field's grammar refuses is reported with the field."""
    playbook = playbook_model(STEP_TYPES_REGISTRY).model_validate(
        {
            "labels": {"siem": {"one_of": ["splunk", "a/b"]}},
            "diagnostics": [
                {"type": "http.get", "url": "https://h.test/{labels.siem}"}
            ],
        }
    )
    assert playbook.choice_problems() == [
        (
            "labels.siem.one_of",
            (
                "'a/b' is not a URL path segment: it contains '/' (it fills "
                "diagnostics[0].url)"
            ),
        )
    ]


@pytest.mark.parametrize("name", ["siem\n", "1x", "a-b", ""])
def test_playbook_label_names_are_label_names(name):
    """labels: keys are label names (full match: no trailing newline)."""
    with pytest.raises(ValidationError):
        Playbook.model_validate({"labels": {name: {"one_of": ["x"]}}})


# ----------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("2w1d", timedelta(days=15)),
        (45, timedelta(seconds=45)),
        (1.5, timedelta(seconds=1.5)),
        ("999999999d", timedelta(days=999999999)),
    ],
)
def test_durations_parse(text, expected):
    """Prometheus-style durations and plain seconds parse."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("\u0665m", "use ASCII digits"),
        ("\uff15m", "use ASCII digits"),
        ("5", "use ASCII digits with a unit"),
        ("5m5", "use ASCII digits with a unit"),
        ("1e3s", "use ASCII digits with a unit"),
        ("", "invalid duration"),
        ("99999999999999999999d", "is too large"),
        ("1000000000d", "is too large"),
        ("999999999d999999999d", "is too large"),
        ("9" * 5000 + "s", "is too large"),
        (1e300, "is too large"),
        (10**400, "is too large"),
        (float("inf"), "is too large"),
        (float("nan"), "non-negative number"),
        (-1, "non-negative number"),
    ],
)
def test_bad_durations_are_value_errors_never_overflow(value, fragment):
    """Non-ASCII digits, garbage and huge values raise ValueError (a rule error)."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_duration(value)


# ----------------------------------------------------------------- docs


def test_the_rules_docs_list_every_slot_and_every_templated_field():
    """docs/rules.md shows each slot's grammar and each step's slot fields."""
    doc = (Path(__file__).parent.parent / "docs" / "rules.md").read_text(
        encoding="utf-8"
    )
    lines = set(doc.splitlines())
    for slot, grammar in GRAMMARS.items():
        assert f"| `{slot.value}` | {grammar.doc} |" in lines, slot
    models = list(STEP_TYPES.items())
    models += [
        (f"{m.model_fields['type'].default}` as `verify", m)
        for m in (PrometheusVerify, HttpVerify)
    ]
    for name, model in models:
        fields = ", ".join(
            f"`{field}` (`{slot.value}`)"
            for field, slot in template_fields(model).items()
        )
        assert f"| `{name}` | {fields or 'none'} |" in lines, name


def test_the_rule_schema_names_each_templated_fields_slot():
    """The JSON schema of rule files carries x-template-slot on templated fields."""
    props = K8sPods.model_json_schema()["properties"]
    assert props["namespace"]["x-template-slot"] == "namespace"
    assert props["workload"]["anyOf"][0]["x-template-slot"] == "k8s_name"
    assert "x-template-slot" not in props["limit"]
    keys = RedisGet.model_json_schema()["properties"]["keys"]["items"]
    assert keys["x-template-grammar"] == GRAMMARS[Slot.REDIS_KEY].doc


@pytest.mark.parametrize("replicas", ["10\n", "+2\n", "x", "2x", "\u0665"])
def test_relative_counts_are_a_full_ascii_match(replicas):
    """replicas/max_replicas take 10, +2 or x2 exactly (no trailing newline)."""
    with pytest.raises(ValidationError, match="invalid count"):
        K8sScale(namespace="p", workload="w", replicas=replicas, max=10)
