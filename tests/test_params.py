"""Playbook parameters and template defaults: binding, escaping, checks, naming.

The rule-file errors (unused, undeclared, missing, mistyped parameters) are
fixtures in ``tests/fixtures/rules/bad`` checked by ``test_rules_check.py``;
these tests cover what a valid binding produces.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.errors import RenderError, SlotError
from receiver.model import Alert, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.rulebook.steps import K8sPods, PrometheusQuery
from receiver.rulebook.templates import (
    BindError,
    Slot,
    TemplateError,
    bind,
    check_param_value,
    check_slot_template,
    promql_string,
)

RULES = Path(__file__).resolve().parents[1] / "rules"

PACK = """\
playbooks:
  app-down:
    description: The app is down.
    params:
      namespace: {type: namespace, default: "{labels.namespace}"}
      app: {type: k8s_name, default: "{labels.app|api}"}
      job: {type: text, default: "{labels.job}"}
    diagnostics:
      - type: k8s.pods
        namespace: "{params.namespace}"
        workload: "{params.app}"
      - type: prometheus.query
        query: up{namespace="{params.namespace}",job=~"{params.job}-.*"}
      - type: http.get
        url: https://status.example.com/jobs/{params.job}?ns={params.namespace}
  needs-app:
    params:
      app: {type: k8s_name}
    diagnostics:
      - type: k8s.pods
        namespace: production
        workload: "{params.app}"
rules:
  - name: by-labels
    match: ['alertname="AppDown"', 'namespace!=""']
    playbook: app-down
  - name: fixed
    match: ['alertname="AppDown"']
    playbook: app-down
    with: {namespace: production, app: api, job: 'we"ird.job'}
    as: &production
      name: app-down-production
      description: The app is down in production.
  - name: also-fixed
    match: ['alertname="AppDownAgain"']
    playbook: app-down
    with: {namespace: production, app: api, job: 'we"ird.job'}
    as: *production
"""


def alert(**labels: str) -> Alert:
    return Alert(
        source="alertmanager",
        fingerprint="0123abcd",
        status="firing",
        labels=freeze(labels),
        annotations=freeze({}),
    )


@pytest.fixture
def book(tmp_path: Path):
    (tmp_path / "pack.yaml").write_text(PACK, encoding="utf-8")
    return load_rulebook([tmp_path])


def test_each_binding_is_a_playbook_under_its_name(book):
    """Rules run the playbook bound under `as:` (or its own name); no params left."""
    assert set(book.playbooks) == {"app-down", "app-down-production"}
    assert [rule.playbook for rule in book.rules] == [
        "app-down",
        "app-down-production",
        "app-down-production",
    ]
    for playbook in book.playbooks.values():
        assert playbook.params == {}
        for step in playbook.diagnostics:
            assert "{params." not in step.model_dump_json()


def test_a_binding_may_describe_itself_and_the_playbook_keeps_its_own(book):
    """`as: {name, description}` replaces the description of that binding only."""
    assert book.playbooks["app-down-production"].description == (
        "The app is down in production."
    )
    assert book.playbooks["app-down"].description == "The app is down."


def test_a_playbook_with_a_required_param_and_no_rule_is_not_runnable(book):
    """A playbook no rule binds is kept only when every parameter has a default."""
    assert "needs-app" not in book.playbooks


def test_literal_values_are_escaped_where_they_land(book):
    """A literal is quoted in PromQL, regex-escaped after =~, encoded in a URL."""
    pods, query, http = book.playbooks["app-down-production"].diagnostics
    assert isinstance(pods, K8sPods)
    assert pods.namespace == "production"
    assert isinstance(query, PrometheusQuery)
    assert query.query == 'up{namespace="production",job=~"we\\"ird\\\\.job-.*"}', (
        "the value is regex-escaped, then escaped for the string"
    )
    assert http.model_dump()["url"] == (
        "https://status.example.com/jobs/we%22ird.job?ns=production"
    )


def test_placeholder_values_render_per_alert_with_their_defaults(book):
    """{labels.app|api} takes the label when present and the default when not."""
    pods = book.playbooks["app-down"].diagnostics[0]
    with_label = pods.rendered(alert(namespace="staging", app="billing"))
    assert (with_label.namespace, with_label.workload) == ("staging", "billing")
    without = pods.rendered(alert(namespace="staging"))
    assert without.workload == "api"
    empty = pods.rendered(alert(namespace="staging", app=""))
    assert empty.workload == "api", "an empty label takes the default too"


def test_a_label_value_is_still_checked_by_its_slot_after_binding(book):
    """Binding keeps the render-time grammar check: a bad label value is refused."""
    pods = book.playbooks["app-down"].diagnostics[0]
    with pytest.raises(SlotError, match="label app='Billing'"):
        pods.rendered(alert(namespace="staging", app="Billing"))
    with pytest.raises(RenderError, match="alert has no label 'namespace'"):
        pods.rendered(alert(app="billing"))


def test_template_defaults_are_checked_for_their_slot_at_load():
    """A default outside the slot's grammar (or empty, or on params) is refused."""
    assert check_slot_template("{labels.ns|prod}", Slot.NAMESPACE)
    bad = [
        ("{labels.ns|Prod}", Slot.NAMESPACE, "the default 'Prod'"),
        ("circuit:{labels.siem|a:b}:state", Slot.REDIS_KEY, "contains ':'"),
        ("{labels.ns|}", Slot.NAMESPACE, "empty default"),
        ("{alert.status|x}", Slot.K8S_NAME, "only a label or annotation"),
        ("{params.ns|x}", Slot.NAMESPACE, "only a label or annotation"),
    ]
    for text, slot, fragment in bad:
        with pytest.raises(TemplateError, match=fragment):
            check_slot_template(text, slot)


