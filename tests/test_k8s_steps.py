"""k8s.* steps against kmock over real HTTP: the requests made and the state left."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import flat_settings
from kube import (
    DEPLOYMENTS,
    HPAS,
    PODS,
    Cluster,
    container,
    deployment,
    event,
    hpa,
    pod_of,
    seed_rollout,
    serve,
    stateful_set,
)
from kubernetes_asyncio.client import Configuration
from peers import require_binary

from receiver.engine.planner import PlanContext, plan
from receiver.engine.runner import Runner
from receiver.errors import (
    ConfigError,
    PermanentStepError,
    QuantityError,
    TransientStepError,
)
from receiver.model import Alert, Decision
from receiver.rulebook.loader import load_rulebook
from receiver.rulebook.steps import PodsReadyVerify, RolloutStatusVerify
from receiver.settings import KubeSettings, Settings, in_cluster_host
from receiver.steps import build_executors
from receiver.steps.catalog import builtin_registry
from receiver.steps.k8s import KubernetesExecutor
from receiver.steps.k8s.delete_pod import K8sDeletePod
from receiver.steps.k8s.describe import K8sDescribe
from receiver.steps.k8s.events import K8sEvents
from receiver.steps.k8s.logs import K8sLogs
from receiver.steps.k8s.patch_hpa import K8sPatchHpa
from receiver.steps.k8s.pods import K8sPods
from receiver.steps.k8s.rollout_history import K8sRolloutHistory
from receiver.steps.k8s.rollout_restart import K8sRolloutRestart
from receiver.steps.k8s.rollout_undo import K8sRolloutUndo
from receiver.steps.k8s.scale import K8sScale
from receiver.steps.k8s.set_memory_limit import K8sSetMemoryLimit
from receiver.steps.kube_client import (
    KubeConnection,
    KubeForbiddenError,
    KubeNotFoundError,
    new_api_client,
)

STEP_TYPES = builtin_registry().steps
NS = "production"
DEPLOY = "/apis/apps/v1/namespaces/production/deployments/sark$"
ALERT = Alert(
    source="alertmanager",
    fingerprint="0123456789abcdef",
    status="firing",
    labels={"alertname": "SarkApiDown", "namespace": NS, "deployment": "sark"},
)
HISTORY = [
    ("ghcr.io/example/sark:1.9", timedelta(days=3), "deploy 1.9"),
    ("ghcr.io/example/sark:2.0", timedelta(minutes=10), "deploy 2.0"),
]


@dataclass
class Kube:
    cluster: Cluster
    url: str
    made: list[KubernetesExecutor] = field(default_factory=list)

    def executor(self, **kwargs: Any) -> KubernetesExecutor:
        async def factory() -> Any:
            return await new_api_client(KubeConnection(mode="host", host=self.url))

        kwargs.setdefault("poll_interval", 0.02)
        kwargs.setdefault("backoff", 0.001)
        made = KubernetesExecutor(factory, **kwargs)
        self.made.append(made)
        return made

    def deployment(self) -> dict[str, Any]:
        found = self.cluster.get(DEPLOYMENTS, NS, "sark")
        assert found is not None
        return found


@pytest.fixture
async def kube() -> AsyncIterator[Kube]:
    cluster = Cluster()
    async with serve(cluster) as url:
        k = Kube(cluster, url)
        yield k
        for made in k.made:
            await made.aclose()


def _images(obj: dict[str, Any]) -> list[str]:
    return [c["image"] for c in obj["spec"]["template"]["spec"]["containers"]]


# ----------------------------------------------------------------- the client


async def test_client_has_its_own_configuration_not_the_global_default(kube):
    """The ApiClient gets a fresh Configuration; the global default is untouched."""
    api, token = await new_api_client(KubeConnection(mode="host", host=kube.url))
    try:
        assert token is None
        assert api.configuration.host == kube.url
        assert Configuration.get_default_copy().host != kube.url
    finally:
        await api.close()


async def test_token_file_is_reread_when_it_rotates(kube, tmp_path):
    """A rotated service-account token is sent once the refresh period passes."""
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    clock = [0.0]
    conn = KubeConnection(mode="host", host=kube.url, token_file=token_file)

    async def factory() -> Any:
        return await new_api_client(conn, monotonic=lambda: clock[0])

    made = KubernetesExecutor(factory)
    kube.made.append(made)
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    step = K8sDescribe(namespace=NS, object_name="sark")
    await made.run(step, ALERT)
    token_file.write_text("second-token\n")
    await made.run(step, ALERT)  # within the minute: the cached token
    clock[0] = 61.0
    await made.run(step, ALERT)
    sent = [r.headers["Authorization"] for r in kube.cluster.seen("GET", DEPLOY)]
    assert sent == ["Bearer first-token", "Bearer first-token", "Bearer second-token"]


async def test_401_after_a_token_rotation_is_retried_with_the_new_token(kube, tmp_path):
    """A 401 makes the token file be read again; a changed token is retried once."""
    token_file = tmp_path / "token"
    token_file.write_text("old-token")
    conn = KubeConnection(mode="host", host=kube.url, token_file=token_file)

    async def factory() -> Any:
        return await new_api_client(conn)

    made = KubernetesExecutor(factory, backoff=0.001)
    kube.made.append(made)
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    step = K8sDescribe(namespace=NS, object_name="sark")
    await made.run(step, ALERT)
    token_file.write_text("new-token")
    kube.cluster.fail("GET", DEPLOY, 401)
    result = await made.run(step, ALERT)
    assert result.ok
    sent = [r.headers["Authorization"] for r in kube.cluster.seen("GET", DEPLOY)]
    assert sent == ["Bearer old-token", "Bearer old-token", "Bearer new-token"]


async def test_kubeconfig_path_and_context_pick_the_cluster_and_credentials(
    kube, tmp_path
):
    """kube_mode=kubeconfig uses the named context's server and token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "elsewhere",
        "clusters": [
            {"name": "kmock", "cluster": {"server": kube.url}},
            {"name": "other", "cluster": {"server": "http://127.0.0.1:9"}},
        ],
        "users": [{"name": "sre", "user": {"token": "kubeconfig-token"}}],
        "contexts": [
            {"name": "kmock", "context": {"cluster": "kmock", "user": "sre"}},
            {"name": "elsewhere", "context": {"cluster": "other", "user": "sre"}},
        ],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    settings = flat_settings(
        kube_mode="kubeconfig", kubeconfig=path, kube_context="kmock"
    )
    made = KubernetesExecutor.from_settings(settings.kube)
    kube.made.append(made)
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    result = await made.run(K8sDescribe(namespace=NS, object_name="sark"), ALERT)
    assert result.ok
    (request,) = kube.cluster.seen("GET", DEPLOY)
    assert request.headers["Authorization"] == "Bearer kubeconfig-token"


