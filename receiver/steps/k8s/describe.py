"""``k8s.describe``: a workload's, pod's or HPA's status and conditions.

A diagnostic: one read of the object, summarised the way ``kubectl describe``
would lead with.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from typing_extensions import override

from receiver.model import JSONObject, StepResult
from receiver.rulebook.steps import RbacNeed
from receiver.rulebook.steps.base import K8sName, Rbac
from receiver.steps.k8s.access import (
    Diagnostic,
    Kube,
)
from receiver.steps.k8s.base import (
    K8sStep,
    on,
)
from receiver.steps.kube_objects import (
    condition_list,
    conditions_line,
    metric_line,
    pod_line,
    pod_summary,
    template_images,
)
from receiver.steps.kube_views import (
    Hpa,
    Revision,
    Workload,
    parse_object,
)


class K8sDescribe(K8sStep):
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
    def describe(self) -> JSONObject:
        return {
            "verb": "get",
            "resource": self.object_kind,
            "namespace": self.namespace,
            "name": self.object_name,
            "action": f"describe {self.target()}",
        }

    @override
    def needs(self) -> list[RbacNeed]:
        return on(self.object_kind, ["get"], self.object_name)


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
    workload = parse_object(Workload, obj, f"{kind.lower()}/{name}")
    spec, status = workload.spec, workload.status
    desired = spec.replicas if spec.replicas is not None else 1
    conditions = condition_list(obj)
    counts: JSONObject
    if kind == "Deployment":
        counts = {
            "desired": desired,
            "updated": status.updated_replicas or 0,
            "ready": status.ready_replicas or 0,
            "available": status.available_replicas or 0,
            "unavailable": status.unavailable_replicas or 0,
        }
        line = (
            f"{counts['ready']}/{counts['desired']} ready, {counts['updated']} "
            f"updated, {counts['unavailable']} unavailable"
        )
    elif kind == "StatefulSet":
        counts = {
            "desired": desired,
            "ready": status.ready_replicas or 0,
            "updated": status.updated_replicas or 0,
            "current_revision": status.current_revision,
            "update_revision": status.update_revision,
        }
        line = f"{counts['ready']}/{counts['desired']} ready"
    else:
        counts = {
            "desired": status.desired_number_scheduled or 0,
            "ready": status.number_ready or 0,
            "updated": status.updated_number_scheduled or 0,
            "available": status.number_available or 0,
            "misscheduled": status.number_misscheduled or 0,
        }
        line = f"{counts['ready']}/{counts['desired']} ready"
    paused = spec.paused
    generation = workload.metadata.generation
    observed = status.observed_generation or 0
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
            "images": template_images(parse_object(Revision, obj, name).template),
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


STEPS = (Diagnostic(K8sDescribe, describe),)
