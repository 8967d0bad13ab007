"""``k8s.scale``: scale a workload to an absolute or relative count, clamped.

An ``Action`` (see ``access``) on the scale subresource: ``prepare`` states the
absolute count, ``apply`` patches it through ``Kube.write_loop`` (a count
already reached is recognised), ``recheck`` reads it back after a crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from typing_extensions import override

from receiver.model import Intent, JSONObject, RecheckResult, StepResult
from receiver.rulebook.steps import RbacNeed, Templated, apply_relative
from receiver.rulebook.steps.base import Rbac
from receiver.rulebook.steps.quantities import RelativeCount, describe_change
from receiver.rulebook.steps.verify import (
    Remediation,
)
from receiver.steps.k8s.access import (
    Action,
    Decision,
    Kube,
    Write,
    fenced,
    workload_of,
)
from receiver.steps.k8s.base import (
    WorkloadPatch,
    on,
    on_sub,
    workload_verify_needs,
)
from receiver.steps.kube_objects import (
    Json,
    request_record,
)
from receiver.steps.kube_recheck import recheck_count
from receiver.steps.kube_views import (
    Scale,
    parse_object,
)


class K8sScale(WorkloadPatch, Remediation):
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
    def body(self) -> JSONObject:
        clamped = f"{self.replicas} (clamped to {self.min}..{self.max})"
        return {"spec": {"replicas": clamped}}

    @override
    def change(self) -> str:
        return (
            f"scale {self.target()} {describe_change(self.replicas)} "
            f"(min {self.min}, max {self.max})"
        )

    @override
    def needs(self) -> list[RbacNeed]:
        return on_sub(self.workload_kind, "scale", ["get", "patch"], self.workload)

    @override
    def verify_needs(self, check: Templated) -> list[RbacNeed]:
        return workload_verify_needs(
            check, on(self.workload_kind, ["get"], self.workload)
        )


async def prepare_scale(kube: Kube, step: K8sScale) -> Intent:
    """The absolute replica count the step asks for, clamped."""
    kind, ns, name = step.workload_kind, step.namespace, step.workload
    read, _patch = await _scale_calls(kube, step)
    first = await read()
    start = _replicas(first)
    wanted = apply_relative(step.replicas, start)
    target = min(max(wanted, step.min), step.max)
    up = wanted > start
    notes = []
    if target != wanted:
        notes.append(
            f"{step.replicas} asks for {wanted}, clamped to "
            f"{'max' if wanted > step.max else 'min'} {target}"
        )
    if up and target < start:
        notes.append(
            f"already at {start}, above max {step.max}; not scaling down while "
            "scaling up"
        )
        target = start
    return Intent(
        f"scale {kind.lower()}/{name} -n {ns} from {start} to {target} replicas",
        {"from": start, "to": target, "up": up, "notes": notes},
    )


async def _scale_calls(
    kube: Kube, step: K8sScale
) -> tuple[Callable[[], Awaitable[Json]], Callable[[Json], Awaitable[Json]]]:
    """Read and patch the scale subresource of the step's workload."""
    kind, ns, name = step.workload_kind, step.namespace, step.workload
    kube.check_kind(kind)
    apps = await kube.api.apps()
    read_call, patch_call = {
        "Deployment": (
            apps.read_namespaced_deployment_scale,
            apps.patch_namespaced_deployment_scale,
        ),
        "StatefulSet": (
            apps.read_namespaced_stateful_set_scale,
            apps.patch_namespaced_stateful_set_scale,
        ),
    }[kind]
    what = f"{kind.lower()}/{name} -n {ns}"

    async def read() -> Json:
        return await kube.api.json(f"get {what} scale", read_call, name, ns)

    async def patch(body: Json) -> Json:
        return await kube.api.json(
            f"patch {what} scale", patch_call, name, ns, body, retry=False
        )

    return read, patch


async def scale(kube: Kube, step: K8sScale, intent: Intent) -> StepResult:
    """Patch the scale subresource to the intended replica count."""
    kind, ns, name = step.workload_kind, step.namespace, step.workload
    what = f"{kind.lower()}/{name} -n {ns}"
    read, patch = await _scale_calls(kube, step)
    start = intent.number("from")
    target = intent.number("to")
    up = intent.flag("up")
    notes = intent.strings("notes")

    def decide(obj: Json, attempt: int) -> Decision:
        live = _replicas(obj)
        final = max(target, live) if up else target
        if live == final:
            verb = "scaled" if attempt else "left"
            return StepResult(
                ok=True,
                reason=f"{verb} {what} at {live} replicas"
                + (" (an earlier attempt had gone through)" if attempt else "")
                + (f" ({'; '.join(notes)})" if notes else ""),
                result={
                    "from": start,
                    "to": live,
                    "clamped": bool(notes),
                    "changed": bool(attempt),
                },
            )
        body = fenced(obj, {"spec": {"replicas": final}})
        request = request_record(
            "patch",
            f"{kind}/scale",
            ns,
            name,
            body=body,
            content_type="application/strategic-merge-patch+json",
        )

        return Write(
            send=lambda: patch(body),
            request=request,
            done=lambda _response: StepResult(
                ok=True,
                reason=f"scaled {what} from {live} to {final} replicas"
                + (f" ({'; '.join(notes)})" if notes else ""),
                result={
                    "from": live,
                    "to": final,
                    "clamped": bool(notes),
                    "changed": True,
                },
            ),
        )

    return await kube.write_loop(f"scale {what}", read, decide)


async def recheck_scale(kube: Kube, step: K8sScale, intent: Intent) -> RecheckResult:
    """Whether the replicas ``intent`` names show on the scale subresource."""
    read, _patch = await _scale_calls(kube, step)
    live = _replicas(await read())
    return recheck_count(f"{step.target()} replicas", live, intent)


def _replicas(obj: Json) -> int:
    """``spec.replicas`` of a scale subresource (0 when unset)."""
    return parse_object(Scale, obj, "scale").spec.replicas or 0


STEPS = (Action(K8sScale, prepare_scale, scale, recheck_scale, workload=workload_of),)
