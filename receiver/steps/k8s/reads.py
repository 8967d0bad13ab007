"""``k8s.*`` diagnostics: pods, events, logs, rollout history, describe.

Each reads through ``Kube`` (bounded: every list, log and message has a cap) and
returns one line a person paged at night can act on, plus structured, capped
detail. ``DIAGNOSTICS`` pairs each step model with the function that runs it.
"""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import re2

from receiver.errors import PermanentStepError
from receiver.model import StepResult, iso
from receiver.rulebook.steps import (
    K8sDescribe,
    K8sEvents,
    K8sLogs,
    K8sPods,
    K8sRolloutHistory,
)
from receiver.rulebook.templates import format_duration
from receiver.steps.k8s.access import LIST_CAP, Diagnostic, Kube
from receiver.steps.kube_client import KubeForbiddenError, LogTail, read_log
from receiver.steps.kube_objects import (
    CHANGE_CAUSE,
    EPOCH,
    Hpa,
    Json,
    age_of,
    cap,
    condition_list,
    conditions_line,
    dig,
    event_time,
    is_pod_ready,
    metric_line,
    owned_names,
    parse_object,
    parse_time,
    pod_line,
    pod_summary,
    revision_of,
    template_images,
)

_EVENT_PAGES = 4  # pages of events k8s.events reads per query


async def pods(kube: Kube, step: K8sPods) -> StepResult:
    """Pods of a workload or selector: readiness, restarts, last exit."""
    selector = step.selector
    if step.workload:
        selector = await kube.selector_of(
            step.workload_kind, step.namespace, step.workload
        )
    pods, more = await kube.list_pods(step.namespace, selector, step.limit)
    now = kube.clock()
    summaries = [pod_summary(p, now) for p in pods]
    ready = sum(1 for p in summaries if p["is_ready"])
    where = step.target()
    if not summaries:
        return StepResult(
            ok=True,
            reason=f"no pods for {where} (selector {selector or '<all>'})",
            result={"selector": selector, "pods": [], "truncated": False},
        )
    count = f"{len(summaries)}{'+' if more else ''} pods"
    bad = sorted(
        (p for p in summaries if not p["is_ready"]),
        key=lambda p: -int(p["restarts"]),
    )
    if bad:
        reason = f"{where}: {count}, {ready} ready; " + "; ".join(
            pod_line(p) for p in bad[:3]
        )
    else:
        restarts = sum(int(p["restarts"]) for p in summaries)
        reason = f"{where}: {count}, all ready ({restarts} restarts in total)"
        with_exit = [p for p in summaries if p["last_termination"]]
        if with_exit:
            reason += "; " + pod_line(max(with_exit, key=lambda p: p["restarts"]))
    return StepResult(
        ok=True,
        reason=reason,
        result={
            "selector": selector,
            "pods": summaries,
            "ready": ready,
            "truncated": more,
        },
    )


async def events(kube: Kube, step: K8sEvents) -> StepResult:
    """Events of the object and, for a workload, of its pods (and ReplicaSets).

    Only ``events list`` is needed: a workload's pods (and a Deployment's
    ReplicaSets) are recognised by the names their controllers give them,
    so no pod list or workload read (and no extra RBAC) is involved.
    """
    kube.check_kind("Event")
    ns = step.namespace
    queries: list[tuple[str | None, re.Pattern[str] | None]] = [(None, None)]
    if step.object_name:
        own = (
            f"involvedObject.kind={step.object_kind},"
            f"involvedObject.name={step.object_name}"
        )
        queries = [(own, None)]
        queries += [
            (f"involvedObject.kind={kind}", pattern)
            for kind, pattern in owned_names(step.object_kind, step.object_name)
        ]
    found: list[Json] = []
    partial = False
    for selector, names in queries:
        items, more = await _list_events(kube, ns, selector)
        partial = partial or more
        found += [
            e
            for e in items
            if names is None or names.match(str(dig(e, "involvedObject", "name") or ""))
        ]
    now = kube.clock()
    events = sorted(found, key=event_time, reverse=True)[: step.limit]
    shown = [
        {
            "type": e.get("type"),
            "reason": e.get("reason"),
            "object": f"{dig(e, 'involvedObject', 'kind')}/"
            f"{dig(e, 'involvedObject', 'name')}",
            "message": cap(e.get("message")),
            "count": e.get("count") or 1,
            "last_seen": iso(event_time(e)) if event_time(e) > EPOCH else None,
            "age": age_of(now, event_time(e)) if event_time(e) > EPOCH else None,
        }
        for e in events
    ]
    where = step.target()
    if not shown:
        return StepResult(
            ok=True, reason=f"no events for {where}", result={"events": []}
        )
    warnings = sum(1 for e in shown if e["type"] == "Warning")
    top = next((e for e in shown if e["type"] == "Warning"), shown[0])
    reason = (
        f"{where}: {len(found)} events, {warnings} warnings among the newest "
        f"{len(shown)}; newest "
        f"{'warning' if top['type'] == 'Warning' else 'event'}: {top['reason']} "
        f"{top['object']}: {cap(top['message'], 160)}"
        f" (x{top['count']}, {top['age'] or '?'} ago)"
    )
    if partial:
        reason += f" (read the first {LIST_CAP * _EVENT_PAGES} events only)"
    return StepResult(
        ok=True,
        reason=reason,
        result={"events": shown, "total": len(found), "partial": partial},
    )


