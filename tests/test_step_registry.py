"""The step catalog and registry: step modules found, and everything generated."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from receiver.errors import PermanentStepError
from receiver.rulebook.schema import playbook_model
from receiver.rulebook.steps import NO_STEPS, build_registry
from receiver.rulebook.steps.registry import _by_type
from receiver.steps.catalog import (
    FAMILIES,
    build_catalog,
    builtin_catalog,
    builtin_registry,
    declared,
    step_modules,
)
from receiver.steps.k8s import handlers
from receiver.steps.k8s.pods import K8sPods
from receiver.steps.kube_views import (
    Hpa,
    Workload,
    parse_object,
)

REGISTRY = builtin_registry()
STEP_TYPES = REGISTRY.steps
VERIFY_TYPES = REGISTRY.verifies

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
    """Every registered type parses through the registry's union, nothing else does."""
    union: Any = REGISTRY.union
    members = typing.get_args(typing.get_args(union)[0])
    assert set(members) == set(STEP_TYPES.values())
    adapter: TypeAdapter[Any] = TypeAdapter(union)
    parsed = adapter.validate_python({"type": "k8s.pods", "namespace": "x"})
    assert isinstance(parsed, K8sPods)
    with pytest.raises(ValidationError, match=r"k8s\.nope"):
        adapter.validate_python({"type": "k8s.nope", "namespace": "x"})


def test_building_the_registry_again_gives_the_same_types():
    """The registry is built by a function, not by import side effects."""
    again = build_catalog().registry
    assert again is not REGISTRY
    assert builtin_registry() is REGISTRY
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
    k8s = {n: m for n, m in STEP_TYPES.items() if n.startswith("k8s.")}
    assert table.models == set(k8s.values())
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


def test_every_step_type_is_one_module_holding_its_model_and_run():
    """Each step module declares exactly one step type, defined in that module."""
    for package in FAMILIES:
        for module in step_modules(package):
            steps = declared(module)
            if not steps:
                continue
            assert len(steps) == 1, module.__name__
            (step,) = steps
            assert step.model.__module__ == module.__name__
            family = package.rsplit(".", 1)[1]
            assert step.model.family == family
            assert (
                step.model.type_name()
                == f"{family}.{module.__name__.rsplit('.', 1)[1]}"
            )
    found = [d.model for defs in builtin_catalog().by_family.values() for d in defs]
    assert found == list(STEP_TYPES.values())


def test_a_module_declaring_something_that_is_not_a_step_is_refused():
    """``STEPS`` holding anything but definitions naming a model fails loudly."""
    module = types.ModuleType("not_a_step")
    module.STEPS = ("k8s.pods",)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="names no step model"):
        build_catalog([module])


def test_a_rulebook_built_without_step_types_loads_no_step():
    """With no registry, a playbook's steps fail to validate (none are known)."""
    with pytest.raises(ValidationError):
        playbook_model(NO_STEPS).model_validate(
            {"diagnostics": [{"type": "k8s.pods", "namespace": "x"}]}
        )
    assert build_registry([]).families == ()


def test_one_registry_gives_one_playbook_model():
    """Playbooks loaded with one registry are of one class (so they compare)."""
    assert playbook_model(REGISTRY) is playbook_model(REGISTRY)
    assert playbook_model(build_catalog().registry) is not playbook_model(REGISTRY)