async def test_settings_choose_how_the_client_connects():
    """Each kube_mode builds its connection from settings, or says what is missing."""
    with pytest.raises(ConfigError, match="RECEIVER_KUBE_HOST"):
        KubeConnection.from_settings(KubeSettings(mode="host"))
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        KubeConnection.from_settings(KubeSettings(mode="in-cluster"), environ={})
    pod = KubeConnection.from_settings(
        KubeSettings(mode="in-cluster"),
        environ={
            "KUBERNETES_SERVICE_HOST": "10.0.0.1",
            "KUBERNETES_SERVICE_PORT": "443",
        },
    )
    assert pod.host == "https://10.0.0.1:443"
    assert str(pod.token_file).endswith("serviceaccount/token")
    assert str(pod.ca_file).endswith("serviceaccount/ca.crt")
    assert (
        in_cluster_host(
            {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
        )
        == "https://[fd00::1]:443"
    )
    plain = build_executors(Settings())
    built = build_executors(
        flat_settings(kube_mode="host", kube_host="http://127.0.0.1:1")
    )
    assert "k8s" not in plain
    assert isinstance(built["k8s"], KubernetesExecutor)
    for made in (*plain.values(), *built.values()):
        await made.aclose()


async def test_aclose_closes_the_one_api_client(kube):
    """The executor builds one ApiClient on first use and closes it in aclose."""
    built: list[Any] = []

    async def factory() -> Any:
        api, token = await new_api_client(KubeConnection(mode="host", host=kube.url))
        built.append(api)
        return api, token

    made = KubernetesExecutor(factory)
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    step = K8sDescribe(namespace=NS, object_name="sark")
    await asyncio.gather(made.run(step, ALERT), made.run(step, ALERT))
    await made.aclose()
    assert len(built) == 1
    assert built[0].rest_client.pool_manager.closed


# ----------------------------------------------------------------- errors


async def test_a_500_then_200_is_retried(kube):
    """A transient 500 on a read is retried and the step succeeds."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    kube.cluster.fail("GET", DEPLOY, 500)
    result = await kube.executor().run(
        K8sDescribe(namespace=NS, object_name="sark"), ALERT
    )
    assert result.ok
    assert len(kube.cluster.seen("GET", DEPLOY)) == 2


async def test_a_403_is_not_retried(kube):
    """A 403 is permanent: one request, and the error says it is RBAC."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    kube.cluster.fail("GET", DEPLOY, 403, times=5)
    with pytest.raises(KubeForbiddenError, match=r"HTTP 403.*RBAC"):
        await kube.executor().run(K8sDescribe(namespace=NS, object_name="sark"), ALERT)
    assert len(kube.cluster.seen("GET", DEPLOY)) == 1


async def test_a_404_is_permanent_and_names_the_object(kube):
    """A missing object fails at once with a message naming it."""
    with pytest.raises(KubeNotFoundError, match=r"get deployment/nope -n production"):
        await kube.executor().run(K8sDescribe(namespace=NS, object_name="nope"), ALERT)
    assert len(kube.cluster.seen("GET", "deployments/nope")) == 1


async def test_429s_are_retried_a_bounded_number_of_times(kube):
    """Throttling is transient but the retries stop after three attempts."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    kube.cluster.fail("GET", DEPLOY, 429, times=10)
    with pytest.raises(TransientStepError, match="gave up after 3 attempts"):
        await kube.executor().run(K8sDescribe(namespace=NS, object_name="sark"), ALERT)
    assert len(kube.cluster.seen("GET", DEPLOY)) == 3


async def test_a_write_whose_answer_was_lost_is_not_applied_twice(kube):
    """A 500 after the patch took effect: the re-read shows it, no second PATCH."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    kube.cluster.fail("PATCH", DEPLOY, 500, apply=True)
    step = K8sRolloutRestart(namespace=NS, workload="sark")
    result = await kube.executor().run(step, ALERT)
    assert result.ok
    assert "earlier attempt had gone through" in result.reason
    assert len(kube.cluster.seen("PATCH", DEPLOY)) == 1


async def test_a_write_that_failed_is_sent_again_after_a_reread(kube):
    """A 503 before the patch applied: read again, then patch once more."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    kube.cluster.fail("PATCH", DEPLOY, 503)
    result = await kube.executor().run(
        K8sRolloutRestart(namespace=NS, workload="sark"), ALERT
    )
    assert result.ok
    methods = [r.method.value for r in kube.cluster if r.url.path.endswith("/sark")]
    # prepare reads (the intent), the write loop reads, patches, reads, patches
    assert methods == ["GET", "GET", "PATCH", "GET", "PATCH"]
    annotations = kube.deployment()["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in annotations


async def test_a_409_is_retried_after_reading_the_object_again(kube):
    """A conflict is never retried blindly: the object is read again first."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    kube.cluster.fail("PATCH", "/deployments/sark/scale$", 409)
    step = K8sScale(namespace=NS, workload="sark", replicas="+1", max=10)
    result = await kube.executor().run(step, ALERT)
    assert result.ok
    paths = [
        (r.method.value, r.url.path.rsplit("/", 1)[-1])
        for r in kube.cluster
        if "/deployments/sark" in r.url.path
    ]
    assert paths == [
        ("GET", "scale"),  # prepare: the absolute count is computed from it
        ("GET", "scale"),
        ("PATCH", "scale"),
        ("GET", "scale"),
        ("PATCH", "scale"),
    ]
    assert kube.deployment()["spec"]["replicas"] == 4


async def test_a_stale_resource_version_is_a_conflict_then_reread(kube):
    """Writes carry the resourceVersion read; a concurrent write makes them 409."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)

    def another_writer(cluster: Cluster) -> None:
        obj = cluster.objects[DEPLOYMENTS, NS, "sark"]
        obj.patch({"metadata": {"resourceVersion": "777", "labels": {"team": "sre"}}})

    kube.cluster.before("PATCH", DEPLOY, another_writer)
    result = await kube.executor().run(
        K8sRolloutRestart(namespace=NS, workload="sark"), ALERT
    )
    assert result.ok
    first, second = kube.cluster.seen("PATCH", DEPLOY)
    assert first.data["metadata"]["resourceVersion"] != "777"
    assert second.data["metadata"]["resourceVersion"] == "777"
    after = kube.deployment()
    assert after["metadata"]["labels"]["team"] == "sre"
    assert (
        "kubectl.kubernetes.io/restartedAt"
        in after["spec"]["template"]["metadata"]["annotations"]
    )


# ----------------------------------------------------------------- diagnostics


async def test_pods_shows_crash_loops_with_the_last_exit(kube):
    """k8s.pods lists a workload's pods by its selector: readiness, OOMKilled, node."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY, ready=1, crash=("OOMKilled", 137))
    other = kube.cluster.put(deployment("other", NS, image="x:1"))
    kube.cluster.put(pod_of(other, "other-abc-12345"))
    result = await kube.executor().run(K8sPods(namespace=NS, workload="sark"), ALERT)
    assert result.ok
    assert "3 pods, 1 ready" in result.reason
    assert "CrashLoopBackOff" in result.reason
    assert "last exit OOMKilled (137)" in result.reason
    pods = result.result["pods"]
    assert len(pods) == 3
    assert all(p["name"].startswith("sark-") for p in pods)
    crashed = next(p for p in pods if not p["is_ready"])
    assert crashed["last_termination"]["exit_code"] == 137
    assert crashed["restarts"] == 7
    assert crashed["node"] == "node-a"
    (listing,) = kube.cluster.seen("GET", "/api/v1/namespaces/production/pods$")
    assert listing.params["labelSelector"] == "app=sark"
    assert listing.params["limit"] == "20"


async def test_pods_by_selector_is_capped_and_says_so(kube):
    """A selector lists at most ``limit`` pods and the trace says more exist."""
    rollout = seed_rollout(kube.cluster, NS, "sark", HISTORY, replicas=5)
    del rollout
    result = await kube.executor().run(
        K8sPods(namespace=NS, selector="app=sark", limit=2), ALERT
    )
    assert "2+ pods, all ready" in result.reason
    assert len(result.result["pods"]) == 2
    assert result.result["truncated"] is True


async def test_events_are_newest_first_for_the_object_and_its_pods(kube):
    """k8s.events merges the deployment's, its ReplicaSets' and pods' events."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    rollout = seed_rollout(kube.cluster, NS, "sark", HISTORY, ready=2, at=t0)
    pod = rollout.pods[2]["metadata"]["name"]
    rs = rollout.replica_sets[1]["metadata"]["name"]
    seen = [
        ("Deployment", "sark", "ScalingReplicaSet", "Scaled up", 540, "Normal"),
        ("Pod", pod, "BackOff", "Back-off restarting failed container app", 30, ""),
        ("Pod", pod, "Pulled", "Container image pulled", 480, "Normal"),
        ("ReplicaSet", rs, "FailedCreate", "exceeded quota: compute", 60, ""),
    ]
    hidden = [
        ("Deployment", "other", "Noise", "another deployment", 1, ""),
        ("Pod", "sark-api-7c9d5f6b8d-x2x4z", "Noise", "sark-api's pod", 2, ""),
        ("Pod", "other-7c9d5f6b8d-x2x4z", "Noise", "other's pod", 3, ""),
    ]
    for kind, name, why, message, seconds, type_ in seen + hidden:
        kube.cluster.put(
            event(
                NS,
                kind,
                name,
                why,
                message,
                age=timedelta(seconds=seconds),
                type_=type_ or "Warning",
                count=14 if why == "BackOff" else 1,
                at=t0,
            )
        )
    step = K8sEvents(namespace=NS, object_name="sark", limit=3)
    result = await kube.executor(clock=lambda: t0).run(step, ALERT)
    shown = [e["reason"] for e in result.result["events"]]
    assert shown == ["BackOff", "FailedCreate", "Pulled"]
    assert result.result["total"] == 4
    assert (
        f"newest warning: BackOff Pod/{pod}: Back-off restarting failed container "
        "app (x14, 30s ago)" in result.reason
    )
    selectors = [r.params.get("fieldSelector") for r in kube.cluster.seen("GET")]
    assert selectors == [
        "involvedObject.kind=Deployment,involvedObject.name=sark",
        "involvedObject.kind=ReplicaSet",
        "involvedObject.kind=Pod",
    ]
    assert all(r.url.path.endswith("/events") for r in kube.cluster.seen("GET"))


async def test_events_are_read_a_bounded_number_of_pages(kube):
    """A namespace flooded with events is read four pages deep, and says so."""
    for n in range(2100):
        kube.cluster.put(event(NS, "Pod", f"x-{n}", "Noise", "n", age=timedelta(0)))
    result = await kube.executor().run(K8sEvents(namespace=NS, limit=5), ALERT)
    assert result.result["partial"] is True
    assert "(read the first 2000 events only)" in result.reason
    assert len(result.result["events"]) == 5
    assert len(kube.cluster.seen("GET", "/events$")) == 4


async def test_logs_are_tailed_capped_and_filtered(kube):
    """k8s.logs asks for the tail, keeps only grep matches and stays under max_bytes."""
    rollout = seed_rollout(kube.cluster, NS, "sark", HISTORY, replicas=1)
    pod = rollout.pods[0]["metadata"]["name"]
    lines = [f"{i:04d} GET /api ok" for i in range(400)]
    lines[390] = "0390 ERROR jwt signature invalid"
    lines[395] = "0395 ERROR AUTH backend down " + "x" * 400
    lines[100] = "0100 ERROR jwt too old: outside the tail"
    kube.cluster.logs[NS, pod, "app"] = "\n".join(lines) + "\n"
    step = K8sLogs(
        namespace=NS, workload="sark", tail_lines=50, grep="(?i)auth|jwt", max_bytes=300
    )
    result = await kube.executor().run(step, ALERT)
    (entry,) = result.result["pods"]
    assert entry["lines"] == [lines[395]]  # the older match did not fit in 300 bytes
    assert entry["matched"] == 2
    assert entry["truncated"] is True
    assert entry["read_lines"] == 50
    (request,) = kube.cluster.seen("GET", "/log$")
    assert request.params["tailLines"] == "50"
    assert request.params["container"] == "app"
    assert "matching /(?i)auth|jwt/" in result.reason


async def test_logs_read_the_broken_pods_first_and_note_missing_previous(kube):
    """Crash-looping pods are read first (max_pods); no previous container is a note."""
    rollout = seed_rollout(kube.cluster, NS, "sark", HISTORY, replicas=3, ready=2)
    broken = rollout.pods[2]["metadata"]["name"]
    kube.cluster.previous_logs[NS, broken, "app"] = "panic: out of memory\n"
    step = K8sLogs(namespace=NS, workload="sark", previous=True, max_pods=2)
    result = await kube.executor().run(step, ALERT)
    first, second = result.result["pods"]
    assert first["pod"] == broken
    assert first["lines"] == ["panic: out of memory"]
    assert "previous terminated container" in second["error"]
    # The client sends "True"; Go's strconv.ParseBool (the API server's) takes it.
    assert {r.params["previous"] for r in kube.cluster.seen("GET", "/log$")} == {"True"}


async def test_rollout_history_flags_a_recent_rollout(kube):
    """k8s.rollout_history lists revisions with change-cause and flags a recent one."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    result = await kube.executor().run(
        K8sRolloutHistory(namespace=NS, deployment="sark", flag_within="2h"), ALERT
    )
    assert result.result["recent_rollout"] is True
    assert [r["revision"] for r in result.result["revisions"]] == [2, 1]
    assert result.result["revisions"][0]["change_cause"] == "deploy 2.0"
    assert result.result["revisions"][1]["images"] == ["ghcr.io/example/sark:1.9"]
    assert "RECENT ROLLOUT within 2h" in result.reason
    (listing,) = kube.cluster.seen("GET", "/replicasets$")
    assert listing.params["labelSelector"] == "app=sark"


