"""``k8s.rollout_status`` and ``k8s.pods_ready``: poll until a remediation took hold.

Called by the executor with the ``Action`` of the step being verified, which
names the workload it changed (``workload_of``) or the pods that replace the
ones it deleted (``pods_of``). Polling goes through ``poll_until``; a
transient failure of one read is a poll that did not succeed, not the end.
"""

from __future__ import annotations

from receiver.errors import PermanentStepError
from receiver.model import StepResult
from receiver.retrying import poll_until
from receiver.rulebook.steps import PodsReadyVerify, RolloutStatusVerify, StepModel
from receiver.rulebook.templates import format_duration
from receiver.steps.k8s.access import LIST_CAP, Kube, RunsAction, WorkloadRef
from receiver.steps.kube_objects import (
    is_pod_ready,
    rollout_status,
)


async def _workload(kube: Kube, action: RunsAction, step: StepModel) -> WorkloadRef:
    found = await action.workload_of(kube, step)
    if found is None:
        raise PermanentStepError(
            f"k8s.rollout_status cannot verify {step.type_name()}: it names no "
            "workload (use k8s.pods_ready)"
        )
    return found


async def verify_rollout(
    kube: Kube, check: RolloutStatusVerify, action: RunsAction, step: StepModel
) -> StepResult:
    """Poll the workload ``step`` changed until its rollout has caught up."""
    kind, ns, name = await _workload(kube, action, step)

    async def probe() -> tuple[bool, str]:
        return rollout_status(kind, await kube.read_workload(kind, ns, name))

    polled = await poll_until(probe, check.timeout, kube.poll_interval, transient=str)
    if polled.done:
        return StepResult(
            ok=True, reason=f"verified: {polled.last}", result={"polls": polled.polls}
        )
    return StepResult(
        ok=False,
        reason=f"not verified within {format_duration(check.timeout)}: {polled.last}",
        result={"polls": polled.polls},
    )


async def verify_pods_ready(
    kube: Kube, check: PodsReadyVerify, action: RunsAction, step: StepModel
) -> StepResult:
    """Poll the pods of ``step`` until at least ``min_ready`` are ready."""
    pods = action.pods_of(kube, step)
    if pods is not None:
        ns, selector = pods
    else:
        kind, ns, name = await _workload(kube, action, step)
        selector = await kube.selector_of(kind, ns, name)
    ready = 0

    async def probe() -> tuple[bool, str]:
        nonlocal ready
        pods, _ = await kube.list_pods(ns, selector, LIST_CAP)
        ready = sum(1 for p in pods if is_pod_ready(p))
        last = f"{ready} of {len(pods)} pods ready (-l {selector})"
        return ready >= check.min_ready, last

    polled = await poll_until(probe, check.timeout, kube.poll_interval, transient=str)
    if polled.done:
        return StepResult(
            ok=True,
            reason=f"verified: {polled.last}, at least {check.min_ready} wanted",
            result={"polls": polled.polls, "ready": ready},
        )
    return StepResult(
        ok=False,
        reason=f"not verified within {format_duration(check.timeout)}: "
        f"{polled.last}, {check.min_ready} wanted",
        result={"polls": polled.polls},
    )
