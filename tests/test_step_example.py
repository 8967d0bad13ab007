"""The worked example of docs/steps.md is real: one module adds a step type.

The ``k8s.endpoints`` module shown in "Adding a step type" is taken from the
page, imported as a module of its own (outside the receiver's packages), added
to the step catalog, used by the page's playbook, and run against kmock.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kmock
import pytest
from kube import Cluster, serve

from receiver.errors import PermanentStepError, RuleError
from receiver.model import Alert, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import build_catalog, builtin_registry
from receiver.steps.k8s import KubernetesExecutor
from receiver.steps.kube_client import KubeConnection, new_api_client

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "steps.md"
ENDPOINTS = kmock.resource("", "v1", "endpoints")
ALERT = Alert(
    source="alertmanager",
    fingerprint="0123456789abcdef",
    status="firing",
    labels=freeze(
        {"alertname": "ApiDown", "namespace": "production", "service": "sark"}
    ),
)


def _blocks(lang: str) -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("### Worked example: `k8s.endpoints`", 1)[1]
    section = section.split("<!-- generated", 1)[0]
    return re.findall(rf"```{lang}[^\n]*\n(.*?)```", section, re.DOTALL)


@pytest.fixture
def example(tmp_path: Path) -> ModuleType:
    (source,) = _blocks("python")
    path = tmp_path / "endpoints.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("example_steps.endpoints", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    (playbook,) = _blocks("yaml")
    rule = "rules:\n  - name: api-down\n    match: ['alertname=\"ApiDown\"']\n"
    path = tmp_path / "rules.yaml"
    path.write_text(playbook + rule + "    playbook: api-down\n", encoding="utf-8")
    return path


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Cluster, str]]:
    found = Cluster()
    async with serve(found) as url:
        yield found, url


def test_the_example_is_one_module_added_beside_the_receivers_steps(example):
    """Building the catalog with the module adds k8s.endpoints, nothing else changes."""
    catalog = build_catalog([example])
    added = set(catalog.registry.steps) - set(builtin_registry().steps)
    assert added == {"k8s.endpoints"}
    assert catalog.registry.steps["k8s.endpoints"] is example.K8sEndpoints
    assert [d.model for d in catalog.of("k8s")][-1] is example.K8sEndpoints


def test_rules_using_the_example_load_only_with_it(example, rules):
    """The page's playbook loads with the step added and is refused without it."""
    with pytest.raises(RuleError, match=r"unknown step type 'k8s\.endpoints'"):
        load_rulebook([rules], steps=builtin_registry())
    book = load_rulebook([rules], steps=build_catalog([example]).registry)
    (step,) = book.playbooks["api-down"].diagnostics
    assert isinstance(step, example.K8sEndpoints)
    assert step.service == "{labels.service}"


def test_the_example_refuses_a_field_it_does_not_have(example, tmp_path):
    """A typo in the example step's parameters fails at load time, with the field."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        "playbooks:\n  p:\n    diagnostics:\n"
        "      - {type: k8s.endpoints, namespace: x, servce: y}\n",
        encoding="utf-8",
    )
    with pytest.raises(RuleError, match=r"servce") as caught:
        load_rulebook([path], steps=build_catalog([example]).registry)
    assert "playbooks.p.diagnostics[0].servce" in str(caught.value.details)


async def test_the_example_runs_against_kmock(example, rules, cluster):
    """The step reads the Endpoints object, exactly the request its model names."""
    kube, url = cluster
    kube.objects[ENDPOINTS, "production", "sark"] = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "sark", "namespace": "production"},
        "subsets": [
            {
                "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                "notReadyAddresses": [{"ip": "10.0.0.3"}],
            }
        ],
    }
    catalog = build_catalog([example])
    book = load_rulebook([rules], steps=catalog.registry)
    (step,) = book.playbooks["api-down"].diagnostics
    rendered = step.rendered(ALERT)

    async def factory() -> Any:
        return await new_api_client(KubeConnection(mode="host", host=url))

    executor = KubernetesExecutor(factory, steps=catalog.of("k8s"))
    try:
        result = await executor.run(rendered, ALERT)
    finally:
        await executor.aclose()
    assert result.ok
    assert result.reason == "service/sark -n production: 2 ready, 1 not ready"
    assert dict(result.result) == {"ready": 2, "not_ready": 1}
    made = [(r.method.value, r.url.path) for r in kube]
    assert made == [("GET", "/api/v1/namespaces/production/endpoints/sark")]
    (need,) = rendered.needs()
    assert need == ("", "endpoints", "get", "sark")
    assert need[:2] == example.K8sEndpoints.rbac[0][:2]
    assert need[2] in example.K8sEndpoints.rbac[0][2]


async def test_the_builtin_executor_does_not_run_the_example(example, cluster):
    """Without the module in its catalog, the executor refuses the step type."""
    _kube, url = cluster

    async def factory() -> Any:
        return await new_api_client(KubeConnection(mode="host", host=url))

    executor = KubernetesExecutor(factory)
    step = example.K8sEndpoints(namespace="production", service="sark")
    try:
        with pytest.raises(PermanentStepError, match=r"cannot run k8s\.endpoints"):
            await executor.run(step, ALERT)
    finally:
        await executor.aclose()
