"""``k8s.rollout_history``: a Deployment's revisions, flagging a recent rollout.

A diagnostic reading the Deployment and the ReplicaSets it controls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.model import JSONObject, StepResult
from receiver.rulebook.steps import RbacNeed
from receiver.rulebook.steps.base import Duration, K8sName, Rbac
from receiver.rulebook.templates import format_duration
from receiver.steps.k8s.access import (
    Diagnostic,
    Kube,
)
from receiver.steps.k8s.base import (
    K8sStep,
    on,
)
from receiver.steps.kube_objects import (
    CHANGE_CAUSE,
    Json,
    age_of,
    parse_time,
    revision_of,
    template_images,
)
from receiver.steps.kube_views import Revision, parse_object


class K8sRolloutHistory(K8sStep):
    """Revisions of a Deployment with change-cause, image and creation time."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get",)),
        ("apps", "replicasets", ("list",)),
    )

    type: Literal["k8s.rollout_history"] = "k8s.rollout_history"
    deployment: K8sName
    flag_within: Duration = timedelta(hours=2)
    limit: int = Field(default=10, ge=1, le=50)

    @override
    def target(self) -> str:
        return f"deployment/{self.deployment} -n {self.namespace}"

    @override
    def describe(self) -> JSONObject:
        return {
            "verb": "list",
            "resource": "replicasets",
            "namespace": self.namespace,
            "owner": f"deployment/{self.deployment}",
            "action": f"read rollout history of {self.target()} "
            f"(flag rollouts within {format_duration(self.flag_within)})",
        }

    @override
    def needs(self) -> list[RbacNeed]:
        return [
            *on("Deployment", ["get"], self.deployment),
            ("apps", "replicasets", "list", None),
        ]


@dataclass(frozen=True)
class _Revision:
    """One revision (ReplicaSet) of the Deployment, as the step reports it."""

    revision: int
    replicaset: str
    change_cause: str | None
    images: list[str]
    created: str | None
    age: str | None
    replicas: int
    current: bool

    def as_json(self) -> JSONObject:
        return {
            "revision": self.revision,
            "replicaset": self.replicaset,
            "change_cause": self.change_cause,
            "images": list(self.images),
            "created": self.created,
            "age": self.age,
            "replicas": self.replicas,
            "current": self.current,
        }


def _revision(rs: Json, now: datetime, current: int) -> _Revision:
    typed = parse_object(Revision, rs, "replicaset")
    meta = typed.metadata
    return _Revision(
        revision=revision_of(rs),
        replicaset=meta.name,
        change_cause=meta.annotations.get(CHANGE_CAUSE),
        images=template_images(typed.template),
        created=meta.creation_timestamp,
        age=age_of(now, parse_time(meta.creation_timestamp)),
        replicas=typed.status.replicas or 0,
        current=revision_of(rs) == current,
    )


async def history(kube: Kube, step: K8sRolloutHistory) -> StepResult:
    """A Deployment's revisions, flagging a recent rollout."""
    deployment = await kube.read_workload("Deployment", step.namespace, step.deployment)
    owned = await kube.owned_replica_sets(step.namespace, deployment)
    now = kube.clock()
    current = revision_of(deployment) or (revision_of(owned[0]) if owned else 0)
    revisions = [_revision(rs, now, current) for rs in owned[: step.limit]]
    if not revisions:
        return StepResult(
            ok=True,
            reason=f"{step.target()}: no ReplicaSets found (no rollout history)",
            result={"revisions": [], "recent_rollout": False},
        )
    head = next((r for r in revisions if r.current), revisions[0])
    created = parse_time(head.created)
    recent = created is not None and now - created <= step.flag_within
    cause = f" {head.change_cause!r}" if head.change_cause else ""
    reason = (
        f"{step.target()}: revision {head.revision} (current){cause}, "
        f"{', '.join(head.images)}, first rolled out {head.age or '?'} ago"
    )
    older = [r for r in revisions if r.revision < head.revision]
    if older:
        prev = older[0]
        reason += (
            f"; previous revision {prev.revision}: "
            f"{', '.join(prev.images)} ({prev.age or '?'} ago)"
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
            "revisions": [r.as_json() for r in revisions],
            "current_revision": head.revision,
            "recent_rollout": recent,
            "flag_within": window,
        },
    )


STEPS = (Diagnostic(K8sRolloutHistory, history),)