async def test_rollout_history_does_not_flag_an_old_rollout(kube):
    """A current revision older than flag_within is reported, not flagged."""
    seed_rollout(
        kube.cluster,
        NS,
        "sark",
        [("a:1", timedelta(days=9), None), ("a:2", timedelta(days=2), None)],
    )
    result = await kube.executor().run(
        K8sRolloutHistory(namespace=NS, deployment="sark", flag_within="2h"), ALERT
    )
    assert result.result["recent_rollout"] is False
    assert "no rollout within 2h" in result.reason


async def test_describe_an_hpa_at_its_max(kube):
    """k8s.describe of an HPA gives current/desired/min/max and says it is at max."""
    kube.cluster.put(
        hpa("sark-hpa", NS, "sark", low=3, high=10, current=10, desired=10)
    )
    step = K8sDescribe(
        namespace=NS, object_kind="HorizontalPodAutoscaler", object_name="sark-hpa"
    )
    result = await kube.executor().run(step, ALERT)
    assert result.result["at_max"] is True
    assert (result.result["current"], result.result["min"], result.result["max"]) == (
        10,
        3,
        10,
    )
    assert "AT MAX" in result.reason
    assert "cpu 93%" in result.reason
    assert kube.cluster.seen(
        "GET",
        "/apis/autoscaling/v2/namespaces/production/horizontalpodautoscalers/sark-hpa",
    )


