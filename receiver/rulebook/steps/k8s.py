"""``k8s.*`` step models: Kubernetes diagnostics and remediations, as rules write them.

Each declares the requests its executor (``receiver.steps.k8s``) makes in
``rbac``, exactly: the chart's RBAC and the docs are generated from these, and a
test compares them with the requests a fake API server records.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from typing_extensions import override

from receiver.rulebook.matchers import Matcher, MatchType
from receiver.rulebook.steps.base import (
    Duration,
    K8sName,
    Namespace,
    Rbac,
    Selector,
    StepModel,
    WorkloadKind,
)
from receiver.rulebook.steps.quantities import (
    Quantity,
    RelativeCount,
    describe_change,
    parse_quantity,
)
from receiver.rulebook.steps.verify import Remediation
from receiver.rulebook.templates import format_duration


class _K8s(StepModel):
    """The namespace every Kubernetes step acts in."""

    family: ClassVar[str] = "k8s"
    namespace: Namespace = Field(description="Namespace; usually {labels.namespace}.")


class _Workload(_K8s):
    """A remediation that patches one workload: restart, scale, memory limit.

    ``body`` is the patch as dry-run shows it and ``change`` what it does, in
    words; the target and the request are the same shape for all of them.
    """

    resource_suffix: ClassVar[str] = ""  # "/scale": the scale subresource
    workload_kind: WorkloadKind = "Deployment"
    workload: K8sName

    def body(self) -> dict[str, Any]:
        """The patch sent, with placeholders for what is known only at run time."""
        raise NotImplementedError

    def change(self) -> str:
        """What the patch does, e.g. ``rollout restart deployment/x -n y``."""
        raise NotImplementedError

    @override
    def target(self) -> str:
        return f"{self.workload_kind.lower()}/{self.workload} -n {self.namespace}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "patch",
            "resource": f"{self.workload_kind}{self.resource_suffix}",
            "namespace": self.namespace,
            "name": self.workload,
            "body": self.body(),
            "action": self.change(),
        }


class K8sPods(_K8s):
    """Pods of a workload or selector: phase, readiness, restarts, last exit."""

    rbac: ClassVar[Rbac] = (
        ("", "pods", ("list",)),
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
    )

    type: Literal["k8s.pods"] = "k8s.pods"
    workload: K8sName | None = None
    workload_kind: WorkloadKind = "Deployment"
    selector: Selector | None = None
    limit: int = Field(default=20, ge=1, le=200)

    @override
    def target(self) -> str:
        if self.workload:
            return f"{self.workload_kind.lower()}/{self.workload} -n {self.namespace}"
        return f"pods -l {self.selector or '<all>'} -n {self.namespace}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "list",
            "resource": "pods",
            "namespace": self.namespace,
            "selector": self.selector or f"<selector of {self.target()}>",
            "limit": self.limit,
            "action": f"list pods of {self.target()}",
        }


class K8sEvents(_K8s):
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
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "list",
            "resource": "events",
            "namespace": self.namespace,
            "involvedObject": {"kind": self.object_kind, "name": self.object_name},
            "limit": self.limit,
            "action": f"list events of {self.target()}",
        }


class K8sLogs(_K8s):
    """Tail of a pod's logs, or of each pod of a workload, optionally filtered."""

    rbac: ClassVar[Rbac] = (
        ("", "pods", ("list", "get")),
        ("", "pods/log", ("get",)),
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
    )

    type: Literal["k8s.logs"] = "k8s.logs"
    pod: K8sName | None = None
    workload: K8sName | None = None
    workload_kind: WorkloadKind = "Deployment"
    container: K8sName | None = None
    tail_lines: int = Field(default=50, ge=1, le=2000)
    max_bytes: int = Field(default=16384, ge=256, le=1048576)
    max_pods: int = Field(default=3, ge=1, le=20)
    previous: bool = False
    since: Duration | None = None
    grep: str | None = Field(
        default=None, description="RE2 regex filter, e.g. auth|jwt"
    )

    @model_validator(mode="after")
    def _one_source(self) -> K8sLogs:
        if (self.pod is None) == (self.workload is None):
            raise ValueError("set exactly one of pod or workload")
        if self.grep is not None:
            Matcher.new("grep", MatchType.REGEX, self.grep)
        return self

    @override
    def target(self) -> str:
        obj = (
            f"pod/{self.pod}"
            if self.pod
            else f"{self.workload_kind.lower()}/{self.workload}"
        )
        return f"{obj} -n {self.namespace}"

    @override
    def describe(self) -> dict[str, Any]:
        flags = f"--tail={self.tail_lines}"
        if self.previous:
            flags += " --previous"
        if self.since:
            flags += f" --since={format_duration(self.since)}"
        if self.grep:
            flags += f", lines matching /{self.grep}/"
        return {
            "verb": "get",
            "resource": "pods/log",
            "namespace": self.namespace,
            "object": self.target(),
            "tail_lines": self.tail_lines,
            "max_bytes": self.max_bytes,
            "previous": self.previous,
            "grep": self.grep,
            "since": format_duration(self.since) if self.since else None,
            "action": f"read logs of {self.target()} ({flags})",
        }