async def _list_events(
    kube: Kube, ns: str, selector: str | None
) -> tuple[list[Json], bool]:
    """Events matching ``selector``, a few pages at most; whether more exist."""
    core = await kube.api.core()
    items: list[Json] = []
    token: str | None = None
    for _ in range(_EVENT_PAGES):
        kwargs: dict[str, Any] = {"limit": LIST_CAP}
        if selector:
            kwargs["field_selector"] = selector
        if token:
            kwargs["_continue"] = token
        body = await kube.api.json(
            f"list events -n {ns}"
            + (f" --field-selector {selector}" if selector else ""),
            core.list_namespaced_event,
            ns,
            **kwargs,
        )
        items += body.get("items") or []
        token = dig(body, "metadata", "continue")
        if not token:
            return items, False
    return items, True


async def logs(kube: Kube, step: K8sLogs) -> StepResult:
    """The tail of a pod's logs, or of a workload's most broken pods."""
    ns = step.namespace
    if step.pod:
        kube.check_kind("Pod")
        core = await kube.api.core()
        pods = [
            await kube.api.json(
                f"get pod/{step.pod} -n {ns}",
                core.read_namespaced_pod,
                step.pod,
                ns,
            )
        ]
    else:
        assert step.workload is not None  # noqa: S101 (validated at load)
        selector = await kube.selector_of(step.workload_kind, ns, step.workload)
        pods, _ = await kube.list_pods(ns, selector, LIST_CAP)
        # The broken pods first: those are the ones someone paged wants to read.
        pods.sort(
            key=lambda p: (
                is_pod_ready(p),
                -sum(
                    int(c.get("restartCount") or 0)
                    for c in dig(p, "status", "containerStatuses") or []
                ),
                dig(p, "metadata", "name") or "",
            )
        )
        pods = pods[: step.max_pods]
    grep = re2.compile(step.grep) if step.grep else None
    out = [await _pod_log(kube, step, pod, grep) for pod in pods]
    flags = f"last {step.tail_lines} lines" + (
        ", previous containers" if step.previous else ""
    )
    if step.grep:
        flags += f", matching /{step.grep}/"
    if not out:
        return StepResult(
            ok=True,
            reason=f"no pods for {step.target()}",
            result={"pods": []},
        )
    parts = []
    for entry in out:
        if entry.get("error"):
            parts.append(f"{entry['pod']}: {entry['error']}")
        elif entry["lines"]:
            parts.append(
                f"{entry['pod']}: {len(entry['lines'])} lines, last: "
                f"{cap(entry['lines'][-1], 160)}"
            )
        else:
            parts.append(f"{entry['pod']}: no lines")
    return StepResult(
        ok=True,
        reason=f"logs of {step.target()} ({flags}): " + "; ".join(parts),
        result={"pods": out, "grep": step.grep, "previous": step.previous},
    )


