"""What every ``k8s.*`` step shares: the API, the reads they build on, the write loop.

``Kube`` is built once per executor (``receiver.steps.k8s.executor``) and handed
to the step modules beside this one (their ``Diagnostic`` and ``Action``
definitions, defined here) and to ``verification``. Every write goes through
``Kube.write_loop``: read, decide, write with the ``resourceVersion`` it was
computed from; after a 409 or a transient failure, read again and let the step
recognise a write that already went through, so nothing is applied twice.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from receiver.errors import PermanentStepError, TransientStepError
from receiver.model import Intent, RecheckResult, StepResult
from receiver.retrying import backoff
from receiver.rulebook.steps import StepModel
from receiver.steps.kube_client import KubeApi, KubeConflictError
from receiver.steps.kube_objects import (
    Json,
    controller_of,
    label_selector,
    request_record,
    revision_of,
)
from receiver.steps.kube_views import (
    ObjectList,
    Revision,
    Versioned,
    Workload,
    parse_object,
)

WRITE_ATTEMPTS = 3
LIST_CAP = 500  # objects fetched per list call, whatever a step shows
_MEMO_SIZE = 256


@dataclass
class Write:
    """One write a remediation wants to make, and how to report it."""

    send: Callable[[], Awaitable[Json]]
    request: Json
    done: Callable[[Json], StepResult]


# What a remediation decides on a fresh read: done already, or this write.
Decision = StepResult | Write
S = TypeVar("S", bound=StepModel)
WorkloadRef = tuple[str, str, str]  # kind, namespace, name


def _own(model: type[S], step: StepModel, what: str) -> S:
    """``step`` as an instance of ``model`` (the definition's own model)."""
    if not isinstance(step, model):
        raise PermanentStepError(
            f"the {model.type_name()} definition cannot {what} {step.type_name()}"
        )
    return step


@dataclass(frozen=True)
class Diagnostic(Generic[S]):
    """A ``k8s.*`` diagnostic: its model and the function that runs it."""

    model: type[S]
    run: Callable[[Kube, S], Awaitable[StepResult]]

    async def diagnose(self, kube: Kube, step: StepModel) -> StepResult:
        """Run ``step`` (which must be of this definition's model)."""
        return await self.run(kube, _own(self.model, step, "run"))


@dataclass(frozen=True)
class Action(Generic[S]):
    """A ``k8s.*`` remediation: read and state the intent, act, re-check, verify.

    ``prepare`` reads the target and states in absolute terms what ``apply`` will
    do (or returns a ``StepResult``: nothing to do); ``apply`` does exactly that,
    every write fenced; ``recheck`` tells whether an interrupted ``apply`` shows
    on the target. ``workload`` names the workload ``k8s.rollout_status`` polls
    (None: it has none) and ``pods`` the pods ``k8s.pods_ready`` counts (None:
    the workload's). The executor calls them through ``state``, ``act``,
    ``check``, ``workload_of`` and ``pods_of``, which take any step model and
    refuse one of another type.
    """

    model: type[S]
    prepare: Callable[[Kube, S], Awaitable[Intent | StepResult]]
    apply: Callable[[Kube, S, Intent], Awaitable[StepResult]]
    recheck: Callable[[Kube, S, Intent], Awaitable[RecheckResult]]
    workload: Callable[[Kube, S], Awaitable[WorkloadRef]] | None = None
    pods: Callable[[Kube, S], tuple[str, str]] | None = None

    async def state(self, kube: Kube, step: StepModel) -> Intent | StepResult:
        """``prepare`` for ``step``."""
        return await self.prepare(kube, _own(self.model, step, "prepare"))

    async def act(self, kube: Kube, step: StepModel, intent: Intent) -> StepResult:
        """``apply`` for ``step``."""
        return await self.apply(kube, _own(self.model, step, "apply"), intent)

    async def check(self, kube: Kube, step: StepModel, intent: Intent) -> RecheckResult:
        """``recheck`` for ``step``."""
        return await self.recheck(kube, _own(self.model, step, "re-check"), intent)

    async def workload_of(self, kube: Kube, step: StepModel) -> WorkloadRef | None:
        """The workload ``k8s.rollout_status`` polls after ``step`` (None: none)."""
        if self.workload is None:
            return None
        return await self.workload(kube, _own(self.model, step, "verify"))

    def pods_of(self, kube: Kube, step: StepModel) -> tuple[str, str] | None:
        """Namespace and selector of the pods ``k8s.pods_ready`` counts.

        None: the workload's pods.
        """
        if self.pods is None:
            return None
        return self.pods(kube, _own(self.model, step, "verify"))


class RunsDiagnostic(Protocol):
    """What the executor needs of a diagnostic definition, whatever its model."""

    @property
    def model(self) -> type[StepModel]:
        """The step model it runs."""
        ...

    async def diagnose(self, kube: Kube, step: StepModel) -> StepResult:
        """Run ``step``."""
        ...


class RunsAction(Protocol):
    """What the executor needs of a remediation definition, whatever its model."""

    @property
    def model(self) -> type[StepModel]:
        """The step model it runs."""
        ...

    async def state(self, kube: Kube, step: StepModel) -> Intent | StepResult:
        """Read the target and state the change."""
        ...

    async def act(self, kube: Kube, step: StepModel, intent: Intent) -> StepResult:
        """Make the change stated."""
        ...

    async def check(self, kube: Kube, step: StepModel, intent: Intent) -> RecheckResult:
        """Whether an interrupted change shows on the target."""
        ...

    async def workload_of(self, kube: Kube, step: StepModel) -> WorkloadRef | None:
        """The workload a rollout-status verify polls."""
        ...

    def pods_of(self, kube: Kube, step: StepModel) -> tuple[str, str] | None:
        """The pods a pods-ready verify counts."""
        ...


def fenced(obj: Json, patch: Json) -> Json:
    """``patch`` carrying the ``resourceVersion`` of ``obj`` it was computed from.

    The API server refuses it (409) if anyone changed the object in between.
    """
    version = parse_object(Versioned, obj, "patch").metadata.resource_version
    return {"metadata": {"resourceVersion": version}, **patch}


class _NamesWorkload(Protocol):
    @property
    def workload_kind(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def workload(self) -> str: ...


async def workload_of(kube: Kube, step: _NamesWorkload) -> WorkloadRef:
    """The workload a remediation that names one changed, for its verify."""
    del kube
    return step.workload_kind, step.namespace, step.workload


@dataclass
class Kube:
    """The API client, clock and caps the ``k8s.*`` step functions share."""

    api: KubeApi
    clock: Callable[[], datetime]
    kinds: frozenset[str] | None
    poll_interval: float
    # Which pods replace the ones k8s.delete_pod deleted, for k8s.pods_ready.
    replaced_by: OrderedDict[tuple[str, str], str] = field(default_factory=OrderedDict)

    @staticmethod
    def allowed(kinds: Iterable[str] | None) -> frozenset[str] | None:
        """``kube_allowed_kinds`` as a set (None: every kind)."""
        return None if kinds is None else frozenset(kinds)

    def remember(self, ns: str, target: str, selector: str) -> None:
        """Note which selector finds the pods replacing those of ``target``."""
        key = (ns, target)
        self.replaced_by[key] = selector
        self.replaced_by.move_to_end(key)
        while len(self.replaced_by) > _MEMO_SIZE:
            self.replaced_by.popitem(last=False)

    async def write_loop(
        self,
        what: str,
        read: Callable[[], Awaitable[Json]],
        decide: Callable[[Json, int], Decision],
    ) -> StepResult:
        """Read, decide, write; after a 409 or transient failure, read again first.

        ``decide`` sees the fresh object and the attempt number; from the second
        attempt on it must recognise a target state an earlier write already
        reached, so nothing is applied twice.
        """
        last: Exception | None = None
        for attempt in range(WRITE_ATTEMPTS):
            obj = await read()
            plan = decide(obj, attempt)
            if isinstance(plan, StepResult):
                return plan
            try:
                response = await plan.send()
            except KubeConflictError as exc:
                last = exc
                continue
            except TransientStepError as exc:
                last = exc
                await asyncio.sleep(backoff(self.api.policy, attempt))
                continue
            outcome = plan.done(response)
            # Every write reports the exact request it sent.
            return replace(outcome, result={**outcome.result, "request": plan.request})
        raise TransientStepError(
            f"{what}: gave up after {WRITE_ATTEMPTS} attempts: {last}"
        )

    def check_kind(self, kind: str) -> None:
        """Refuse a kind outside ``kube_allowed_kinds``."""
        if self.kinds is not None and kind not in self.kinds:
            raise PermanentStepError(
                f"refused: kind {kind} is not in kube_allowed_kinds "
                f"({', '.join(sorted(self.kinds)) or 'empty'})"
            )

    async def read_workload(self, kind: str, namespace: str, name: str) -> Json:
        """A Deployment, StatefulSet or DaemonSet."""
        self.check_kind(kind)
        apps = await self.api.apps()
        call = {
            "Deployment": apps.read_namespaced_deployment,
            "StatefulSet": apps.read_namespaced_stateful_set,
            "DaemonSet": apps.read_namespaced_daemon_set,
        }[kind]
        return await self.api.json(
            f"get {kind.lower()}/{name} -n {namespace}", call, name, namespace
        )

    async def read_pod(self, namespace: str, name: str) -> Json:
        """One pod."""
        core = await self.api.core()
        return await self.api.json(
            f"get pod/{name} -n {namespace}", core.read_namespaced_pod, name, namespace
        )

    async def selector_of(self, kind: str, namespace: str, name: str) -> str:
        """The label selector of a workload's pods."""
        obj = await self.read_workload(kind, namespace, name)
        return self.selector(kind, name, obj)

    @staticmethod
    def selector(kind: str, name: str, obj: Json) -> str:
        """The label selector of ``obj``; an empty one is refused."""
        spec = parse_object(Workload, obj, f"{kind.lower()}/{name}").spec
        selector = label_selector(spec.selector)
        if not selector:
            raise PermanentStepError(
                f"{kind.lower()}/{name} has an empty selector; refusing to treat "
                "every pod in the namespace as its pods"
            )
        return selector

    async def list_pods(
        self, namespace: str, selector: str | None, limit: int
    ) -> tuple[list[Json], bool]:
        """Pods matching ``selector`` (at most ``limit``) and whether more exist."""
        self.check_kind("Pod")
        core = await self.api.core()
        # The client leaves out a parameter that is None.
        body: Json = await self.api.json(
            f"list pods -l {selector or '<all>'} -n {namespace}",
            core.list_namespaced_pod,
            namespace,
            limit=limit,
            label_selector=selector or None,
        )
        items = list(body.get("items") or [])[:limit]
        more = (
            bool(parse_object(ObjectList, body, "pod list").metadata.continue_)
            or len(body.get("items") or []) > limit
        )
        return items, more

    async def owned_replica_sets(self, namespace: str, deployment: Json) -> list[Json]:
        """ReplicaSets controlled by ``deployment``, newest revision first."""
        self.check_kind("ReplicaSet")
        meta = parse_object(Revision, deployment, "deployment").metadata
        name, uid = meta.name, meta.uid
        selector = self.selector("Deployment", name, deployment)
        apps = await self.api.apps()
        body: Json = await self.api.json(
            f"list replicasets -l {selector} -n {namespace}",
            apps.list_namespaced_replica_set,
            namespace,
            label_selector=selector,
            limit=LIST_CAP,
        )
        owned = []
        for rs in body.get("items") or []:
            ref = controller_of(rs)
            if ref is None or ref.get("kind") != "Deployment":
                continue
            if (uid and ref.get("uid") == uid) or (not uid and ref.get("name") == name):
                owned.append(rs)
        owned.sort(key=revision_of, reverse=True)
        return owned

    async def read_hpa(self, ns: str, name: str) -> Json:
        """A HorizontalPodAutoscaler."""
        self.check_kind("HorizontalPodAutoscaler")
        api = await self.api.autoscaling()
        return await self.api.json(
            f"get hpa/{name} -n {ns}",
            api.read_namespaced_horizontal_pod_autoscaler,
            name,
            ns,
        )

    async def patch_workload(
        self, kind: str, ns: str, name: str, body: Json | list[Json]
    ) -> Json:
        """Send one patch of a workload, once (``write_loop`` decides on retries)."""
        apps = await self.api.apps()
        call = {
            "Deployment": apps.patch_namespaced_deployment,
            "StatefulSet": apps.patch_namespaced_stateful_set,
            "DaemonSet": apps.patch_namespaced_daemon_set,
        }[kind]
        return await self.api.json(
            f"patch {kind.lower()}/{name} -n {ns}", call, name, ns, body, retry=False
        )

    def workload_write(
        self,
        kind: str,
        ns: str,
        name: str,
        body: Json,
        done: Callable[[Json], StepResult],
    ) -> Write:
        """A strategic-merge patch of a workload, as ``write_loop`` sends it."""
        request = request_record(
            "patch",
            kind,
            ns,
            name,
            body=body,
            content_type="application/strategic-merge-patch+json",
        )
        return Write(
            send=lambda: self.patch_workload(kind, ns, name, body),
            request=request,
            done=done,
        )
