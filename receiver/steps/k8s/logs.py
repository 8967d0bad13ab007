"""``k8s.logs``: the tail of a pod's logs, or of a workload's most broken pods.

A diagnostic: every tail is capped in lines and bytes, optionally filtered
with an RE2 expression.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import aiohttp
import re2
from pydantic import Field, model_validator
from typing_extensions import override

from receiver.errors import PermanentStepError
from receiver.model import JSONObject, StepResult
from receiver.rulebook.matchers import Matcher, MatchType
from receiver.rulebook.steps import RbacNeed
from receiver.rulebook.steps.base import Duration, K8sName, Rbac, WorkloadKind
from receiver.rulebook.templates import format_duration
from receiver.steps.k8s.access import (
    LIST_CAP,
    Diagnostic,
    Kube,
)
from receiver.steps.k8s.base import (
    LIST_PODS,
    K8sStep,
    on,
    on_sub,
)
from receiver.steps.kube_client import KubeForbiddenError, LogTail, read_log
from receiver.steps.kube_objects import (
    Json,
    cap,
    is_pod_ready,
)
from receiver.steps.kube_views import Pod, parse_object


class K8sLogs(K8sStep):
    """Tail of a pod's logs, or of each pod of a workload, optionally filtered."""

    rbac: ClassVar[Rbac] = (
        ("", "pods", ("list", "get")),
        ("", "pods/log", ("get",)),
        ("apps", "deployments", ("get",)),
        ("apps", "statefulsets", ("get",)),
        ("apps", "daemonsets", ("get",)),
    )

    type: Literal["k8s.logs"] = "k8s.logs"
    pod: K8sName | None = None
    workload: K8sName | None = None
    workload_kind: WorkloadKind = "Deployment"
    container: K8sName | None = None
    tail_lines: int = Field(default=50, ge=1, le=2000)
    max_bytes: int = Field(default=16384, ge=256, le=1048576)
    max_pods: int = Field(default=3, ge=1, le=20)
    previous: bool = False
    since: Duration | None = None
    grep: str | None = Field(
        default=None, description="RE2 regex filter, e.g. auth|jwt"
    )

    @model_validator(mode="after")
    def _one_source(self) -> K8sLogs:
        if (self.pod is None) == (self.workload is None):
            raise ValueError("set exactly one of pod or workload")
        if self.grep is not None:
            Matcher.new("grep", MatchType.REGEX, self.grep)
        return self

    @override
    def target(self) -> str:
        obj = (
            f"pod/{self.pod}"
            if self.pod
            else f"{self.workload_kind.lower()}/{self.workload}"
        )
        return f"{obj} -n {self.namespace}"

    @override
    def describe(self) -> JSONObject:
        flags = f"--tail={self.tail_lines}"
        if self.previous:
            flags += " --previous"
        if self.since:
            flags += f" --since={format_duration(self.since)}"
        if self.grep:
            flags += f", lines matching /{self.grep}/"
        return {
            "verb": "get",
            "resource": "pods/log",
            "namespace": self.namespace,
            "object": self.target(),
            "tail_lines": self.tail_lines,
            "max_bytes": self.max_bytes,
            "previous": self.previous,
            "grep": self.grep,
            "since": format_duration(self.since) if self.since else None,
            "action": f"read logs of {self.target()} ({flags})",
        }

    @override
    def needs(self) -> list[RbacNeed]:
        if self.pod:
            return [
                *on("Pod", ["get"], self.pod),
                *on_sub("Pod", "log", ["get"], self.pod),
            ]
        return [
            *on(self.workload_kind, ["get"], self.workload),
            LIST_PODS,
            ("", "pods/log", "get", None),
        ]


async def logs(kube: Kube, step: K8sLogs) -> StepResult:
    """The tail of a pod's logs, or of a workload's most broken pods."""
    ns = step.namespace
    if step.pod:
        kube.check_kind("Pod")
        core = await kube.api.core()
        pods = [
            await kube.api.json(
                f"get pod/{step.pod} -n {ns}",
                core.read_namespaced_pod,
                step.pod,
                ns,
            )
        ]
    else:
        assert step.workload is not None  # noqa: S101 (validated at load)
        selector = await kube.selector_of(step.workload_kind, ns, step.workload)
        pods, _ = await kube.list_pods(ns, selector, LIST_CAP)
        # The broken pods first: those are the ones someone paged wants to read.
        typed = {id(p): parse_object(Pod, p, "pod") for p in pods}
        pods.sort(
            key=lambda p: (
                is_pod_ready(p),
                -typed[id(p)].restarts,
                typed[id(p)].metadata.name,
            )
        )
        pods = pods[: step.max_pods]
    grep = re2.compile(step.grep) if step.grep else None
    out = [await _pod_log(kube, step, pod, grep) for pod in pods]
    flags = f"last {step.tail_lines} lines" + (
        ", previous containers" if step.previous else ""
    )
    if step.grep:
        flags += f", matching /{step.grep}/"
    if not out:
        return StepResult(
            ok=True,
            reason=f"no pods for {step.target()}",
            result={"pods": []},
        )
    parts = []
    for entry in out:
        if entry.get("error"):
            parts.append(f"{entry['pod']}: {entry['error']}")
        elif entry["lines"]:
            parts.append(
                f"{entry['pod']}: {len(entry['lines'])} lines, last: "
                f"{cap(entry['lines'][-1], 160)}"
            )
        else:
            parts.append(f"{entry['pod']}: no lines")
    return StepResult(
        ok=True,
        reason=f"logs of {step.target()} ({flags}): " + "; ".join(parts),
        result={"pods": out, "grep": step.grep, "previous": step.previous},
    )


async def _pod_log(
    kube: Kube, step: K8sLogs, pod: Json, grep: re2._Regexp[str] | None
) -> Json:
    typed = parse_object(Pod, pod, "pod")
    name = typed.metadata.name
    containers = [c.name for c in typed.spec.containers]
    default = typed.metadata.annotations.get("kubectl.kubernetes.io/default-container")
    container = step.container or default or (containers[0] if containers else None)
    core = await kube.api.core()

    async def read(response: aiohttp.ClientResponse) -> LogTail:
        return await read_log(response, grep, step.max_bytes)

    entry: Json = {"pod": name, "container": container}
    try:
        tail = await kube.api.request(
            f"logs pod/{name} -c {container} -n {step.namespace}",
            core.read_namespaced_pod_log,
            name,
            step.namespace,
            read=read,
            # The client leaves out a parameter that is None.
            tail_lines=step.tail_lines,
            container=container or None,
            previous=True if step.previous else None,
            since_seconds=(
                max(int(step.since.total_seconds()), 1) if step.since else None
            ),
        )
    except KubeForbiddenError:
        raise
    except PermanentStepError as exc:
        # 400: no previous container, or still creating; 404: pod gone.
        entry.update(lines=[], error=cap(str(exc).split(": ", 1)[-1], 200))
        return entry
    entry.update(
        lines=list(tail.lines),
        read_lines=tail.read_lines,
        matched=tail.matched,
        truncated=tail.dropped > 0,
    )
    return entry


STEPS = (Diagnostic(K8sLogs, logs),)
