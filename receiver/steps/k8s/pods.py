"""``k8s.pods``: the pods of a workload or selector, with readiness and restarts.

A diagnostic: one line naming the broken pods first, plus a capped summary
of each pod.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.model import JSONObject, StepResult
from receiver.rulebook.steps import RbacNeed
from receiver.rulebook.steps.base import K8sName, Rbac, Selector, WorkloadKind
from receiver.steps.k8s.access import (
    Diagnostic,
    Kube,
)
from receiver.steps.k8s.base import (
    LIST_PODS,
    K8sStep,
    on,
)
from receiver.steps.kube_objects import (
    pod_line,
    pod_summary,
)


class K8sPods(K8sStep):
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
    def describe(self) -> JSONObject:
        return {
            "verb": "list",
            "resource": "pods",
            "namespace": self.namespace,
            "selector": self.selector or f"<selector of {self.target()}>",
            "limit": self.limit,
            "action": f"list pods of {self.target()}",
        }

    @override
    def needs(self) -> list[RbacNeed]:
        reads = on(self.workload_kind, ["get"], self.workload) if self.workload else []
        return [*reads, LIST_PODS]


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


STEPS = (Diagnostic(K8sPods, pods),)
