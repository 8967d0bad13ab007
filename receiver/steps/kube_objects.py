"""Reading Kubernetes objects as the API returns them (JSON), for ``k8s.*`` steps.

Pure functions used by ``receiver.steps.k8s``: label selectors, pod and
condition summaries, kubectl's rollout-status rules, revision and template
helpers, and the record of a write kept in the decision trace. No I/O.

The typed views the steps read objects through (``Workload``, ``Pod``,
``Event``, ...) and ``parse_object`` are in ``kube_views``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from receiver.errors import PermanentStepError
from receiver.rulebook.templates import format_duration

Json = dict[str, Any]


REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
POD_TEMPLATE_HASH = "pod-template-hash"
# Deployment annotations kubectl keeps from the Deployment (not the ReplicaSet)
# when it rolls back (kubectl/pkg/polymorphichelpers/rollback.go).
ROLLBACK_KEEP = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)
# Labels that differ pod by pod, dropped when looking for a pod's siblings.
PER_POD_LABELS = frozenset(
    {
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "controller-revision-hash",
    }
)
REPLACING_OWNERS = frozenset({"ReplicaSet", "StatefulSet"})
MESSAGE_CHARS = 300
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ----------------------------------------------------------------- JSON helpers


def dig(obj: Any, *path: str, default: Any = None) -> Any:
    """``obj[a][b]...`` or ``default`` when any step is missing or null."""
    current = obj
    for key in path:
        if not isinstance(current, Mapping):
            return default
        current = current.get(key)
        if current is None:
            return default
    return current


def label_selector(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector object (matchLabels, matchExpressions) as a query string."""
    parts = [
        f"{k}={v}" for k, v in sorted((dig(selector, "matchLabels") or {}).items())
    ]
    for expr in dig(selector, "matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values")
        joined = ",".join(values or [])
        parts.append(
            {
                "In": f"{key} in ({joined})",
                "NotIn": f"{key} notin ({joined})",
                "Exists": f"{key}",
                "DoesNotExist": f"!{key}",
            }.get(op, f"{key}")
        )
    return ",".join(parts)


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 timestamp from the API, or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def rfc3339(now: datetime) -> str:
    """``2024-05-06T07:08:09Z``: what kubectl writes into restartedAt."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age_of(now: datetime, then: datetime | None) -> str | None:
    """How long ago ``then`` was (``3d``, ``37m``), or None."""
    if then is None:
        return None
    return format_duration(max(now - then, timedelta(0)))


def cap(text: Any, limit: int = MESSAGE_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    value = " ".join(str(text or "").split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def revision_of(obj: Mapping[str, Any]) -> int:
    """The ``deployment.kubernetes.io/revision`` of an object (0 if none)."""
    try:
        return int(dig(obj, "metadata", "annotations", REVISION, default="0"))
    except ValueError:
        return 0


def without_hash(template: Mapping[str, Any]) -> Json:
    """A pod template without its pod-template-hash label (as equalIgnoreHash)."""
    out: Json = copy.deepcopy(dict(template))
    labels = dig(out, "metadata", "labels")
    if isinstance(labels, dict):
        labels.pop(POD_TEMPLATE_HASH, None)
    return out


def template_digest(template: Mapping[str, Any]) -> str:
    """A short digest of a pod template, pod-template-hash label left out."""
    canonical = json.dumps(
        without_hash(template), sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def template_images(template: Mapping[str, Any]) -> list[str]:
    """The container images of a pod template."""
    return [str(c.get("image", "?")) for c in dig(template, "spec", "containers") or []]


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The owner reference marked ``controller``, if any."""
    for ref in dig(obj, "metadata", "ownerReferences") or []:
        if ref.get("controller"):
            return ref  # type: ignore[no-any-return]
    return None


def redact_env(body: Any) -> tuple[Any, int]:
    """``body`` with literal env values replaced, and how many were replaced.

    Pod templates may carry secrets as plain env values; a patch body is recorded
    in the decision trace, which people and sinks read.
    """
    count = 0

    def walk(node: Any, key: str = "") -> Any:
        nonlocal count
        if isinstance(node, list):
            if key == "env":
                out = []
                for item in node:
                    if isinstance(item, dict) and "value" in item:
                        count += 1
                        item = {**item, "value": "<redacted>"}  # noqa: PLW2901
                    out.append(walk(item))
                return out
            return [walk(v) for v in node]
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        return node

    return walk(body), count