class K8sRolloutHistory(_K8s):
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
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "list",
            "resource": "replicasets",
            "namespace": self.namespace,
            "owner": f"deployment/{self.deployment}",
            "action": f"read rollout history of {self.target()} "
            f"(flag rollouts within {format_duration(self.flag_within)})",
        }


class K8sDescribe(_K8s):
    """Workload status and conditions, or an HPA's current/desired/min/max."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
        ("autoscaling", "horizontalpodautoscalers", ("get",)),
        ("", "pods", ("get",)),
    )

    type: Literal["k8s.describe"] = "k8s.describe"
    object_kind: Literal[
        "Deployment", "StatefulSet", "DaemonSet", "HorizontalPodAutoscaler", "Pod"
    ] = "Deployment"
    object_name: K8sName

    @override
    def target(self) -> str:
        return f"{self.object_kind.lower()}/{self.object_name} -n {self.namespace}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "get",
            "resource": self.object_kind,
            "namespace": self.namespace,
            "name": self.object_name,
            "action": f"describe {self.target()}",
        }


class K8sRolloutRestart(_Workload, Remediation):
    """Restart a workload by stamping the restartedAt template annotation."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get", "patch")),
        ("apps", "statefulsets", ("get", "patch")),
        ("apps", "daemonsets", ("get", "patch")),
    )

    type: Literal["k8s.rollout_restart"] = "k8s.rollout_restart"

    @override
    def body(self) -> dict[str, Any]:
        stamp = {"kubectl.kubernetes.io/restartedAt": "<now, RFC 3339>"}
        return {"spec": {"template": {"metadata": {"annotations": stamp}}}}

    @override
    def change(self) -> str:
        return f"rollout restart {self.target()}"


class K8sRolloutUndo(_K8s, Remediation):
    """Roll a Deployment back to the previous (or a named) revision, as kubectl does."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get", "patch")),
        ("apps", "replicasets", ("list",)),
    )

    type: Literal["k8s.rollout_undo"] = "k8s.rollout_undo"
    deployment: K8sName
    to_revision: int | None = Field(default=None, ge=1)
    only_if_rollout_within: Duration | None = None

    @override
    def target(self) -> str:
        return f"deployment/{self.deployment} -n {self.namespace}"

    @override
    def describe(self) -> dict[str, Any]:
        revision: int | str = self.to_revision or "previous"
        where = (
            f"revision {self.to_revision}"
            if self.to_revision
            else "the previous revision"
        )
        cond = ""
        if self.only_if_rollout_within:
            cond = (
                " only if the last rollout happened within "
                f"{format_duration(self.only_if_rollout_within)}"
            )
        return {
            "verb": "patch",
            "resource": "Deployment",
            "namespace": self.namespace,
            "name": self.deployment,
            "to_revision": revision,
            "body": {"spec": {"template": f"<pod template of revision {revision}>"}},
            "action": f"roll back {self.target()} to {where}{cond}",
        }


class K8sScale(_Workload, Remediation):
    """Scale a workload to an absolute or relative count, clamped to min/max."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments/scale", ("get", "patch")),
        ("apps", "statefulsets/scale", ("get", "patch")),
    )

    resource_suffix: ClassVar[str] = "/scale"
    type: Literal["k8s.scale"] = "k8s.scale"
    workload_kind: Literal["Deployment", "StatefulSet"] = "Deployment"
    replicas: RelativeCount
    min: int = Field(default=1, ge=0)
    max: int = Field(ge=1, description="Hard cap; scaling never goes above it.")

    @model_validator(mode="after")
    def _bounds(self) -> K8sScale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self

    @override
    def body(self) -> dict[str, Any]:
        clamped = f"{self.replicas} (clamped to {self.min}..{self.max})"
        return {"spec": {"replicas": clamped}}

    @override
    def change(self) -> str:
        return (
            f"scale {self.target()} {describe_change(self.replicas)} "
            f"(min {self.min}, max {self.max})"
        )


