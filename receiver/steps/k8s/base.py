"""What every ``k8s.*`` step model shares: the namespace, the workload, the needs.

``K8sStep`` is the base of every Kubernetes step model and ``WorkloadPatch`` of
the remediations that patch one workload (restart, scale, memory limit). The
``on``/``on_sub`` helpers spell the requests a step makes (``needs``), which
``scripts/rbac-steps.py`` grants request by request, within the model's
``rbac``. Nothing here does I/O; the step modules beside it hold the models
and the code that runs them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from pydantic import Field
from typing_extensions import override

from receiver.model import JSONObject
from receiver.rulebook.steps import (
    PodsReadyVerify,
    RbacNeed,
    RolloutStatusVerify,
    StepModel,
    Templated,
)
from receiver.rulebook.steps.base import K8sName, Namespace, WorkloadKind
from receiver.rulebook.templates import PLACEHOLDER

# Kind -> (apiGroup, resource), as the step modules address them.
KINDS = {
    "Deployment": ("apps", "deployments"),
    "StatefulSet": ("apps", "statefulsets"),
    "DaemonSet": ("apps", "daemonsets"),
    "HorizontalPodAutoscaler": ("autoscaling", "horizontalpodautoscalers"),
    "Pod": ("", "pods"),
}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
LIST_PODS: RbacNeed = ("", "pods", "list", None)


def fixed(name: str | None) -> str | None:
    """``name`` when it is a literal object name; None when it is templated."""
    if name is None or PLACEHOLDER.search(name):
        return None
    return name


def on(kind: str, verbs: Iterable[str], name: str | None) -> list[RbacNeed]:
    """Requests ``verbs`` on the resource of ``kind`` (``name`` if literal)."""
    group, resource = KINDS[kind]
    return [(group, resource, verb, fixed(name)) for verb in verbs]


def on_sub(
    kind: str, sub: str, verbs: Iterable[str], name: str | None
) -> list[RbacNeed]:
    """Requests ``verbs`` on a subresource (``deployments/scale``, ``pods/log``)."""
    group, resource = KINDS[kind]
    return [(group, f"{resource}/{sub}", verb, fixed(name)) for verb in verbs]


class K8sStep(StepModel):
    """The namespace every Kubernetes step acts in."""

    family: ClassVar[str] = "k8s"
    namespace: Namespace = Field(description="Namespace; usually {labels.namespace}.")


class WorkloadPatch(K8sStep):
    """A remediation that patches one workload: restart, scale, memory limit.

    ``body`` is the patch as dry-run shows it and ``change`` what it does, in
    words; the target and the request are the same shape for all of them.
    """

    resource_suffix: ClassVar[str] = ""  # "/scale": the scale subresource
    workload_kind: WorkloadKind = "Deployment"
    workload: K8sName

    def body(self) -> JSONObject:
        """The patch sent, with placeholders for what is known only at run time."""
        raise NotImplementedError

    def change(self) -> str:
        """What the patch does, e.g. ``rollout restart deployment/x -n y``."""
        raise NotImplementedError

    @override
    def target(self) -> str:
        return f"{self.workload_kind.lower()}/{self.workload} -n {self.namespace}"

    @override
    def describe(self) -> JSONObject:
        return {
            "verb": "patch",
            "resource": f"{self.workload_kind}{self.resource_suffix}",
            "namespace": self.namespace,
            "name": self.workload,
            "body": self.body(),
            "action": self.change(),
        }


def workload_verify_needs(check: Templated, reads: list[RbacNeed]) -> list[RbacNeed]:
    """What ``check`` needs after a remediation whose workload ``reads`` find.

    ``k8s.rollout_status`` reads the workload; ``k8s.pods_ready`` lists its pods
    too; other checks read nothing from Kubernetes.
    """
    if isinstance(check, RolloutStatusVerify):
        return reads
    if isinstance(check, PodsReadyVerify):
        return [*reads, LIST_PODS]
    return []