def test_bind_refuses_a_value_outside_the_slot_and_names_the_param():
    """BindError names the parameter; the message says what the slot takes."""
    with pytest.raises(BindError, match="is not a Kubernetes namespace") as info:
        bind("{params.ns}", Slot.NAMESPACE, {"ns": "a/b"})
    assert info.value.param == "ns"
    with pytest.raises(BindError, match="either a literal or one whole placeholder"):
        bind("{params.ns}", Slot.NAMESPACE, {"ns": "x{labels.y}"})


def test_param_types_check_literals_and_placeholder_defaults():
    """A typed value must meet its type; a placeholder is checked by its default."""
    assert check_param_value("production", "namespace") is None
    assert check_param_value("{labels.namespace}", "namespace") is None
    assert check_param_value("{labels.namespace|prod}", "namespace") is None
    assert check_param_value("{labels.namespace|Prod}", "namespace")
    assert check_param_value("Prod", "namespace")
    assert check_param_value("a.b", "k8s_name") is None
    assert check_param_value("a:b", "redis_key_part")
    assert check_param_value("a b", "label_value")
    assert check_param_value("{params.other}", "text")


@given(st.text(max_size=40))
def test_any_text_bound_into_a_promql_string_stays_inside_it(value):
    """Whatever a text parameter holds, it is one escaped PromQL string value."""
    bound = bind('up{job="{params.job}"}', Slot.PROMQL, {"job": value})
    assert bound == 'up{job="' + promql_string(value) + '"}'


@given(st.text(alphabet=string.ascii_lowercase + string.digits + "-", max_size=70))
def test_a_namespace_parameter_binds_exactly_when_its_type_accepts_it(value):
    """Type check and slot check agree for a namespace value in a namespace slot."""
    typed_ok = check_param_value(value, "namespace") is None
    try:
        bind("{params.ns}", Slot.NAMESPACE, {"ns": value})
    except BindError:
        bound_ok = False
    else:
        bound_ok = True
    assert typed_ok == bound_ok


def test_the_runbook_pack_binds_playbooks_1_and_5_three_ways():
    """One Playbook 1 and one Playbook 5, each bound under three names."""
    book = load_rulebook([RULES])
    bound = {rule.name: rule.playbook for rule in book.rules}
    assert bound["sark-api-down"] == "api-down"
    assert bound["sark-api-down-default-deployment"] == "api-down-sark"
    assert bound["pagerduty-sark-api-down"] == "api-down-production"
    assert bound["pagerduty-sark-siem-down-splunk"] == "siem-down-splunk"
    production = book.playbooks["api-down-production"]
    undo = production.remediation[0].model_dump()
    assert (undo["namespace"], undo["deployment"]) == ("production", "sark")
    splunk = book.playbooks["siem-down-splunk"]
    assert splunk.remediation[0].model_dump()["breaker"] == "splunk"


def test_the_runbook_bindings_describe_their_variant():
    """Each bound copy of Playbooks 1 and 5 says which variant it is in traces."""
    book = load_rulebook([RULES])
    described = {
        name: book.playbooks[name].description
        for name in (
            "api-down",
            "api-down-sark",
            "api-down-production",
            "siem-down-splunk",
            "siem-down-datadog",
        )
    }
    assert described["api-down"].startswith("Playbook 1, SARK API completely down")
    assert described["api-down-sark"].startswith(
        "Playbook 1 for alerts that do not name the deployment"
    )
    assert described["api-down-production"].startswith(
        "Playbook 1 for pages that carry no Kubernetes labels"
    )
    assert "the Splunk forwarder" in described["siem-down-splunk"]
    assert "the Datadog forwarder" in described["siem-down-datadog"]