async def test_describe_a_deployment_shows_status_and_conditions(kube):
    """k8s.describe of a Deployment: ready/updated/unavailable and its conditions."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY, ready=1)
    result = await kube.executor().run(
        K8sDescribe(namespace=NS, object_name="sark"), ALERT
    )
    assert "1/3 ready" in result.reason
    assert "Available=False (MinimumReplicasUnavailable)" in result.reason
    assert result.result["images"] == ["ghcr.io/example/sark:2.0"]


# ----------------------------------------------------------------- rollout undo


async def test_rollout_undo_restores_the_previous_template(kube):
    """Undo patches the Deployment with revision 1's template, as kubectl does."""
    rollout = seed_rollout(kube.cluster, NS, "sark", HISTORY)
    step = K8sRolloutUndo(namespace=NS, deployment="sark", only_if_rollout_within="2h")
    result = await kube.executor().run(step, ALERT)
    assert result.ok
    assert "from revision 2 (ghcr.io/example/sark:2.0) to revision 1" in result.reason
    after = kube.deployment()
    assert _images(after) == ["ghcr.io/example/sark:1.9"]
    assert "pod-template-hash" not in after["spec"]["template"]["metadata"]["labels"]
    assert (
        after["metadata"]["annotations"]["kubernetes.io/change-cause"] == "deploy 1.9"
    )
    old = copy.deepcopy(rollout.replica_sets[0]["spec"]["template"])
    del old["metadata"]["labels"]["pod-template-hash"]
    assert after["spec"]["template"] == old
    (patch,) = kube.cluster.seen("PATCH", DEPLOY)
    assert patch.headers["Content-Type"] == "application/json-patch+json"
    assert [op["path"] for op in patch.data] == [
        "/metadata/resourceVersion",
        "/spec/template",
        "/metadata/annotations",
    ]
    record = result.result["request"]
    assert record["body_sha256"] == hashlib.sha256(patch.body).hexdigest()
    assert record["body"][1]["value"]["spec"]["containers"][0]["env"] == [
        {"name": "LOG_LEVEL", "value": "<redacted>"}
    ]
    assert record["redacted"] == "1 literal env value(s)"