def request_record(
    verb: str,
    resource: str,
    namespace: str,
    name: str,
    *,
    body: Any,
    content_type: str,
) -> Json:
    """What was sent, for the trace: the body (env values redacted) and its hash."""
    shown, hidden = redact_env(body)
    record: Json = {
        "verb": verb,
        "resource": resource,
        "namespace": namespace,
        "name": name,
        "content_type": content_type,
        "body": shown,
        # The library serialises the body with json.dumps; this is its exact hash.
        "body_sha256": hashlib.sha256(json.dumps(body).encode()).hexdigest(),
    }
    if hidden:
        record["redacted"] = f"{hidden} literal env value(s)"
    return record


# ----------------------------------------------------------------- summaries


def owned_names(kind: str, name: str) -> list[tuple[str, re.Pattern[str]]]:
    """The kinds and names a workload's controllers give what they create.

    Deployment ``web``: ReplicaSets ``web-<hash>`` and pods ``web-<hash>-<5>``;
    StatefulSet: pods ``web-<ordinal>``; DaemonSet: pods ``web-<5>``. Names are
    DNS-1123, so a ``web-api`` Deployment's pods (one more dash) never match.
    """
    base = re.escape(name)
    if kind == "Deployment":
        return [
            ("ReplicaSet", re.compile(rf"^{base}-[a-z0-9]{{1,10}}\Z")),
            ("Pod", re.compile(rf"^{base}-[a-z0-9]{{1,10}}-[a-z0-9]{{5}}\Z")),
        ]
    if kind == "StatefulSet":
        return [("Pod", re.compile(rf"^{base}-[0-9]+\Z"))]
    if kind == "DaemonSet":
        return [("Pod", re.compile(rf"^{base}-[a-z0-9]{{5}}\Z"))]
    return []


def pod_summary(pod: Mapping[str, Any], now: datetime) -> Json:
    """Phase, readiness, restarts, last termination, node and age of a pod."""
    statuses = dig(pod, "status", "containerStatuses") or []
    containers = dig(pod, "spec", "containers") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    total = len(containers) or len(statuses)
    waiting = next(
        (
            dig(c, "state", "waiting", "reason")
            for c in statuses
            if dig(c, "state", "waiting", "reason")
        ),
        None,
    )
    last: Json | None = None
    for c in statuses:
        term = dig(c, "lastState", "terminated") or dig(c, "state", "terminated")
        if not term:
            continue
        candidate = {
            "container": c.get("name"),
            "reason": term.get("reason") or "Unknown",
            "exit_code": term.get("exitCode"),
            "finished_at": term.get("finishedAt"),
        }
        if last is None or str(candidate["finished_at"] or "") > str(
            last["finished_at"] or ""
        ):
            last = candidate
    deleting = dig(pod, "metadata", "deletionTimestamp") is not None
    created = parse_time(dig(pod, "metadata", "creationTimestamp"))
    return {
        "name": dig(pod, "metadata", "name"),
        "phase": "Terminating"
        if deleting
        else dig(pod, "status", "phase", default="Unknown"),
        "ready": f"{ready}/{total}",
        "is_ready": is_pod_ready(pod),
        "restarts": sum(int(c.get("restartCount") or 0) for c in statuses),
        "waiting": waiting,
        "last_termination": last,
        "node": dig(pod, "spec", "nodeName"),
        "age": age_of(now, created),
    }


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    """Ready condition True and not being deleted."""
    if dig(pod, "metadata", "deletionTimestamp") is not None:
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in dig(pod, "status", "conditions") or []
    )


def pod_line(p: Mapping[str, Any]) -> str:
    """One pod summary as a short line (state, readiness, restarts, last exit)."""
    state = p["waiting"] or p["phase"]
    text = f"{p['name']} {state} {p['ready']}"
    if p["restarts"]:
        text += f", {p['restarts']} restarts"
    last = p["last_termination"]
    if last:
        text += f", last exit {last['reason']} ({last['exit_code']})"
    return text


def condition_list(obj: Mapping[str, Any]) -> list[Json]:
    """An object's status conditions, messages capped."""
    return [
        {
            "type": c.get("type"),
            "status": c.get("status"),
            "reason": c.get("reason"),
            "message": cap(c.get("message")),
            "last_update": c.get("lastUpdateTime") or c.get("lastTransitionTime"),
        }
        for c in dig(obj, "status", "conditions") or []
    ][:20]


def conditions_line(conditions: Iterable[Mapping[str, Any]]) -> str:
    """``Available=False (MinimumReplicasUnavailable), ...``."""
    return ", ".join(
        f"{c['type']}={c['status']}" + (f" ({c['reason']})" if c.get("reason") else "")
        for c in conditions
    )


