"""``k8s.set_memory_limit``: raise a container's memory limit (a temporary OOM fix).

An ``Action`` (see ``access``): ``prepare`` reads the current limit, ``apply``
patches the pod template through ``Kube.write_loop`` (never lowering a limit
already at or above the new one), ``recheck`` reads it back after a crash.
"""

from __future__ import annotations

from fractions import Fraction
from typing import ClassVar, Literal

from pydantic import model_validator
from typing_extensions import override

from receiver.errors import PermanentStepError, QuantityError
from receiver.model import Intent, JSONObject, RecheckResult, StepResult
from receiver.rulebook.steps import RbacNeed, Templated, parse_quantity
from receiver.rulebook.steps.base import K8sName, Rbac
from receiver.rulebook.steps.quantities import Quantity
from receiver.rulebook.steps.verify import (
    Remediation,
)
from receiver.steps.k8s.access import (
    Action,
    Decision,
    Kube,
    fenced,
    workload_of,
)
from receiver.steps.k8s.base import (
    WorkloadPatch,
    on,
    workload_verify_needs,
)
from receiver.steps.kube_objects import (
    Json,
)
from receiver.steps.kube_recheck import recheck_limit
from receiver.steps.kube_views import (
    Workload,
    parse_object,
)


class K8sSetMemoryLimit(WorkloadPatch, Remediation):
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
    def body(self) -> JSONObject:
        """The strategic-merge patch the executor sends (and dry-run shows)."""
        limits: JSONObject = {"limits": {"memory": self.memory}}
        container: JSONObject = {"name": self.container, "resources": limits}
        return {"spec": {"template": {"spec": {"containers": [container]}}}}

    @override
    def change(self) -> str:
        return (
            f"set memory limit of container {self.container} in "
            f"{self.target()} to {self.memory} (cap {self.cap})"
        )

    @override
    def needs(self) -> list[RbacNeed]:
        return on(self.workload_kind, ["get", "patch"], self.workload)

    @override
    def verify_needs(self, check: Templated) -> list[RbacNeed]:
        return workload_verify_needs(
            check, on(self.workload_kind, ["get"], self.workload)
        )


async def prepare_memory(kube: Kube, step: K8sSetMemoryLimit) -> Intent:
    """The container's current memory limit and the new one."""
    kind, ns, name = step.workload_kind, step.namespace, step.workload
    obj = await kube.read_workload(kind, ns, name)
    live = _limit_of(obj, step.container)
    return Intent(
        f"set the memory limit of {step.container} in {kind.lower()}/{name} "
        f"-n {ns} from {live or 'none'} to {step.memory}",
        {"container": step.container, "from": live, "to": step.memory},
    )


async def set_memory_limit(
    kube: Kube, step: K8sSetMemoryLimit, intent: Intent
) -> StepResult:
    """Raise the container's memory limit (this rolls the pods)."""
    del intent  # the limit is absolute already: the step's own value
    kind, ns, name = step.workload_kind, step.namespace, step.workload
    target = parse_quantity(step.memory)

    def decide(obj: Json, attempt: int) -> Decision:
        workload = parse_object(Workload, obj, f"{kind.lower()}/{name}")
        containers = workload.spec.template.spec.containers
        container = next((c for c in containers if c.name == step.container), None)
        if container is None:
            raise PermanentStepError(
                f"refused: {kind.lower()}/{name} has no container "
                f"{step.container!r} (containers: "
                f"{', '.join(c.name for c in containers)})"
            )
        live = container.resources.limits.get("memory")
        if live is not None and _live_quantity(live, step, kind, name) >= target:
            return StepResult(
                ok=True,
                reason=(
                    f"set the memory limit of {step.container} in "
                    f"{kind.lower()}/{name} to {live} (an earlier attempt had "
                    "gone through)"
                    if attempt
                    else f"left the memory limit of {step.container} in "
                    f"{kind.lower()}/{name} at {live}: already at or above "
                    f"{step.memory}"
                ),
                result={"from": live, "to": live, "changed": bool(attempt)},
            )
        body = fenced(obj, step.body())
        return kube.workload_write(
            kind,
            ns,
            name,
            body,
            done=lambda _response: StepResult(
                ok=True,
                reason=f"raised the memory limit of {step.container} in "
                f"{kind.lower()}/{name} -n {ns} from {live or 'none'} to "
                f"{step.memory} (cap {step.cap}); this rolls the pods",
                result={
                    "from": live,
                    "to": step.memory,
                    "changed": True,
                },
            ),
        )

    return await kube.write_loop(
        f"set memory limit {step.target()}",
        lambda: kube.read_workload(kind, ns, name),
        decide,
    )


async def recheck_memory(
    kube: Kube, step: K8sSetMemoryLimit, intent: Intent
) -> RecheckResult:
    """Whether the memory limit ``intent`` names shows on the container."""
    obj = await kube.read_workload(step.workload_kind, step.namespace, step.workload)
    return recheck_limit(step.target(), _limit_of(obj, step.container), intent)


def _live_quantity(
    live: object, step: K8sSetMemoryLimit, kind: str, name: str
) -> Fraction:
    """The current limit as an exact value; an unreadable one is a step error."""
    try:
        return parse_quantity(str(live))
    except QuantityError as exc:
        raise QuantityError(
            f"refused: the current memory limit of {step.container} in "
            f"{kind.lower()}/{name} is {str(live)[:64]!r}, which is not a "
            "Kubernetes quantity; nothing was changed"
        ) from exc


def _limit_of(obj: Json, name: str) -> str | None:
    """The memory limit of container ``name`` in a workload, if it has one."""
    workload = parse_object(Workload, obj, "workload")
    for c in workload.spec.template.spec.containers:
        if c.name == name:
            limit = c.resources.limits.get("memory")
            return None if limit is None else str(limit)
    return None


STEPS = (
    Action(
        K8sSetMemoryLimit,
        prepare_memory,
        set_memory_limit,
        recheck_memory,
        workload=workload_of,
    ),
)
