"""``k8s.events``: recent events of an object and of its pods, newest first.

A diagnostic reading only ``events list`` (capped pages).
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.model import JSONObject, StepResult, iso
from receiver.rulebook.steps import RbacNeed
from receiver.rulebook.steps.base import K8sName, Rbac
from receiver.steps.k8s.access import (
    LIST_CAP,
    Diagnostic,
    Kube,
)
from receiver.steps.k8s.base import (
    K8sStep,
)
from receiver.steps.kube_objects import (
    EPOCH,
    Json,
    age_of,
    cap,
    event_time,
    owned_names,
)
from receiver.steps.kube_views import Event, InvolvedObject, ObjectList, parse_object

_EVENT_PAGES = 4  # pages of events k8s.events reads per query
# What the API server sends is cut before it reaches the step's reason and
# result: events.k8s.io/v1 holds a reason to 128 characters and a type is
# Normal or Warning, but a misbehaving server may send megabytes of either.
_REASON_CHARS = 128
_TYPE_CHARS = 32


class K8sEvents(K8sStep):
    """Recent events for an object and its pods, newest first."""

    rbac: ClassVar[Rbac] = (("", "events", ("list",)),)

    type: Literal["k8s.events"] = "k8s.events"
    object_kind: str = "Deployment"
    object_name: K8sName | None = None
    limit: int = Field(default=20, ge=1, le=200)

    @override
    def target(self) -> str:
        if self.object_name:
            return f"{self.object_kind.lower()}/{self.object_name} -n {self.namespace}"
        return f"namespace {self.namespace}"

    @override
    def describe(self) -> JSONObject:
        return {
            "verb": "list",
            "resource": "events",
            "namespace": self.namespace,
            "involvedObject": {"kind": self.object_kind, "name": self.object_name},
            "limit": self.limit,
            "action": f"list events of {self.target()}",
        }

    @override
    def needs(self) -> list[RbacNeed]:
        return [("", "events", "list", None)]


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
    about: dict[int, InvolvedObject] = {}
    partial = False
    for selector, names in queries:
        items, more = await _list_events(kube, ns, selector)
        partial = partial or more
        for e in items:
            involved = parse_object(Event, e, "event").involved_object
            if names is None or names.match(involved.name or ""):
                found.append(e)
                about[id(e)] = involved
    now = kube.clock()
    events = sorted(found, key=event_time, reverse=True)[: step.limit]
    shown = [
        {
            "type": cap(e.get("type"), _TYPE_CHARS) or None,
            "reason": cap(e.get("reason"), _REASON_CHARS) or None,
            "object": cap(f"{about[id(e)].kind}/{about[id(e)].name}"),
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
        # The client leaves out a parameter that is None.
        body = await kube.api.json(
            f"list events -n {ns}"
            + (f" --field-selector {selector}" if selector else ""),
            core.list_namespaced_event,
            ns,
            limit=LIST_CAP,
            field_selector=selector or None,
            _continue=token or None,
        )
        items += body.get("items") or []
        token = parse_object(ObjectList, body, "event list").metadata.continue_
        if not token:
            return items, False
    return items, True


STEPS = (Diagnostic(K8sEvents, events),)
