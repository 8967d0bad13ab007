"""``k8s.patch_hpa``: raise an HPA's maxReplicas, absolute or relative, up to a cap.

An ``Action`` (see ``access``): ``prepare`` states the absolute maximum,
``apply`` patches it through ``Kube.write_loop`` (never lowering it), and a
verify polls the workload the HPA scales (its ``scaleTargetRef``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.errors import PermanentStepError
from receiver.model import Intent, JSONObject, RecheckResult, StepResult
from receiver.rulebook.steps import RbacNeed, Templated, apply_relative
from receiver.rulebook.steps.base import K8sName, Rbac
from receiver.rulebook.steps.quantities import RelativeCount, describe_change
from receiver.rulebook.steps.verify import (
    Remediation,
)
from receiver.steps.k8s.access import (
    Action,
    Decision,
    Kube,
    WorkloadRef,
    Write,
    fenced,
)
from receiver.steps.k8s.base import (
    WORKLOADS,
    K8sStep,
    on,
    workload_verify_needs,
)
from receiver.steps.kube_objects import (
    Json,
    request_record,
)
from receiver.steps.kube_recheck import recheck_count
from receiver.steps.kube_views import (
    Hpa,
    parse_object,
)


class K8sPatchHpa(K8sStep, Remediation):
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
    def describe(self) -> JSONObject:
        return {
            "verb": "patch",
            "resource": "HorizontalPodAutoscaler",
            "namespace": self.namespace,
            "name": self.hpa,
            "body": {"spec": {"maxReplicas": f"{self.max_replicas} (cap {self.cap})"}},
            "action": f"raise maxReplicas of {self.target()} "
            f"{describe_change(self.max_replicas)} (cap {self.cap})",
        }

    @override
    def needs(self) -> list[RbacNeed]:
        return on("HorizontalPodAutoscaler", ["get", "patch"], self.hpa)

    @override
    def verify_needs(self, check: Templated) -> list[RbacNeed]:
        # The HPA's scaleTargetRef is only known at run time.
        reads = on("HorizontalPodAutoscaler", ["get"], self.hpa)
        for kind in WORKLOADS:
            reads += on(kind, ["get"], None)
        return workload_verify_needs(check, reads)


async def prepare_hpa(kube: Kube, step: K8sPatchHpa) -> Intent:
    """The absolute maxReplicas the step asks for, capped."""
    ns, name = step.namespace, step.hpa
    first = await kube.read_hpa(ns, name)
    start = _max_replicas(first)
    wanted = apply_relative(step.max_replicas, start)
    target = min(wanted, step.cap)
    note = (
        f" ({step.max_replicas} asks for {wanted}, capped at {step.cap})"
        if target < wanted
        else ""
    )
    return Intent(
        f"set maxReplicas of hpa/{name} -n {ns} from {start} to {target}",
        {"from": start, "to": target, "note": note},
    )


async def patch_hpa(kube: Kube, step: K8sPatchHpa, intent: Intent) -> StepResult:
    """Raise the HPA's maxReplicas to the intended value."""
    ns, name = step.namespace, step.hpa
    api = await kube.api.autoscaling()
    start = intent.number("from")
    target = intent.number("to")
    note = str(intent.data.get("note") or "")

    def decide(obj: Json, attempt: int) -> Decision:
        live = _max_replicas(obj)
        if live >= target:
            return StepResult(
                ok=True,
                reason=(
                    f"raised maxReplicas of hpa/{name} to {live} (an earlier "
                    "attempt had gone through)"
                    if attempt
                    else f"left maxReplicas of hpa/{name} at {live}: already at "
                    f"or above {target}"
                )
                + note,
                result={"from": start, "to": live, "changed": bool(attempt)},
            )
        body = fenced(obj, {"spec": {"maxReplicas": target}})
        request = request_record(
            "patch",
            "HorizontalPodAutoscaler",
            ns,
            name,
            body=body,
            content_type="application/strategic-merge-patch+json",
        )

        async def send() -> Json:
            return await kube.api.json(
                f"patch hpa/{name} -n {ns}",
                api.patch_namespaced_horizontal_pod_autoscaler,
                name,
                ns,
                body,
                retry=False,
            )

        return Write(
            send=send,
            request=request,
            done=lambda _response: StepResult(
                ok=True,
                reason=f"raised maxReplicas of hpa/{name} -n {ns} from {live} to "
                f"{target}{note}",
                result={
                    "from": live,
                    "to": target,
                    "capped": bool(note),
                    "changed": True,
                },
            ),
        )

    return await kube.write_loop(
        f"patch hpa/{name} -n {ns}", lambda: kube.read_hpa(ns, name), decide
    )


async def recheck_hpa(kube: Kube, step: K8sPatchHpa, intent: Intent) -> RecheckResult:
    """Whether maxReplicas is at least what ``intent`` names."""
    obj = await kube.read_hpa(step.namespace, step.hpa)
    live = _max_replicas(obj)
    return recheck_count(f"maxReplicas of hpa/{step.hpa}", live, intent, at_least=True)


async def hpa_workload(kube: Kube, step: K8sPatchHpa) -> WorkloadRef:
    """The workload an HPA scales (its ``scaleTargetRef``), for verification."""
    obj = await kube.read_hpa(step.namespace, step.hpa)
    ref = parse_object(Hpa, obj, f"hpa/{step.hpa}").spec.scale_target_ref
    kind, name = (ref.kind, ref.name) if ref else (None, None)
    if kind not in ("Deployment", "StatefulSet", "DaemonSet") or not name:
        raise PermanentStepError(
            f"hpa/{step.hpa} scales {kind}/{name}, which has no rollout status"
        )
    return str(kind), step.namespace, str(name)


def _max_replicas(obj: Json) -> int:
    """``spec.maxReplicas`` of an HPA (0 when unset)."""
    return parse_object(Hpa, obj, "hpa").spec.max_replicas or 0


STEPS = (
    Action(K8sPatchHpa, prepare_hpa, patch_hpa, recheck_hpa, workload=hpa_workload),
)
