"""``k8s.rollout_restart``: restart a workload as ``kubectl rollout restart`` does.

An ``Action`` (see ``access``): ``prepare`` picks the restartedAt stamp,
``apply`` sets it on the pod template through ``Kube.write_loop`` (fenced by
``resourceVersion``; a stamp already there is recognised, never set twice),
``recheck`` looks for the stamp after a crash.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from typing_extensions import override

from receiver.errors import PermanentStepError
from receiver.model import Intent, JSONObject, RecheckResult, StepResult
from receiver.rulebook.steps import RbacNeed, Templated
from receiver.rulebook.steps.base import Rbac
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
    RESTARTED_AT,
    Json,
    rfc3339,
)
from receiver.steps.kube_recheck import recheck_restart
from receiver.steps.kube_views import (
    Versioned,
    Workload,
    parse_object,
)


class K8sRolloutRestart(WorkloadPatch, Remediation):
    """Restart a workload by stamping the restartedAt template annotation."""

    rbac: ClassVar[Rbac] = (
        ("apps", "deployments", ("get", "patch")),
        ("apps", "statefulsets", ("get", "patch")),
        ("apps", "daemonsets", ("get", "patch")),
    )

    type: Literal["k8s.rollout_restart"] = "k8s.rollout_restart"

    @override
    def body(self) -> JSONObject:
        stamp = {"kubectl.kubernetes.io/restartedAt": "<now, RFC 3339>"}
        return {"spec": {"template": {"metadata": {"annotations": stamp}}}}

    @override
    def change(self) -> str:
        return f"rollout restart {self.target()}"

    @override
    def needs(self) -> list[RbacNeed]:
        return on(self.workload_kind, ["get", "patch"], self.workload)

    @override
    def verify_needs(self, check: Templated) -> list[RbacNeed]:
        return workload_verify_needs(
            check, on(self.workload_kind, ["get"], self.workload)
        )


def _generation(response: Json) -> int:
    """The generation the patched workload has now."""
    return parse_object(Versioned, response, "patched workload").metadata.generation


async def prepare_restart(kube: Kube, step: K8sRolloutRestart) -> Intent:
    """The restartedAt stamp the restart will set."""
    kind, ns, name = step.workload_kind, step.namespace, step.workload
    obj = await kube.read_workload(kind, ns, name)
    live = parse_object(Workload, obj, f"{kind.lower()}/{name}")
    annotations = live.spec.template.metadata.annotations
    stamp = rfc3339(kube.clock())
    return Intent(
        f"rollout restart {kind.lower()}/{name} -n {ns} (restartedAt {stamp})",
        {"restarted_at": stamp, "previous": annotations.get(RESTARTED_AT)},
    )


async def restart(kube: Kube, step: K8sRolloutRestart, intent: Intent) -> StepResult:
    """Stamp restartedAt on the pod template (kubectl rollout restart)."""
    kind, ns, name = step.workload_kind, step.namespace, step.workload
    stamp = str(intent.data["restarted_at"])

    def decide(obj: Json, attempt: int) -> Decision:
        live = parse_object(Workload, obj, f"{kind.lower()}/{name}")
        annotations = live.spec.template.metadata.annotations
        if attempt and annotations.get(RESTARTED_AT) == stamp:
            return StepResult(
                ok=True,
                reason=f"restarted {kind.lower()}/{name} (restartedAt {stamp}; "
                "an earlier attempt had gone through)",
                result={"restarted_at": stamp},
            )
        if kind == "Deployment" and live.spec.paused:
            raise PermanentStepError(
                f"refused: deployment/{name} is paused; a restart would not roll "
                "out (kubectl refuses too). Resume it first: kubectl rollout "
                f"resume deployment/{name} -n {ns}"
            )
        body = fenced(
            obj,
            {
                "spec": {
                    "template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}
                }
            },
        )
        return kube.workload_write(
            kind,
            ns,
            name,
            body,
            done=lambda response: StepResult(
                ok=True,
                reason=f"restarted {kind.lower()}/{name} -n {ns} (restartedAt "
                f"{stamp}, generation {_generation(response)})",
                result={"restarted_at": stamp},
            ),
        )

    return await kube.write_loop(
        f"rollout restart {step.target()}",
        lambda: kube.read_workload(kind, ns, name),
        decide,
    )


async def recheck_restart_of(
    kube: Kube, step: K8sRolloutRestart, intent: Intent
) -> RecheckResult:
    """Whether the restart ``intent`` stamped shows on the workload."""
    obj = await kube.read_workload(step.workload_kind, step.namespace, step.workload)
    return recheck_restart(step.target(), obj, intent)


STEPS = (
    Action(
        K8sRolloutRestart,
        prepare_restart,
        restart,
        recheck_restart_of,
        workload=workload_of,
    ),
)
