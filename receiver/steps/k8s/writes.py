"""``k8s.*`` remediations that patch a field: restart, scale, HPA max, memory limit.

Each is an ``Action`` (see ``access``): ``prepare`` reads the object and states
the change in absolute terms, ``apply`` makes it through ``Kube.write_loop``
(fenced by ``resourceVersion``; after a conflict or transient failure, the object
is read again and a change already there is recognised, never applied twice),
``recheck`` compares the object with a recorded intent after a crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from fractions import Fraction
from typing import Any

from receiver.errors import PermanentStepError, QuantityError
from receiver.model import Intent, RecheckResult, StepResult
from receiver.rulebook.steps import (
    K8sPatchHpa,
    K8sRolloutRestart,
    K8sScale,
    K8sSetMemoryLimit,
    apply_relative,
    parse_quantity,
)
from receiver.steps.k8s.access import Action, Decision, Kube, WorkloadRef, Write
from receiver.steps.kube_objects import (
    RESTARTED_AT,
    Hpa,
    Json,
    Scale,
    Versioned,
    Workload,
    dig,
    parse_object,
    request_record,
    rfc3339,
)
from receiver.steps.kube_recheck import recheck_count, recheck_limit, recheck_restart


def fenced(obj: Json, patch: Json) -> Json:
    """``patch`` carrying the ``resourceVersion`` of ``obj`` it was computed from.

    The API server refuses it (409) if anyone changed the object in between.
    """
    version = parse_object(Versioned, obj, "patch").metadata.resource_version
    return {"metadata": {"resourceVersion": version}, **patch}


async def _workload(
    kube: Kube, step: K8sRolloutRestart | K8sScale | K8sSetMemoryLimit
) -> WorkloadRef:
    del kube
    return step.workload_kind, step.namespace, step.workload


# ----------------------------------------------------------------- restart


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
                f"{stamp}, generation {dig(response, 'metadata', 'generation')})",
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


# ----------------------------------------------------------------- scale


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
    start = int(intent.data["from"])
    target = int(intent.data["to"])
    up = bool(intent.data["up"])
    notes = [str(n) for n in intent.data.get("notes") or []]

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


# ----------------------------------------------------------------- HPA


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
    start = int(intent.data["from"])
    target = int(intent.data["to"])
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


# ----------------------------------------------------------------- memory limit


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


def _replicas(obj: Json) -> int:
    """``spec.replicas`` of a scale subresource (0 when unset)."""
    return parse_object(Scale, obj, "scale").spec.replicas or 0


def _max_replicas(obj: Json) -> int:
    """``spec.maxReplicas`` of an HPA (0 when unset)."""
    return parse_object(Hpa, obj, "hpa").spec.max_replicas or 0


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        K8sRolloutRestart,
        prepare_restart,
        restart,
        recheck_restart_of,
        workload=_workload,
    ),
    Action(K8sScale, prepare_scale, scale, recheck_scale, workload=_workload),
    Action(K8sPatchHpa, prepare_hpa, patch_hpa, recheck_hpa, workload=hpa_workload),
    Action(
        K8sSetMemoryLimit,
        prepare_memory,
        set_memory_limit,
        recheck_memory,
        workload=_workload,
    ),
)
