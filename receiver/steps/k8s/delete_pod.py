"""``k8s.delete_pod``: delete controller-owned pods so they are recreated, within caps.

The model and an ``Action`` (see ``access``): ``prepare`` chooses the pods
(broken ones first,
never below ``min_ready`` ready, at most ``max_pods``, only pods a ReplicaSet or
StatefulSet recreates) and names them by uid; ``apply`` deletes exactly those,
each with a uid precondition so a same-named replacement is never deleted. A
delete that failed transiently is retried only after the pod was read again.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

from pydantic import Field, model_validator
from typing_extensions import override

from receiver.errors import PermanentStepError, TransientStepError
from receiver.model import Intent, JSONObject, RecheckResult, StepResult
from receiver.retrying import backoff
from receiver.rulebook.steps import RbacNeed, Templated
from receiver.rulebook.steps.base import K8sName, Rbac, Selector
from receiver.rulebook.steps.verify import PodsReadyVerify, Remediation
from receiver.steps.k8s.access import WRITE_ATTEMPTS, Action, Kube
from receiver.steps.k8s.base import LIST_PODS, K8sStep, on
from receiver.steps.kube_client import KubeConflictError, KubeNotFoundError
from receiver.steps.kube_objects import (
    PER_POD_LABELS,
    REPLACING_OWNERS,
    Json,
    controller_of,
    is_pod_ready,
    pod_summary,
    request_record,
)
from receiver.steps.kube_recheck import recheck_pods
from receiver.steps.kube_views import ObjectMeta, Pod, parse_object


class K8sDeletePod(K8sStep, Remediation):
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
    def describe(self) -> JSONObject:
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

    @override
    def needs(self) -> list[RbacNeed]:
        if self.pod:
            # Read the pod, list its siblings (min_ready), delete it; a retried
            # delete reads it again.
            return [*on("Pod", ["get", "delete"], self.pod), LIST_PODS]
        return [LIST_PODS, *on("Pod", ["get", "delete"], None)]

    @override
    def verify_needs(self, check: Templated) -> list[RbacNeed]:
        # k8s.pods_ready counts the pods that replace the deleted ones.
        return [LIST_PODS] if isinstance(check, PodsReadyVerify) else []


_SELECT_PODS = 200  # pods a k8s.delete_pod selector may consider


def _meta(pod: Json) -> ObjectMeta:
    """A pod's metadata, read through the typed view."""
    return parse_object(Pod, pod, "pod").metadata


async def prepare_delete(kube: Kube, step: K8sDeletePod) -> Intent:
    """Choose the pods to delete (within the caps) and name them by uid."""
    kube.check_kind("Pod")
    ns = step.namespace
    core = await kube.api.core()
    if step.pod:
        pod = await kube.api.json(
            f"get pod/{step.pod} -n {ns}", core.read_namespaced_pod, step.pod, ns
        )
        owner = controller_of(pod)
        if owner is None or owner.get("kind") not in REPLACING_OWNERS:
            found = f"{owner.get('kind')}/{owner.get('name')}" if owner else "none"
            raise PermanentStepError(
                f"refused: pod/{step.pod} is not owned by a ReplicaSet or "
                f"StatefulSet (owner: {found}); nothing would recreate it"
            )
        siblings_selector = ",".join(
            f"{k}={v}"
            for k, v in sorted(_meta(pod).labels.items())
            if k not in PER_POD_LABELS
        )
        peers, _ = await kube.list_pods(ns, siblings_selector, _SELECT_PODS)
        peers = [
            p for p in peers if (controller_of(p) or {}).get("uid") == owner.get("uid")
        ] or [pod]
        candidates = [pod]
        kube.remember(ns, step.target(), siblings_selector)
    else:
        peers, _ = await kube.list_pods(ns, step.selector, _SELECT_PODS)
        candidates = peers
        kube.remember(ns, step.target(), step.selector or "")
    return _choose_pods(kube, step, peers, candidates)


def _choose_pods(
    kube: Kube, step: K8sDeletePod, peers: list[Json], candidates: list[Json]
) -> Intent:
    ready = sum(1 for p in peers if is_pod_ready(p))
    skipped: list[Json] = []
    chosen: list[Json] = []
    # Broken pods first: deleting them costs no ready capacity.
    ordered = sorted(
        candidates,
        key=lambda p: (
            is_pod_ready(p),
            -pod_summary(p, kube.clock())["restarts"],
            _meta(p).name,
        ),
    )
    left = ready
    for pod in ordered:
        meta = _meta(pod)
        name = meta.name
        owner = controller_of(pod)
        if owner is None or owner.get("kind") not in REPLACING_OWNERS:
            skipped.append(
                {"pod": name, "why": "not owned by a ReplicaSet or StatefulSet"}
            )
            continue
        if meta.deletion_timestamp is not None:
            skipped.append({"pod": name, "why": "already terminating"})
            continue
        if len(chosen) >= step.max_pods:
            skipped.append({"pod": name, "why": f"max_pods {step.max_pods} reached"})
            continue
        cost = 1 if is_pod_ready(pod) else 0
        if left - cost < step.min_ready:
            skipped.append(
                {
                    "pod": name,
                    "why": f"would leave {left - cost} ready pods, below "
                    f"min_ready {step.min_ready}",
                }
            )
            continue
        left -= cost
        chosen.append(pod)
    if not chosen:
        why = "; ".join(f"{s['pod']}: {s['why']}" for s in skipped[:5])
        raise PermanentStepError(
            f"refused to delete any pod of {step.target()} ({ready} ready): "
            f"{why or 'no pods matched'}"
        )
    pods: list[JSONObject] = [
        {"name": _meta(p).name or None, "uid": _meta(p).uid or None} for p in chosen
    ]
    return Intent(
        f"delete {len(pods)} pod(s) in {step.namespace}: "
        + ", ".join(str(p["name"]) for p in pods),
        {
            "pods": pods,
            "skipped": skipped[:20],
            "ready_before": ready,
            "ready_at_least": left,
        },
    )