class K8sPatchHpa(_K8s, Remediation):
    """Raise an HPA's maxReplicas, absolute or relative, up to a cap."""

    rbac: ClassVar[Rbac] = (
        ("autoscaling", "horizontalpodautoscalers", ("get", "patch")),
    )

    type: Literal["k8s.patch_hpa"] = "k8s.patch_hpa"
    hpa: K8sName
    max_replicas: RelativeCount
    cap: int = Field(ge=1, description="maxReplicas never goes above this.")

    @override
    def target(self) -> str:
        return f"hpa/{self.hpa} -n {self.namespace}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "patch",
            "resource": "HorizontalPodAutoscaler",
            "namespace": self.namespace,
            "name": self.hpa,
            "body": {"spec": {"maxReplicas": f"{self.max_replicas} (cap {self.cap})"}},
            "action": f"raise maxReplicas of {self.target()} "
            f"{describe_change(self.max_replicas)} (cap {self.cap})",
        }


class K8sDeletePod(_K8s, Remediation):
    """Delete controller-owned pods so they are recreated, within caps."""

    rbac: ClassVar[Rbac] = (("", "pods", ("list", "get", "delete")),)

    type: Literal["k8s.delete_pod"] = "k8s.delete_pod"
    pod: K8sName | None = None
    selector: Selector | None = None
    max_pods: int = Field(default=1, ge=1, le=10)
    min_ready: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> K8sDeletePod:
        if (self.pod is None) == (self.selector is None):
            raise ValueError("set exactly one of pod or selector")
        return self

    @override
    def target(self) -> str:
        if self.pod:
            return f"pod/{self.pod} -n {self.namespace}"
        return f"pods -l {self.selector} -n {self.namespace}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "delete",
            "resource": "pods",
            "namespace": self.namespace,
            "name": self.pod,
            "selector": self.selector,
            "max_pods": self.max_pods,
            "min_ready": self.min_ready,
            "action": f"delete {self.target()} (at most {self.max_pods}, keep "
            f">= {self.min_ready} ready, only controller-owned pods)",
        }


class K8sSetMemoryLimit(_Workload, Remediation):
    """Raise a container's memory limit (the runbook's temporary OOM fix)."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get", "patch")),
        ("apps", "statefulsets", ("get", "patch")),
        ("apps", "daemonsets", ("get", "patch")),
    )

    type: Literal["k8s.set_memory_limit"] = "k8s.set_memory_limit"
    approval: Literal["none", "required"] = "required"
    container: K8sName
    memory: Quantity
    cap: Quantity

    @model_validator(mode="after")
    def _capped(self) -> K8sSetMemoryLimit:
        if parse_quantity(self.memory) > parse_quantity(self.cap):
            raise ValueError(f"memory {self.memory} is above cap {self.cap}")
        return self

    @override
    def body(self) -> dict[str, Any]:
        """The strategic-merge patch the executor sends (and dry-run shows)."""
        limits = {"limits": {"memory": self.memory}}
        containers = [{"name": self.container, "resources": limits}]
        return {"spec": {"template": {"spec": {"containers": containers}}}}

    @override
    def change(self) -> str:
        return (
            f"set memory limit of container {self.container} in "
            f"{self.target()} to {self.memory} (cap {self.cap})"
        )


STEPS: tuple[type[StepModel], ...] = (
    K8sPods,
    K8sEvents,
    K8sLogs,
    K8sRolloutHistory,
    K8sDescribe,
    K8sRolloutRestart,
    K8sRolloutUndo,
    K8sScale,
    K8sPatchHpa,
    K8sDeletePod,
    K8sSetMemoryLimit,
)