def rollout_status(kind: str, obj: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a rollout is complete, with kubectl's ``rollout status`` message.

    Raises:
        PermanentStepError: the rollout cannot complete (progress deadline
            exceeded, or a strategy kubectl cannot watch).
    """
    name = dig(obj, "metadata", "name")
    generation = int(dig(obj, "metadata", "generation", default=0))
    observed = int(dig(obj, "status", "observedGeneration", default=0))
    status = dig(obj, "status", default={})
    if kind == "Deployment":
        return _deployment_status(name, obj, generation, observed, status)
    strategy = dig(obj, "spec", "updateStrategy", "type", default="RollingUpdate")
    if strategy != "RollingUpdate":
        raise PermanentStepError(
            f"rollout status is only available for the RollingUpdate strategy "
            f"({kind.lower()}/{name} uses {strategy})"
        )
    if kind == "StatefulSet":
        return _statefulset_status(obj, generation, observed, status)
    return _daemonset_status(name, generation, observed, status)


def _statefulset_status(
    obj: Mapping[str, Any], generation: int, observed: int, status: Json
) -> tuple[bool, str]:
    """The stateful set status viewer of kubectl (partitions aside)."""
    want = int(dig(obj, "spec", "replicas", default=1))
    ready = int(status.get("readyReplicas") or 0)
    if observed == 0 or generation > observed:
        return False, "waiting for statefulset spec update to be observed"
    if ready < want:
        return False, f"waiting for {want - ready} pods to be ready"
    if status.get("updateRevision") != status.get("currentRevision"):
        return False, (
            "waiting for statefulset rolling update to complete "
            f"{status.get('updatedReplicas') or 0} pods at revision "
            f"{status.get('updateRevision')}"
        )
    return True, (
        f"statefulset rolling update complete {want} pods at revision "
        f"{status.get('currentRevision')}"
    )


def _daemonset_status(
    name: str, generation: int, observed: int, status: Json
) -> tuple[bool, str]:
    """The daemon set status viewer of kubectl."""
    if generation > observed:
        return False, "waiting for daemon set spec update to be observed"
    desired = int(status.get("desiredNumberScheduled") or 0)
    updated = int(status.get("updatedNumberScheduled") or 0)
    available = int(status.get("numberAvailable") or 0)
    if updated < desired:
        return False, (
            f'waiting for daemon set "{name}" rollout to finish: {updated} out of '
            f"{desired} new pods have been updated"
        )
    if available < desired:
        return False, (
            f'waiting for daemon set "{name}" rollout to finish: {available} of '
            f"{desired} updated pods are available"
        )
    return True, f'daemon set "{name}" successfully rolled out'


def _deployment_status(
    name: str, obj: Mapping[str, Any], generation: int, observed: int, status: Json
) -> tuple[bool, str]:
    """The deployment status viewer of kubectl, line for line."""
    if generation > observed:
        return False, "waiting for deployment spec update to be observed"
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "Progressing"
            and cond.get("reason") == "ProgressDeadlineExceeded"
        ):
            raise PermanentStepError(
                f'deployment "{name}" exceeded its progress deadline: '
                f"{cap(cond.get('message'))}"
            )
    want = dig(obj, "spec", "replicas")
    updated = int(status.get("updatedReplicas") or 0)
    replicas = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if want is not None and updated < int(want):
        return False, (
            f'waiting for deployment "{name}" rollout to finish: {updated} out of '
            f"{want} new replicas have been updated"
        )
    if replicas > updated:
        return False, (
            f'waiting for deployment "{name}" rollout to finish: '
            f"{replicas - updated} old replicas are pending termination"
        )
    if available < updated:
        return False, (
            f'waiting for deployment "{name}" rollout to finish: {available} of '
            f"{updated} updated replicas are available"
        )
    return True, f'deployment "{name}" successfully rolled out'


def event_time(event: Mapping[str, Any]) -> datetime:
    """When an event last happened (the epoch when it does not say)."""
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        found = parse_time(event.get(key))
        if found is not None:
            return found
    return parse_time(dig(event, "metadata", "creationTimestamp")) or EPOCH


def metric_line(metric: Mapping[str, Any]) -> str:
    """One HPA current metric, e.g. ``cpu 93%``."""
    kind = metric.get("type", "?")
    body = metric.get(str(kind)[:1].lower() + str(kind)[1:], {}) if kind else {}
    name = dig(body, "name") or dig(body, "metric", "name") or kind
    current = dig(body, "current", default={})
    value = (
        f"{current['averageUtilization']}%"
        if "averageUtilization" in current
        else current.get("averageValue") or current.get("value") or "?"
    )
    return f"{name} {value}"