async def delete_pods(kube: Kube, step: K8sDeletePod, intent: Intent) -> StepResult:
    """Delete exactly the pods ``intent`` names (uid preconditions)."""
    kube.check_kind("Pod")
    ns = step.namespace
    ready = intent.number("ready_before")
    left = intent.number("ready_at_least")
    skipped = intent.objects("skipped")
    deleted = [
        await _delete_pod(kube, ns, {"metadata": dict(pod)})
        for pod in intent.objects("pods")
    ]
    names = [d["pod"] for d in deleted]
    reason = (
        f"deleted {len(names)} pod(s) in {ns}: {', '.join(names)} (their "
        f"controllers recreate them; {ready} were ready, at least {left} stay "
        "ready)"
    )
    if skipped:
        reason += f"; left {len(skipped)}: " + "; ".join(
            f"{s['pod']} ({s['why']})" for s in skipped[:3]
        )
    return StepResult(
        ok=True,
        reason=reason,
        result={
            "deleted": deleted,
            "skipped": skipped[:20],
            "ready_before": ready,
            "ready_at_least": left,
        },
    )


async def _delete_pod(kube: Kube, ns: str, pod: Json) -> Json:
    meta = _meta(pod)
    name, uid = meta.name, meta.uid or None
    core = await kube.api.core()
    # Preconditions: only the pod that was inspected, never a same-named
    # replacement a StatefulSet made in between.
    body = {"preconditions": {"uid": uid}} if uid else {}
    request = request_record(
        "delete", "Pod", ns, name, body=body, content_type="application/json"
    )
    for attempt in range(WRITE_ATTEMPTS):
        try:
            await kube.api.json(
                f"delete pod/{name} -n {ns}",
                core.delete_namespaced_pod,
                name,
                ns,
                body=body,
                retry=False,
            )
        except (KubeNotFoundError, KubeConflictError):
            return {"pod": name, "note": "already gone", "request": request}
        except TransientStepError:
            if attempt + 1 == WRITE_ATTEMPTS:
                raise
            await asyncio.sleep(backoff(kube.api.policy, attempt))
            try:
                live = await kube.api.json(
                    f"get pod/{name} -n {ns}", core.read_namespaced_pod, name, ns
                )
            except KubeNotFoundError:
                return {
                    "pod": name,
                    "note": "gone after a retry",
                    "request": request,
                }
            now = _meta(live)
            if uid and now.uid != uid:
                return {"pod": name, "note": "replaced already", "request": request}
            if now.deletion_timestamp is not None:
                return {"pod": name, "request": request}
            continue
        return {"pod": name, "request": request}
    raise TransientStepError(f"delete pod/{name} -n {ns}: gave up")  # pragma: no cover


# ------------------------------------------------------------- verification


async def recheck_delete(
    kube: Kube, step: K8sDeletePod, intent: Intent
) -> RecheckResult:
    """Whether each pod ``intent`` named is gone, replaced or terminating."""
    kube.check_kind("Pod")
    core = await kube.api.core()
    ns = step.namespace
    seen: list[tuple[str, str]] = []
    for pod in intent.objects("pods"):
        name = str(pod.get("name"))
        try:
            live = await kube.api.json(
                f"get pod/{name} -n {ns}", core.read_namespaced_pod, name, ns
            )
        except KubeNotFoundError:
            seen.append((name, "gone"))
            continue
        now = _meta(live)
        if pod.get("uid") and now.uid != pod["uid"]:
            seen.append((name, "replaced (new uid)"))
        elif now.deletion_timestamp is not None:
            seen.append((name, "terminating"))
        else:
            seen.append((name, "still running (same uid)"))
    return recheck_pods(seen)


def replacing_pods(kube: Kube, step: K8sDeletePod) -> tuple[str, str]:
    """Namespace and selector of the pods that replace the deleted ones."""
    if step.selector:
        return step.namespace, step.selector
    remembered = kube.replaced_by.get((step.namespace, step.target()))
    if remembered is None:
        raise PermanentStepError(
            f"cannot tell which pods replace {step.target()}: it was not "
            "deleted by this receiver process"
        )
    return step.namespace, remembered


STEPS = (
    Action(
        K8sDeletePod, prepare_delete, delete_pods, recheck_delete, pods=replacing_pods
    ),
)