async def test_rollout_undo_to_a_named_revision(kube):
    """to_revision picks that ReplicaSet's template, not the previous one."""
    seed_rollout(
        kube.cluster,
        NS,
        "sark",
        [
            ("a:1", timedelta(days=3), None),
            ("a:2", timedelta(days=2), None),
            ("a:3", timedelta(minutes=5), None),
        ],
    )
    result = await kube.executor().run(
        K8sRolloutUndo(namespace=NS, deployment="sark", to_revision=1), ALERT
    )
    assert result.result["to_revision"] == 1
    assert _images(kube.deployment()) == ["a:1"]


async def test_rollout_undo_refuses_without_an_earlier_revision(kube):
    """With only one revision there is nothing to roll back to; nothing is sent."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY[1:])
    with pytest.raises(PermanentStepError, match="no revision before 1"):
        await kube.executor().run(
            K8sRolloutUndo(namespace=NS, deployment="sark"), ALERT
        )
    assert not kube.cluster.seen("PATCH")


async def test_rollout_undo_refuses_an_unknown_revision(kube):
    """A to_revision that is not kept is refused with the revisions that are."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    with pytest.raises(
        PermanentStepError, match=r"no revision 7 \(revisions kept: 2, 1\)"
    ):
        await kube.executor().run(
            K8sRolloutUndo(namespace=NS, deployment="sark", to_revision=7), ALERT
        )


async def test_rollout_undo_skips_when_the_rollout_is_older_than_the_window(kube):
    """only_if_rollout_within: an old current revision is left alone, with why."""
    t0 = datetime.now(UTC).replace(microsecond=0)
    seed_rollout(
        kube.cluster,
        NS,
        "sark",
        [("a:1", timedelta(days=9), None), ("a:2", timedelta(hours=5), None)],
        at=t0,
    )
    step = K8sRolloutUndo(namespace=NS, deployment="sark", only_if_rollout_within="2h")
    result = await kube.executor(clock=lambda: t0).run(step, ALERT)
    assert result.ok
    assert result.result["rolled_back"] is False
    assert "first rolled out 5h ago, not within 2h" in result.reason
    assert not kube.cluster.seen("PATCH")


async def test_rollout_undo_refuses_a_paused_deployment(kube):
    """A paused Deployment is not rolled back (kubectl refuses too)."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY, paused=True)
    with pytest.raises(PermanentStepError, match="paused"):
        await kube.executor().run(
            K8sRolloutUndo(namespace=NS, deployment="sark"), ALERT
        )
    assert not kube.cluster.seen("PATCH")


async def test_rollout_undo_never_overwrites_a_concurrent_deploy(kube):
    """If someone deploys between our read and our write, the undo stops."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)

    def deploy(cluster: Cluster) -> None:
        obj = cluster.objects[DEPLOYMENTS, NS, "sark"]
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = (
            "ghcr.io/example/sark:2.1"
        )

    kube.cluster.fail("PATCH", DEPLOY, 409, before=deploy)
    with pytest.raises(PermanentStepError, match="changed while rolling back"):
        await kube.executor().run(
            K8sRolloutUndo(namespace=NS, deployment="sark"), ALERT
        )
    assert len(kube.cluster.seen("PATCH", DEPLOY)) == 1
    assert _images(kube.deployment()) == ["ghcr.io/example/sark:2.1"]


async def test_rollout_undo_then_rollout_status_verifies_after_catching_up(kube):
    """Verification polls until observedGeneration and replicas have caught up."""
    kube.cluster.settle_after = 0.2
    seed_rollout(kube.cluster, NS, "sark", HISTORY, ready=1)
    made = kube.executor()
    step = K8sRolloutUndo(
        namespace=NS,
        deployment="sark",
        verify={"type": "k8s.rollout_status", "timeout": "5s"},
    )
    assert (await made.run(step, ALERT)).ok
    assert step.verify is not None
    verified = await made.verify(step.verify, step, ALERT)
    assert verified.ok, verified.reason
    assert verified.reason == 'verified: deployment "sark" successfully rolled out'
    assert verified.result["polls"] > 1
    history = await made.run(K8sRolloutHistory(namespace=NS, deployment="sark"), ALERT)
    assert history.result["current_revision"] == 3
    assert history.result["revisions"][0]["images"] == ["ghcr.io/example/sark:1.9"]


