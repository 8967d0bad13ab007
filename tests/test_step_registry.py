"""The step registry: one list of step types, and everything generated from it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from receiver.errors import PermanentStepError
from receiver.rulebook.steps import (
    REGISTRY,
    STEP_TYPES,
    VERIFY_TYPES,
    K8sPods,
    Step,
    build_registry,
)
from receiver.rulebook.steps import k8s as k8s_models
from receiver.rulebook.steps.registry import _by_type
from receiver.steps.k8s import handlers
from receiver.steps.kube_objects import Hpa, Workload, parse_object

REPO = Path(__file__).resolve().parent.parent


def _load(name: str, file: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


steps_doc = _load("steps_doc", "steps-doc.py")


def test_the_rule_schema_union_is_the_registry():
    """Every registered type parses through the `Step` union, and nothing else does."""
    members = typing.get_args(typing.get_args(Step)[0])
    assert set(members) == set(STEP_TYPES.values())
    adapter: TypeAdapter[Any] = TypeAdapter(Step)
    parsed = adapter.validate_python({"type": "k8s.pods", "namespace": "x"})
    assert isinstance(parsed, K8sPods)
    with pytest.raises(ValidationError, match=r"k8s\.nope"):
        adapter.validate_python({"type": "k8s.nope", "namespace": "x"})


def test_building_the_registry_again_gives_the_same_types():
    """The registry is built by a function, not by import side effects."""
    again = build_registry()
    assert list(again.steps) == list(REGISTRY.steps)
    assert list(again.verifies) == list(VERIFY_TYPES)
    assert again.families == ("changes", "http", "k8s", "prometheus", "redis")


def test_a_type_registered_twice_is_refused():
    """Two models claiming one `type` fail loudly instead of one hiding the other."""
    with pytest.raises(ValueError, match=r"k8s\.pods is registered twice"):
        _by_type([K8sPods, K8sPods])


def test_every_verify_type_names_the_family_that_polls_it():
    """The runner finds a verify's executor through the registry."""
    assert {n: REGISTRY.verify_family(n) for n in VERIFY_TYPES} == {
        "k8s.rollout_status": "k8s",
        "k8s.pods_ready": "k8s",
        "prometheus.query": "prometheus",
        "http.get": "http",
    }
    assert REGISTRY.verify_family("nope") == ""


def test_every_k8s_step_type_has_exactly_one_run_function():
    """Each k8s model is run by one handler: a diagnostic or an action, not both."""
    table = handlers()
    assert table.models == set(k8s_models.STEPS)
    assert not set(table.diagnostics) & set(table.actions)
    assert all(m.kind.value == "diagnostic" for m in table.diagnostics)
    assert all(m.kind.value == "remediation" for m in table.actions)


def test_the_step_reference_is_generated_from_the_registry():
    """docs/steps.md's reference is what scripts/steps-doc.py generates now."""
    text = steps_doc.DOC.read_text()
    assert steps_doc.with_reference(text) == text, (
        "regenerate with: .venv/bin/python scripts/steps-doc.py"
    )
    for name in [*STEP_TYPES, *VERIFY_TYPES]:
        assert f"### `{name}`" in text


def test_the_reference_check_fails_when_stale(tmp_path, monkeypatch):
    """--check exits 1 on a stale reference and 0 once it is rewritten."""
    doc = tmp_path / "steps.md"
    doc.write_text(f"intro\n{steps_doc.BEGIN}\nold\n{steps_doc.END}\noutro\n")
    monkeypatch.setattr(steps_doc, "DOC", doc)
    assert steps_doc.main(["--check"]) == 1
    assert steps_doc.main([]) == 0
    assert steps_doc.main(["--check"]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n")
    assert text.endswith("outro\n")
    assert "### `k8s.rollout_undo` (remediation)" in text


def test_the_reference_script_runs_as_a_command():
    """The script is runnable as the docs say (in check mode here)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "steps-doc.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_typed_kubernetes_views_keep_fields_they_do_not_read():
    """A typed view of an API object keeps unknown fields (extra="allow")."""
    raw = {
        "metadata": {"name": "sark", "resourceVersion": "7", "futureField": 1},
        "spec": {
            "replicas": 3,
            "template": {"spec": {"containers": [{"name": "app", "newThing": True}]}},
            "someNewSpec": {"x": 1},
        },
    }
    seen = parse_object(Workload, raw, "deployment/sark")
    assert seen.spec.replicas == 3
    assert seen.metadata.resource_version == "7"
    assert seen.model_dump(by_alias=True, exclude_unset=True) == raw


def test_a_malformed_api_object_is_a_step_error():
    """An answer of the wrong shape fails the step with where, not a KeyError."""
    with pytest.raises(PermanentStepError, match=r"hpa/x: .*spec\.maxReplicas"):
        parse_object(Hpa, {"spec": {"maxReplicas": "many"}}, "hpa/x")
