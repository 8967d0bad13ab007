"""``k8s.rollout_history``: a Deployment's revisions, flagging a recent rollout.

A diagnostic reading the Deployment and the ReplicaSets it controls.
"""

from __future__ import annotations

from datetime import timedelta
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
    age_of,
    dig,
    parse_time,
    revision_of,
    template_images,
)


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


STEPS = (Diagnostic(K8sRolloutHistory, history),)