async def _pod_log(kube: Kube, step: K8sLogs, pod: Json, grep: Any) -> Json:
    name = str(dig(pod, "metadata", "name"))
    containers = [c.get("name") for c in dig(pod, "spec", "containers") or []]
    default = dig(
        pod, "metadata", "annotations", "kubectl.kubernetes.io/default-container"
    )
    container = step.container or default or (containers[0] if containers else None)
    kwargs: dict[str, Any] = {"tail_lines": step.tail_lines}
    if container:
        kwargs["container"] = container
    if step.previous:
        kwargs["previous"] = True
    if step.since:
        kwargs["since_seconds"] = max(int(step.since.total_seconds()), 1)
    core = await kube.api.core()

    async def read(response: aiohttp.ClientResponse) -> LogTail:
        return await read_log(response, grep, step.max_bytes)

    entry: Json = {"pod": name, "container": container}
    try:
        tail = await kube.api.request(
            f"logs pod/{name} -c {container} -n {step.namespace}",
            core.read_namespaced_pod_log,
            name,
            step.namespace,
            read=read,
            **kwargs,
        )
    except KubeForbiddenError:
        raise
    except PermanentStepError as exc:
        # 400: no previous container, or still creating; 404: pod gone.
        entry.update(lines=[], error=cap(str(exc).split(": ", 1)[-1], 200))
        return entry
    entry.update(
        lines=list(tail.lines),
        read_lines=tail.read_lines,
        matched=tail.matched,
        truncated=tail.dropped > 0,
    )
    return entry


async def history(kube: Kube, step: K8sRolloutHistory) -> StepResult:
    """A Deployment's revisions, flagging a recent rollout."""
    deployment = await kube.read_workload("Deployment", step.namespace, step.deployment)
    owned = await kube.owned_replica_sets(step.namespace, deployment)
    now = kube.clock()
    current = revision_of(deployment) or (revision_of(owned[0]) if owned else 0)
    revisions = [
        {
            "revision": revision_of(rs),
            "replicaset": dig(rs, "metadata", "name"),
            "change_cause": dig(rs, "metadata", "annotations", CHANGE_CAUSE),
            "images": template_images(dig(rs, "spec", "template", default={})),
            "created": dig(rs, "metadata", "creationTimestamp"),
            "age": age_of(now, parse_time(dig(rs, "metadata", "creationTimestamp"))),
            "replicas": int(dig(rs, "status", "replicas", default=0)),
            "current": revision_of(rs) == current,
        }
        for rs in owned[: step.limit]
    ]
    if not revisions:
        return StepResult(
            ok=True,
            reason=f"{step.target()}: no ReplicaSets found (no rollout history)",
            result={"revisions": [], "recent_rollout": False},
        )
    head = next((r for r in revisions if r["current"]), revisions[0])
    created = parse_time(head["created"])
    recent = created is not None and now - created <= step.flag_within
    cause = f" {head['change_cause']!r}" if head["change_cause"] else ""
    reason = (
        f"{step.target()}: revision {head['revision']} (current){cause}, "
        f"{', '.join(head['images'])}, first rolled out {head['age'] or '?'} ago"
    )
    older = [r for r in revisions if r["revision"] < head["revision"]]
    if older:
        prev = older[0]
        reason += (
            f"; previous revision {prev['revision']}: "
            f"{', '.join(prev['images'])} ({prev['age'] or '?'} ago)"
        )
    window = format_duration(step.flag_within)
    reason += (
        f"; RECENT ROLLOUT within {window}"
        if recent
        else f"; no rollout within {window}"
    )
    return StepResult(
        ok=True,
        reason=reason,
        result={
            "revisions": revisions,
            "current_revision": head["revision"],
            "recent_rollout": recent,
            "flag_within": window,
        },
    )