async def test_rollout_status_gives_up_at_its_timeout(kube):
    """A rollout that does not catch up within the timeout is not verified."""
    kube.cluster.settle_after = 30
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    made = kube.executor()
    step = K8sRolloutRestart(namespace=NS, workload="sark")
    await made.run(step, ALERT)
    check = RolloutStatusVerify(timeout="200ms")
    verified = await made.verify(check, step, ALERT)
    assert not verified.ok
    assert "waiting for deployment spec update to be observed" in verified.reason


async def test_rollout_status_fails_fast_past_the_progress_deadline(kube):
    """ProgressDeadlineExceeded fails the verification at once, with the message."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    conditions = kube.cluster.objects[DEPLOYMENTS, NS, "sark"]["status"]["conditions"]
    conditions[1].update(
        reason="ProgressDeadlineExceeded",
        message='ReplicaSet "sark-x" has timed out progressing.',
    )
    step = K8sRolloutUndo(namespace=NS, deployment="sark")
    with pytest.raises(PermanentStepError, match="exceeded its progress deadline"):
        await kube.executor().verify(RolloutStatusVerify(timeout="5s"), step, ALERT)


@pytest.mark.e2e
async def test_rollout_undo_leaves_the_deployment_kubectl_would(tmp_path):
    """Our undo and `kubectl rollout undo` produce the same template and annotations."""
    kubectl = require_binary("kubectl")
    results = []
    for use_kubectl in (True, False):
        cluster = Cluster()
        async with serve(cluster) as url:
            seed_rollout(cluster, NS, "sark", HISTORY)
            if use_kubectl:
                proc = await asyncio.create_subprocess_exec(
                    kubectl,
                    f"--server={url}",
                    "rollout",
                    "undo",
                    "deployment/sark",
                    "-n",
                    NS,
                    env={
                        **os.environ,
                        "HOME": str(tmp_path),
                        "KUBECONFIG": str(tmp_path / "none"),
                    },
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                output, _ = await proc.communicate()
                assert proc.returncode == 0, output.decode()
            else:
                kube = Kube(cluster, url)
                await kube.executor().run(
                    K8sRolloutUndo(namespace=NS, deployment="sark"), ALERT
                )
                for made in kube.made:
                    await made.aclose()
            dep = cluster.get(DEPLOYMENTS, NS, "sark")
            assert dep is not None
            results.append(
                (_no_nulls(dep["spec"]["template"]), dep["metadata"]["annotations"])
            )
    assert results[0] == results[1]


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


# ----------------------------------------------------------------- restart


async def test_rollout_restart_stamps_restarted_at(kube):
    """Restart sets the template's restartedAt annotation (RFC 3339) as kubectl does."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY)
    fixed = datetime(2026, 11, 26, 3, 4, 5, 678000, tzinfo=UTC)
    result = await kube.executor(clock=lambda: fixed).run(
        K8sRolloutRestart(namespace=NS, workload="sark"), ALERT
    )
    assert result.result["restarted_at"] == "2026-11-26T03:04:05Z"
    after = kube.deployment()
    assert after["spec"]["template"]["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/restartedAt": "2026-11-26T03:04:05Z"
    }
    assert _images(after) == ["ghcr.io/example/sark:2.0"]
    assert after["metadata"]["generation"] == 2
    (patch,) = kube.cluster.seen("PATCH", DEPLOY)
    assert patch.headers["Content-Type"] == "application/strategic-merge-patch+json"
    assert patch.data["spec"] == {
        "template": {
            "metadata": {
                "annotations": {
                    "kubectl.kubernetes.io/restartedAt": "2026-11-26T03:04:05Z"
                }
            }
        }
    }
    assert result.result["request"]["body"] == patch.data


async def test_rollout_restart_refuses_a_paused_deployment(kube):
    """A paused Deployment is not restarted; the reason says how to resume it."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY, paused=True)
    with pytest.raises(
        PermanentStepError, match="kubectl rollout resume deployment/sark"
    ):
        await kube.executor().run(
            K8sRolloutRestart(namespace=NS, workload="sark"), ALERT
        )
    assert not kube.cluster.seen("PATCH")


async def test_rollout_restart_of_a_statefulset_verifies(kube):
    """StatefulSets restart the same way and verify with kubectl's statefulset rules."""
    kube.cluster.put(stateful_set("openldap", NS))
    made = kube.executor()
    step = K8sRolloutRestart(
        namespace=NS, workload_kind="StatefulSet", workload="openldap"
    )
    assert (await made.run(step, ALERT)).ok
    verified = await made.verify(RolloutStatusVerify(timeout="5s"), step, ALERT)
    assert verified.ok, verified.reason
    assert "statefulset rolling update complete 1 pods" in verified.reason
    assert kube.cluster.seen("PATCH", "/statefulsets/openldap$")


# ----------------------------------------------------------------- scale and HPA


