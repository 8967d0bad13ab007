"""``k8s.rollout_undo``: roll a Deployment back as kubectl does, fenced and re-checked.

The model and an ``Action`` (see ``access``): the plan is worked out from one read (the
current revision, the one to go back to, the patch), ``apply`` refuses if the
Deployment changed since ``prepare`` read it, and the write goes through
``Kube.write_loop`` with the ``resourceVersion`` it was computed from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.errors import PermanentStepError
from receiver.model import Intent, JSONObject, RecheckResult, StepResult
from receiver.rulebook.steps import RbacNeed, Templated
from receiver.rulebook.steps.base import Duration, K8sName, Rbac
from receiver.rulebook.steps.verify import Remediation
from receiver.rulebook.templates import format_duration
from receiver.steps.k8s.access import Action, Decision, Kube, WorkloadRef, Write
from receiver.steps.k8s.base import K8sStep, on, workload_verify_needs
from receiver.steps.kube_objects import (
    CHANGE_CAUSE,
    POD_TEMPLATE_HASH,
    ROLLBACK_KEEP,
    Json,
    age_of,
    parse_time,
    request_record,
    revision_of,
    template_digest,
    template_images,
    without_hash,
)
from receiver.steps.kube_recheck import recheck_undo
from receiver.steps.kube_views import Revision, parse_object


class K8sRolloutUndo(K8sStep, Remediation):
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
    def describe(self) -> JSONObject:
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

    @override
    def needs(self) -> list[RbacNeed]:
        return [
            *on("Deployment", ["get", "patch"], self.deployment),
            ("apps", "replicasets", "list", None),
        ]

    @override
    def verify_needs(self, check: Templated) -> list[RbacNeed]:
        return workload_verify_needs(check, on("Deployment", ["get"], self.deployment))


@dataclass(frozen=True)
class _UndoPlan:
    """A rollback worked out from one read: its intent and its write."""

    intent: Intent
    decide: Callable[[Json, int], Decision]


async def prepare_undo(kube: Kube, step: K8sRolloutUndo) -> Intent | StepResult:
    """Work out the rollback: its intent, or a reason not to roll back."""
    planned = await _plan_undo(kube, step)
    if isinstance(planned, StepResult):
        return planned
    return planned.intent


async def undo(kube: Kube, step: K8sRolloutUndo, intent: Intent) -> StepResult:
    """Roll back as ``intent`` says, if the deployment is still as it was read."""
    ns, name = step.namespace, step.deployment
    planned = await _plan_undo(kube, step)
    if isinstance(planned, StepResult):
        return planned
    if planned.intent.data != intent.data:
        raise PermanentStepError(
            f"refused: deployment/{name} changed between reading it and rolling "
            f"back (now: {planned.intent.summary}; read: {intent.summary}); not "
            "overwriting someone else's change"
        )
    return await kube.write_loop(
        f"rollout undo {step.target()}",
        lambda: kube.read_workload("Deployment", ns, name),
        planned.decide,
    )


def _revision(obj: Json) -> Revision:
    """A Deployment or ReplicaSet read through the typed view (template raw)."""
    return parse_object(Revision, obj, "rollout revision")


async def _plan_undo(kube: Kube, step: K8sRolloutUndo) -> _UndoPlan | StepResult:
    ns, name = step.namespace, step.deployment
    deployment = await kube.read_workload("Deployment", ns, name)
    typed = _revision(deployment)
    if typed.spec.paused:
        raise PermanentStepError(
            f"refused: deployment/{name} is paused; kubectl refuses to roll back "
            f"a paused deployment too. Resume it first: kubectl rollout resume "
            f"deployment/{name} -n {ns}"
        )
    owned = await kube.owned_replica_sets(ns, deployment)
    current_template = without_hash(typed.template)
    current_rs = next(
        (
            rs
            for rs in owned
            if without_hash(_revision(rs).template) == current_template
        ),
        None,
    )
    current = revision_of(current_rs) if current_rs else revision_of(deployment)
    now = kube.clock()
    if step.only_if_rollout_within is not None:
        created = parse_time(
            _revision(current_rs).metadata.creation_timestamp if current_rs else None
        )
        window = format_duration(step.only_if_rollout_within)
        if created is None or now - created > step.only_if_rollout_within:
            when = f"{age_of(now, created)} ago" if created else "at an unknown time"
            return StepResult(
                ok=True,
                changed=False,
                reason=f"did not roll back deployment/{name}: its current "
                f"revision {current} was first rolled out {when}, not within "
                f"{window}, so a bad deploy is not the likely cause",
                result={"rolled_back": False, "current_revision": current},
            )
    target = _undo_target(step, owned, current)
    target_meta = _revision(target).metadata
    target_template = without_hash(_revision(target).template)
    to_revision = revision_of(target)
    if target_template == current_template:
        return StepResult(
            ok=True,
            changed=False,
            reason=f"skipped rollback of deployment/{name}: the current template "
            f"already matches revision {to_revision}",
            result={"rolled_back": False, "current_revision": current},
        )
    annotations = {
        k: v for k, v in typed.metadata.annotations.items() if k in ROLLBACK_KEEP
    }
    annotations.update(
        {k: v for k, v in target_meta.annotations.items() if k not in ROLLBACK_KEEP}
    )
    before = template_images(current_template)
    after = template_images(target_template)
    cause = target_meta.annotations.get(CHANGE_CAUSE)

    def decide(obj: Json, attempt: int) -> Decision:
        read = _revision(obj)
        live = without_hash(read.template)
        if attempt and live == target_template:
            return StepResult(
                ok=True,
                reason=f"rolled back deployment/{name} -n {ns} from revision "
                f"{current} to {to_revision} (an earlier attempt had gone "
                "through)",
                result={"rolled_back": True, "to_revision": to_revision},
            )
        if live != current_template:
            raise PermanentStepError(
                f"refused: deployment/{name} changed while rolling back (its pod "
                "template is no longer the one read); not overwriting someone "
                "else's change"
            )
        # kubectl's rollback patch, plus the resourceVersion it was computed
        # from, so a concurrent change is a 409 instead of being overwritten.
        body: list[Json] = [
            {
                "op": "replace",
                "path": "/metadata/resourceVersion",
                "value": read.metadata.resource_version,
            },
            {"op": "replace", "path": "/spec/template", "value": target_template},
            {"op": "add", "path": "/metadata/annotations", "value": annotations},
        ]
        request = request_record(
            "patch",
            "Deployment",
            ns,
            name,
            body=body,
            content_type="application/json-patch+json",
        )
        return Write(
            send=lambda: kube.patch_workload("Deployment", ns, name, body),
            request=request,
            done=lambda _response: StepResult(
                ok=True,
                reason=f"rolled back deployment/{name} -n {ns} from revision "
                f"{current} ({', '.join(before)}) to revision {to_revision} "
                f"({', '.join(after)})" + (f" {cause!r}" if cause else ""),
                result={
                    "rolled_back": True,
                    "from_revision": current,
                    "to_revision": to_revision,
                    "images_before": before,
                    "images_after": after,
                },
            ),
        )

    intent = Intent(
        f"roll back deployment/{name} -n {ns} from revision {current} to "
        f"revision {to_revision}",
        {
            "from_revision": current,
            "to_revision": to_revision,
            "from_template": template_digest(current_template),
            "to_template": template_digest(target_template),
            "to_pod_template_hash": target_meta.labels.get(POD_TEMPLATE_HASH),
        },
    )
    return _UndoPlan(intent, decide)


def _undo_target(step: K8sRolloutUndo, owned: list[Json], current: int) -> Json:
    name = step.deployment
    known = sorted({revision_of(rs) for rs in owned if revision_of(rs)}, reverse=True)
    if step.to_revision is not None:
        for rs in owned:
            if revision_of(rs) == step.to_revision:
                return rs
        raise PermanentStepError(
            f"refused: deployment/{name} has no revision {step.to_revision} "
            f"(revisions kept: {', '.join(map(str, known)) or 'none'})"
        )
    earlier = [rs for rs in owned if 0 < revision_of(rs) < current]
    if not earlier:
        raise PermanentStepError(
            f"refused: deployment/{name} has no revision before {current} to "
            f"roll back to (revisions kept: {', '.join(map(str, known)) or 'none'})"
        )
    return earlier[0]


async def recheck(kube: Kube, step: K8sRolloutUndo, intent: Intent) -> RecheckResult:
    """Whether the Deployment's template is the one ``intent`` rolled back to."""
    obj = await kube.read_workload("Deployment", step.namespace, step.deployment)
    return recheck_undo(step.target(), obj, intent)


async def _workload(kube: Kube, step: K8sRolloutUndo) -> WorkloadRef:
    del kube
    return "Deployment", step.namespace, step.deployment


STEPS = (Action(K8sRolloutUndo, prepare_undo, undo, recheck, workload=_workload),)