async def describe(kube: Kube, step: K8sDescribe) -> StepResult:
    """A workload's, pod's or HPA's status and conditions."""
    kind, ns, name = step.object_kind, step.namespace, step.object_name
    if kind == "HorizontalPodAutoscaler":
        return await _describe_hpa(kube, ns, name)
    if kind == "Pod":
        kube.check_kind("Pod")
        core = await kube.api.core()
        pod = await kube.api.json(
            f"get pod/{name} -n {ns}", core.read_namespaced_pod, name, ns
        )
        summary = pod_summary(pod, kube.clock())
        conditions = condition_list(pod)
        return StepResult(
            ok=True,
            reason=f"pod/{name}: {pod_line(summary)} on {summary['node']}; "
            + conditions_line(conditions),
            result={"pod": summary, "conditions": conditions},
        )
    obj = await kube.read_workload(kind, ns, name)
    status = dig(obj, "status", default={})
    conditions = condition_list(obj)
    if kind == "Deployment":
        counts = {
            "desired": dig(obj, "spec", "replicas", default=1),
            "updated": status.get("updatedReplicas") or 0,
            "ready": status.get("readyReplicas") or 0,
            "available": status.get("availableReplicas") or 0,
            "unavailable": status.get("unavailableReplicas") or 0,
        }
        line = (
            f"{counts['ready']}/{counts['desired']} ready, {counts['updated']} "
            f"updated, {counts['unavailable']} unavailable"
        )
    elif kind == "StatefulSet":
        counts = {
            "desired": dig(obj, "spec", "replicas", default=1),
            "ready": status.get("readyReplicas") or 0,
            "updated": status.get("updatedReplicas") or 0,
            "current_revision": status.get("currentRevision"),
            "update_revision": status.get("updateRevision"),
        }
        line = f"{counts['ready']}/{counts['desired']} ready"
    else:
        counts = {
            "desired": status.get("desiredNumberScheduled") or 0,
            "ready": status.get("numberReady") or 0,
            "updated": status.get("updatedNumberScheduled") or 0,
            "available": status.get("numberAvailable") or 0,
            "misscheduled": status.get("numberMisscheduled") or 0,
        }
        line = f"{counts['ready']}/{counts['desired']} ready"
    paused = bool(dig(obj, "spec", "paused"))
    generation = dig(obj, "metadata", "generation", default=0)
    observed = dig(obj, "status", "observedGeneration", default=0)
    if paused:
        line += ", PAUSED"
    if observed < generation:
        line += f", spec change not yet observed ({observed} < {generation})"
    if conditions:
        line += "; " + conditions_line(conditions)
    return StepResult(
        ok=True,
        reason=f"{kind.lower()}/{name}: {line}",
        result={
            "kind": kind,
            "replicas": counts,
            "paused": paused,
            "generation": generation,
            "observed_generation": observed,
            "images": template_images(dig(obj, "spec", "template", default={})),
            "conditions": conditions,
        },
    )


async def _describe_hpa(kube: Kube, ns: str, name: str) -> StepResult:
    hpa = await kube.read_hpa(ns, name)
    typed = parse_object(Hpa, hpa, f"hpa/{name}")
    spec, status = typed.spec, typed.status
    low = spec.min_replicas or 1
    high = spec.max_replicas or 0
    current = status.current_replicas or 0
    desired = status.desired_replicas or 0
    conditions = condition_list(hpa)
    limited = any(
        c["type"] == "ScalingLimited"
        and c["status"] == "True"
        and c["reason"] == "TooManyReplicas"
        for c in conditions
    )
    at_max = high > 0 and (current >= high or desired >= high or limited)
    metrics = [metric_line(m) for m in status.current_metrics[:10]]
    reason = (
        f"hpa/{name}: {current} current, {desired} desired (min {low}, max "
        f"{high})" + (" — AT MAX, it cannot scale further" if at_max else "")
    )
    if metrics:
        reason += "; " + ", ".join(metrics)
    if conditions:
        reason += "; " + conditions_line(conditions)
    return StepResult(
        ok=True,
        reason=reason,
        result={
            "current": current,
            "desired": desired,
            "min": low,
            "max": high,
            "at_max": at_max,
            "target": (
                spec.scale_target_ref.model_dump(by_alias=True, exclude_unset=True)
                if spec.scale_target_ref
                else {}
            ),
            "metrics": metrics,
            "conditions": conditions,
        },
    )


DIAGNOSTICS: tuple[Diagnostic[Any], ...] = (
    Diagnostic(K8sPods, pods),
    Diagnostic(K8sEvents, events),
    Diagnostic(K8sLogs, logs),
    Diagnostic(K8sRolloutHistory, history),
    Diagnostic(K8sDescribe, describe),
)