async def test_scale_clamps_to_max_and_says_so(kube):
    """+5 from 8 with max 10 scales to 10 through the scale subresource."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY, replicas=8)
    result = await kube.executor().run(
        K8sScale(namespace=NS, workload="sark", replicas="+5", max=10), ALERT
    )
    assert kube.deployment()["spec"]["replicas"] == 10
    assert "from 8 to 10 replicas (+5 asks for 13, clamped to max 10)" in result.reason
    (patch,) = kube.cluster.seen("PATCH", "/deployments/sark/scale$")
    assert patch.data["spec"] == {"replicas": 10}
    assert result.result["clamped"] is True


async def test_scale_up_never_goes_below_the_current_count(kube):
    """Scaling up when already above max changes nothing."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY, replicas=12)
    result = await kube.executor().run(
        K8sScale(namespace=NS, workload="sark", replicas="x2", max=10), ALERT
    )
    assert kube.deployment()["spec"]["replicas"] == 12
    assert "not scaling down while scaling up" in result.reason
    assert not kube.cluster.seen("PATCH")


async def test_scale_to_an_absolute_count_is_clamped_to_min(kube):
    """An absolute count below min is raised to min."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY, replicas=5)
    result = await kube.executor().run(
        K8sScale(namespace=NS, workload="sark", replicas="1", min=3, max=10), ALERT
    )
    assert kube.deployment()["spec"]["replicas"] == 3
    assert "clamped to min 3" in result.reason


async def test_patch_hpa_raises_max_replicas_up_to_the_cap(kube):
    """+5 on maxReplicas 10 with cap 12 sets 12, and the reason says it was capped."""
    kube.cluster.put(hpa("sark-hpa", NS, "sark", high=10))
    result = await kube.executor().run(
        K8sPatchHpa(namespace=NS, hpa="sark-hpa", max_replicas="+5", cap=12), ALERT
    )
    after = kube.cluster.get(HPAS, NS, "sark-hpa")
    assert after is not None
    assert after["spec"]["maxReplicas"] == 12
    assert "from 10 to 12 (+5 asks for 15, capped at 12)" in result.reason
    (patch,) = kube.cluster.seen("PATCH", "/horizontalpodautoscalers/sark-hpa$")
    assert patch.data["spec"] == {"maxReplicas": 12}


async def test_patch_hpa_never_lowers_max_replicas(kube):
    """An absolute maxReplicas below the current one changes nothing."""
    kube.cluster.put(hpa("sark-hpa", NS, "sark", high=15))
    result = await kube.executor().run(
        K8sPatchHpa(namespace=NS, hpa="sark-hpa", max_replicas="12", cap=20), ALERT
    )
    assert "already at or above 12" in result.reason
    assert not kube.cluster.seen("PATCH")


# ----------------------------------------------------------------- delete pods


async def test_delete_refuses_a_pod_no_controller_would_recreate(kube):
    """A bare pod is never deleted: nothing would bring it back."""
    bare = pod_of(deployment("debug", NS, image="busybox"), "debug-shell")
    kube.cluster.put(bare)
    with pytest.raises(
        PermanentStepError, match="not owned by a ReplicaSet or StatefulSet"
    ):
        await kube.executor().run(
            K8sDeletePod(namespace=NS, pod="debug-shell", min_ready=0), ALERT
        )
    assert not kube.cluster.seen("DELETE")
    assert kube.cluster.get(PODS, NS, "debug-shell") is not None


async def test_delete_keeps_min_ready_pods_and_prefers_broken_ones(kube):
    """Broken pods go first; ready ones only while min_ready stays ready."""
    rollout = seed_rollout(kube.cluster, NS, "sark", HISTORY, replicas=4, ready=3)
    kube.cluster.recreate_pods = False
    broken = rollout.pods[3]["metadata"]["name"]
    step = K8sDeletePod(namespace=NS, selector="app=sark", max_pods=3, min_ready=2)
    result = await kube.executor().run(step, ALERT)
    deleted = [d["pod"] for d in result.result["deleted"]]
    assert deleted[0] == broken
    assert len(deleted) == 2  # the broken one, then one ready: 3 -> 2 ready
    assert result.result["ready_at_least"] == 2
    assert any("below min_ready 2" in s["why"] for s in result.result["skipped"])
    requests = kube.cluster.seen("DELETE")
    assert len(requests) == 2
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in rollout.pods}
    assert requests[0].data == {"preconditions": {"uid": uids[broken]}}
    assert len(kube.cluster.items(PODS, NS)) == 2


async def test_delete_refuses_when_min_ready_forbids_every_pod(kube):
    """When no pod can go without breaking min_ready, nothing is deleted."""
    seed_rollout(kube.cluster, NS, "sark", HISTORY, replicas=2)
    with pytest.raises(PermanentStepError, match="below min_ready 2"):
        await kube.executor().run(
            K8sDeletePod(namespace=NS, selector="app=sark", min_ready=2), ALERT
        )
    assert not kube.cluster.seen("DELETE")


async def test_delete_a_statefulset_pod_then_pods_ready_verifies(kube):
    """openldap-0 is deleted, recreated by its StatefulSet, and verified ready."""
    kube.cluster.settle_after = 0.1
    sts = kube.cluster.put(stateful_set("openldap", NS))
    kube.cluster.put(pod_of(sts, "openldap-0", ready=False, restarts=3))
    made = kube.executor()
    step = K8sDeletePod(
        namespace=NS,
        pod="openldap-0",
        min_ready=0,
        verify={"type": "k8s.pods_ready", "min_ready": 1, "timeout": "5s"},
    )
    result = await made.run(step, ALERT)
    assert [d["pod"] for d in result.result["deleted"]] == ["openldap-0"]
    verified = await made.verify(
        PodsReadyVerify(min_ready=1, timeout="5s"), step, ALERT
    )
    assert verified.ok, verified.reason
    assert "1 of 1 pods ready (-l app=openldap)" in verified.reason


# ----------------------------------------------------------------- memory limit


async def test_set_memory_limit_raises_only_the_named_container(kube):
    """One container's limit is raised by a strategic merge; its sidecar is not."""
    dep = deployment(
        "sark",
        NS,
        image="x",
        containers=[
            container("app", "sark:2"),
            container("proxy", "envoy:1", memory="128Mi"),
        ],
    )
    kube.cluster.put(dep)
    step = K8sSetMemoryLimit(
        namespace=NS, workload="sark", container="app", memory="1Gi", cap="2Gi"
    )
    result = await kube.executor().run(step, ALERT)
    assert "from 512Mi to 1Gi" in result.reason
    containers = kube.deployment()["spec"]["template"]["spec"]["containers"]
    assert [c["resources"]["limits"]["memory"] for c in containers] == ["1Gi", "128Mi"]
    assert containers[0]["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    (patch,) = kube.cluster.seen("PATCH", DEPLOY)
    assert patch.headers["Content-Type"] == "application/strategic-merge-patch+json"
    again = await kube.executor().run(step, ALERT)
    assert "already at or above 1Gi" in again.reason
    assert len(kube.cluster.seen("PATCH")) == 1


async def test_set_memory_limit_names_the_containers_when_one_is_missing(kube):
    """An unknown container is refused with the ones that exist."""
    kube.cluster.put(deployment("sark", NS, image="x"))
    step = K8sSetMemoryLimit(
        namespace=NS, workload="sark", container="nope", memory="1Gi", cap="2Gi"
    )
    with pytest.raises(
        PermanentStepError, match=r"no container 'nope' \(containers: app\)"
    ):
        await kube.executor().run(step, ALERT)


@pytest.mark.parametrize(
    ("live", "changed"),
    [("1e9", True), ("1073741824", False), ("2Gi", False), ("1.5Gi", False)],
)
async def test_set_memory_limit_reads_any_kubernetes_quantity(kube, live, changed):
    """A live limit of 1e9 (a valid quantity) is compared exactly, not a crash."""
    kube.cluster.put(
        deployment(
            "sark", NS, image="x", containers=[container("app", "x", memory=live)]
        )
    )
    step = K8sSetMemoryLimit(
        namespace=NS, workload="sark", container="app", memory="1Gi", cap="2Gi"
    )
    result = await kube.executor().run(step, ALERT)
    assert result.result["changed"] is changed, result.reason
    assert len(kube.cluster.seen("PATCH", DEPLOY)) == int(changed)


async def test_set_memory_limit_refuses_a_live_limit_it_cannot_read(kube):
    """A live limit that is not a quantity is a typed step error; nothing is sent."""
    kube.cluster.put(
        deployment(
            "sark", NS, image="x", containers=[container("app", "x", memory="lots")]
        )
    )
    step = K8sSetMemoryLimit(
        namespace=NS, workload="sark", container="app", memory="1Gi", cap="2Gi"
    )
    with pytest.raises(QuantityError, match="is 'lots', which is not a Kubernetes"):
        await kube.executor().run(step, ALERT)
    assert kube.cluster.seen("PATCH") == []


# ----------------------------------------------------------------- allowlists


async def test_kinds_outside_the_allowlist_are_refused(kube):
    """kube_allowed_kinds: a step on another kind is refused before any request."""
    kube.cluster.put(hpa("sark-hpa", NS, "sark"))
    made = kube.executor(allowed_kinds=["Deployment", "Pod"])
    with pytest.raises(
        PermanentStepError, match="HorizontalPodAutoscaler is not in kube_allowed_kinds"
    ):
        await made.run(
            K8sPatchHpa(namespace=NS, hpa="sark-hpa", max_replicas="+1", cap=20), ALERT
        )
    assert not list(kube.cluster)


async def test_the_namespace_allowlist_blocks_through_the_planner(kube, tmp_path):
    """A step in a namespace outside `namespaces` is skipped; the API is not called."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        """
playbooks:
  look:
    diagnostics:
      - type: k8s.pods
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
rules:
  - name: look
    match: ['alertname="SarkApiDown"']
    playbook: look
"""
    )
    alert = Alert(
        source="alertmanager",
        fingerprint="f",
        status="firing",
        labels={
            "alertname": "SarkApiDown",
            "namespace": "kube-system",
            "deployment": "coredns",
        },
    )
    now = datetime.now(UTC)
    planned = plan(
        alert,
        load_rulebook([rules], steps=builtin_registry()),
        now,
        PlanContext(execute=True, namespaces=("production",)),
    )
    trace = await Runner({"k8s": kube.executor()}, lambda: now, mode="execute").run(
        planned
    )
    (step,) = trace.matches[0].steps
    assert step.decision is Decision.SKIPPED
    assert (
        step.reason == "namespace 'kube-system' is not allowed (allowlist: production)"
    )
    assert not list(kube.cluster)


def test_rbac_table_in_the_docs_matches_the_step_models():
    """docs/steps.md lists exactly the RBAC each step model declares."""
    doc = (Path(__file__).parent.parent / "docs" / "steps.md").read_text()
    table = {line for line in doc.splitlines() if line.startswith("| `k8s.")}
    expected = set()
    models = [(n, m) for n, m in STEP_TYPES.items() if n.startswith("k8s.")]
    models += [
        (f"{m.model_fields['type'].default}` (verify)", m)
        for m in (RolloutStatusVerify, PodsReadyVerify)
    ]
    for name, model in models:
        for group, resource, verbs in model.rbac:
            cell = f"`{name}" if name.endswith("(verify)") else f"`{name}`"
            where = f"`{group or 'core'}` | `{resource}`"
            expected.add(f"| {cell} | {where} | {', '.join(verbs)} |")
    rbac_rows = {line for line in table if line.count("|") == 5}
    assert rbac_rows == expected
