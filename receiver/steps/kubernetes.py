"""``k8s.*`` steps: diagnostics, remediations and their verification, via the API.

Built by ``build_executors`` when ``kube_mode`` is not ``off``; the runner calls
``run`` and ``verify`` with rendered step models (the planner has already applied
the namespace allowlist). Every request goes through kubernetes-asyncio's typed API
methods on one ``ApiClient`` per application, built lazily inside the event loop
from an explicit ``Configuration`` (never the library's global default) and closed
by ``aclose``. Responses are read as raw JSON, not the client's models, so a pod
template copied back by a rollback keeps every field the server sent, including
ones newer than this client.

Errors: 404/403/422 (and every other 4xx) are permanent; 429, 5xx, timeouts and
connection errors are transient and reads are retried with bounded, jittered
backoff. Writes are never retried blindly: after a 409 or a transient failure the
object is read again, and the write is repeated only if the target state is not
already there. Every write carries the ``resourceVersion`` it was computed from,
so the API server refuses it (409) if anyone changed the object in between.

Diagnostics are bounded (every list, log and message has a cap) and return one
line a person paged at night can act on, plus structured, capped detail. The
transport lives in ``kube_client``, reading API objects in ``kube_objects``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import aiohttp
import re2

from receiver.errors import PermanentStepError, QuantityError, TransientStepError
from receiver.model import Alert, Intent, RecheckResult, StepResult, iso
from receiver.rulebook.steps import (
    K8sDeletePod,
    K8sDescribe,
    K8sEvents,
    K8sLogs,
    K8sPatchHpa,
    K8sPods,
    K8sRolloutHistory,
    K8sRolloutRestart,
    K8sRolloutUndo,
    K8sScale,
    K8sSetMemoryLimit,
    PodsReadyVerify,
    RolloutStatusVerify,
    StepModel,
    apply_relative,
    parse_quantity,
)
from receiver.rulebook.templates import format_duration
from receiver.settings import KubeSettings
from receiver.steps.kube_client import (
    ClientFactory,
    KubeApi,
    KubeConflictError,
    KubeConnection,
    KubeForbiddenError,
    KubeNotFoundError,
    LogTail,
    TokenFile,
    backoff_delay,
    new_api_client,
    read_log,
)
from receiver.steps.kube_objects import (
    CHANGE_CAUSE,
    EPOCH,
    PER_POD_LABELS,
    POD_TEMPLATE_HASH,
    REPLACING_OWNERS,
    RESTARTED_AT,
    ROLLBACK_KEEP,
    Json,
    age_of,
    cap,
    condition_list,
    conditions_line,
    controller_of,
    dig,
    event_time,
    is_pod_ready,
    label_selector,
    metric_line,
    owned_names,
    parse_time,
    pod_line,
    pod_summary,
    request_record,
    revision_of,
    rfc3339,
    rollout_status,
    template_digest,
    template_images,
    without_hash,
)
from receiver.steps.kube_recheck import (
    recheck_count,
    recheck_limit,
    recheck_pods,
    recheck_restart,
    recheck_undo,
)

_WRITE_ATTEMPTS = 3
_LIST_CAP = 500  # objects fetched per list call, whatever a step shows
_EVENT_PAGES = 4  # pages of events k8s.events reads per query
_SELECT_PODS = 200  # pods a k8s.delete_pod selector may consider
_MEMO_SIZE = 256


# ----------------------------------------------------------------- the executor


@dataclass
class _Write:
    """One write a remediation wants to make, and how to report it."""

    send: Callable[[], Awaitable[Any]]
    request: Json
    done: Callable[[Any], StepResult]


Decision = StepResult | _Write


@dataclass(frozen=True)
class _UndoPlan:
    """A rollback worked out from one read: its intent and its write."""

    intent: Intent
    decide: Callable[[Json, int], Decision]


class KubernetesExecutor:
    """Runs ``k8s.*`` steps and verifications through one lazily built ApiClient."""

    def __init__(
        self,
        client_factory: ClientFactory,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        allowed_kinds: Iterable[str] | None = None,
        request_timeout: float = 10.0,
        poll_interval: float = 2.0,
        attempts: int = 3,
        backoff: float = 0.2,
    ) -> None:
        self._api = KubeApi(
            client_factory,
            request_timeout=request_timeout,
            attempts=attempts,
            backoff=backoff,
        )
        self._clock = clock
        self._kinds = None if allowed_kinds is None else frozenset(allowed_kinds)
        self._poll = poll_interval
        self._backoff = backoff
        # Which pods replace the ones k8s.delete_pod deleted, for k8s.pods_ready.
        self._replaced_by: OrderedDict[tuple[str, str], str] = OrderedDict()

    @classmethod
    def from_settings(
        cls, kube: KubeSettings, clock: Callable[[], datetime] | None = None
    ) -> KubernetesExecutor:
        """The executor the ``kube`` settings describe (client built on first use).

        Raises:
            ConfigError: the Kubernetes settings are incomplete.
        """
        conn = KubeConnection.from_settings(kube)

        async def factory() -> tuple[Any, TokenFile | None]:
            return await new_api_client(conn)

        return cls(
            factory,
            clock=clock or (lambda: datetime.now(UTC)),
            allowed_kinds=kube.allowed_kinds,
            request_timeout=kube.request_timeout.total_seconds(),
            poll_interval=kube.poll_interval.total_seconds(),
        )

    async def aclose(self) -> None:
        """Close the ApiClient (and its connection pool) if it was built."""
        await self._api.aclose()

    async def _write_loop(
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
        for attempt in range(_WRITE_ATTEMPTS):
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
                await asyncio.sleep(backoff_delay(self._backoff, attempt))
                continue
            outcome = plan.done(response)
            # Every write reports the exact request it sent.
            return replace(outcome, result={**outcome.result, "request": plan.request})
        raise TransientStepError(
            f"{what}: gave up after {_WRITE_ATTEMPTS} attempts: {last}"
        )

    def _check_kind(self, kind: str) -> None:
        if self._kinds is not None and kind not in self._kinds:
            raise PermanentStepError(
                f"refused: kind {kind} is not in kube_allowed_kinds "
                f"({', '.join(sorted(self._kinds)) or 'empty'})"
            )

    # ------------------------------------------------------------- reads

    async def _read_workload(self, kind: str, namespace: str, name: str) -> Json:
        self._check_kind(kind)
        apps = await self._api.apps()
        call = {
            "Deployment": apps.read_namespaced_deployment,
            "StatefulSet": apps.read_namespaced_stateful_set,
            "DaemonSet": apps.read_namespaced_daemon_set,
        }[kind]
        return await self._api.json(
            f"get {kind.lower()}/{name} -n {namespace}", call, name, namespace
        )

    async def _selector_of(self, kind: str, namespace: str, name: str) -> str:
        obj = await self._read_workload(kind, namespace, name)
        return self._selector(kind, name, obj)

    @staticmethod
    def _selector(kind: str, name: str, obj: Mapping[str, Any]) -> str:
        selector = label_selector(dig(obj, "spec", "selector"))
        if not selector:
            raise PermanentStepError(
                f"{kind.lower()}/{name} has an empty selector; refusing to treat "
                "every pod in the namespace as its pods"
            )
        return selector

    async def _list_pods(
        self, namespace: str, selector: str | None, limit: int
    ) -> tuple[list[Json], bool]:
        """Pods matching ``selector`` (at most ``limit``) and whether more exist."""
        self._check_kind("Pod")
        core = await self._api.core()
        kwargs: dict[str, Any] = {"limit": limit}
        if selector:
            kwargs["label_selector"] = selector
        body: Json = await self._api.json(
            f"list pods -l {selector or '<all>'} -n {namespace}",
            core.list_namespaced_pod,
            namespace,
            **kwargs,
        )
        items = list(body.get("items") or [])[:limit]
        more = (
            bool(dig(body, "metadata", "continue"))
            or len(body.get("items") or []) > limit
        )
        return items, more

    async def _owned_replica_sets(self, namespace: str, deployment: Json) -> list[Json]:
        """ReplicaSets controlled by ``deployment``, newest revision first."""
        self._check_kind("ReplicaSet")
        name = dig(deployment, "metadata", "name")
        uid = dig(deployment, "metadata", "uid")
        selector = self._selector("Deployment", name, deployment)
        apps = await self._api.apps()
        body: Json = await self._api.json(
            f"list replicasets -l {selector} -n {namespace}",
            apps.list_namespaced_replica_set,
            namespace,
            label_selector=selector,
            limit=_LIST_CAP,
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

    # ------------------------------------------------------------- dispatch

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run one ``k8s.*`` step (a remediation: ``prepare``, then ``apply``)."""
        handlers: dict[type[Any], Callable[[Any], Awaitable[StepResult]]] = {
            K8sPods: self._pods,
            K8sEvents: self._events,
            K8sLogs: self._logs,
            K8sRolloutHistory: self._history,
            K8sDescribe: self._describe,
        }
        handler = handlers.get(type(step))
        if handler is not None:
            return await handler(step)
        prepared = await self.prepare(step, alert)
        if prepared is None:
            raise PermanentStepError(f"k8s executor cannot run {step.type_name()}")
        if isinstance(prepared, StepResult):
            return prepared
        return await self.apply(step, alert, prepared)

    async def prepare(
        self, step: StepModel, alert: Alert
    ) -> Intent | StepResult | None:
        """Read the target of a remediation and state it in absolute terms.

        A ``StepResult`` means there is nothing to do (a rollback not needed);
        None: not a remediation this executor prepares.
        """
        del alert
        preparers: dict[type[Any], Callable[[Any], Awaitable[Intent | StepResult]]] = {
            K8sRolloutRestart: self._prepare_restart,
            K8sRolloutUndo: self._prepare_undo,
            K8sScale: self._prepare_scale,
            K8sPatchHpa: self._prepare_hpa,
            K8sDeletePod: self._prepare_delete,
            K8sSetMemoryLimit: self._prepare_memory,
        }
        preparer = preparers.get(type(step))
        return None if preparer is None else await preparer(step)

    async def apply(self, step: StepModel, alert: Alert, intent: Intent) -> StepResult:
        """Do exactly what ``prepare`` said (every write still fenced)."""
        del alert
        appliers: dict[type[Any], Callable[[Any, Intent], Awaitable[StepResult]]] = {
            K8sRolloutRestart: self._restart,
            K8sRolloutUndo: self._undo,
            K8sScale: self._scale,
            K8sPatchHpa: self._patch_hpa,
            K8sDeletePod: self._delete_pods,
            K8sSetMemoryLimit: self._set_memory_limit,
        }
        applier = appliers.get(type(step))
        if applier is None:
            raise PermanentStepError(f"k8s executor cannot apply {step.type_name()}")
        return await applier(step, intent)

    async def recheck(
        self, step: StepModel, alert: Alert, intent: Intent
    ) -> RecheckResult:
        """Whether an interrupted ``apply`` of ``intent`` shows on the target now."""
        del alert
        if isinstance(step, K8sRolloutRestart):
            obj = await self._read_workload(
                step.workload_kind, step.namespace, step.workload
            )
            return recheck_restart(step.target(), obj, intent)
        if isinstance(step, K8sRolloutUndo):
            obj = await self._read_workload(
                "Deployment", step.namespace, step.deployment
            )
            return recheck_undo(step.target(), obj, intent)
        if isinstance(step, K8sScale):
            read, _patch = await self._scale_calls(step)
            live = int(dig(await read(), "spec", "replicas", default=0))
            return recheck_count(f"{step.target()} replicas", live, intent)
        if isinstance(step, K8sPatchHpa):
            obj = await self._read_hpa(step.namespace, step.hpa)
            live = int(dig(obj, "spec", "maxReplicas", default=0))
            return recheck_count(
                f"maxReplicas of hpa/{step.hpa}", live, intent, at_least=True
            )
        if isinstance(step, K8sSetMemoryLimit):
            obj = await self._read_workload(
                step.workload_kind, step.namespace, step.workload
            )
            return recheck_limit(step.target(), _limit_of(obj, step.container), intent)
        if isinstance(step, K8sDeletePod):
            return await self._recheck_delete(step, intent)
        raise PermanentStepError(f"k8s executor cannot re-check {step.type_name()}")

    async def _recheck_delete(
        self, step: K8sDeletePod, intent: Intent
    ) -> RecheckResult:
        self._check_kind("Pod")
        core = await self._api.core()
        ns = step.namespace
        seen: list[tuple[str, str]] = []
        for pod in intent.data["pods"]:
            name = str(pod["name"])
            try:
                live = await self._api.json(
                    f"get pod/{name} -n {ns}", core.read_namespaced_pod, name, ns
                )
            except KubeNotFoundError:
                seen.append((name, "gone"))
                continue
            if pod.get("uid") and dig(live, "metadata", "uid") != pod["uid"]:
                seen.append((name, "replaced (new uid)"))
            elif dig(live, "metadata", "deletionTimestamp") is not None:
                seen.append((name, "terminating"))
            else:
                seen.append((name, "still running (same uid)"))
        return recheck_pods(seen)

    async def verify(self, check: Any, step: StepModel, alert: Alert) -> StepResult:
        """Poll ``k8s.rollout_status`` or ``k8s.pods_ready`` until it holds."""
        del alert
        if isinstance(check, RolloutStatusVerify):
            kind, namespace, name = await self._verified_workload(step)
            return await self._poll_rollout(kind, namespace, name, check.timeout)
        if isinstance(check, PodsReadyVerify):
            namespace, selector = await self._verified_pods(step)
            return await self._poll_ready(namespace, selector, check)
        raise PermanentStepError(f"k8s executor cannot verify {check.type}")

    # ------------------------------------------------------------- diagnostics

    async def _pods(self, step: K8sPods) -> StepResult:
        selector = step.selector
        if step.workload:
            selector = await self._selector_of(
                step.workload_kind, step.namespace, step.workload
            )
        pods, more = await self._list_pods(step.namespace, selector, step.limit)
        now = self._clock()
        summaries = [pod_summary(p, now) for p in pods]
        ready = sum(1 for p in summaries if p["is_ready"])
        where = step.target()
        if not summaries:
            return StepResult(
                ok=True,
                reason=f"no pods for {where} (selector {selector or '<all>'})",
                result={"selector": selector, "pods": [], "truncated": False},
            )
        count = f"{len(summaries)}{'+' if more else ''} pods"
        bad = sorted(
            (p for p in summaries if not p["is_ready"]),
            key=lambda p: -int(p["restarts"]),
        )
        if bad:
            reason = f"{where}: {count}, {ready} ready; " + "; ".join(
                pod_line(p) for p in bad[:3]
            )
        else:
            restarts = sum(int(p["restarts"]) for p in summaries)
            reason = f"{where}: {count}, all ready ({restarts} restarts in total)"
            with_exit = [p for p in summaries if p["last_termination"]]
            if with_exit:
                reason += "; " + pod_line(max(with_exit, key=lambda p: p["restarts"]))
        return StepResult(
            ok=True,
            reason=reason,
            result={
                "selector": selector,
                "pods": summaries,
                "ready": ready,
                "truncated": more,
            },
        )

    async def _events(self, step: K8sEvents) -> StepResult:
        """Events of the object and, for a workload, of its pods (and ReplicaSets).

        Only ``events list`` is needed: a workload's pods (and a Deployment's
        ReplicaSets) are recognised by the names their controllers give them,
        so no pod list or workload read (and no extra RBAC) is involved.
        """
        self._check_kind("Event")
        ns = step.namespace
        queries: list[tuple[str | None, re.Pattern[str] | None]] = [(None, None)]
        if step.object_name:
            own = (
                f"involvedObject.kind={step.object_kind},"
                f"involvedObject.name={step.object_name}"
            )
            queries = [(own, None)]
            queries += [
                (f"involvedObject.kind={kind}", pattern)
                for kind, pattern in owned_names(step.object_kind, step.object_name)
            ]
        found: list[Json] = []
        partial = False
        for selector, names in queries:
            items, more = await self._list_events(ns, selector)
            partial = partial or more
            found += [
                e
                for e in items
                if names is None
                or names.match(str(dig(e, "involvedObject", "name") or ""))
            ]
        now = self._clock()
        events = sorted(found, key=event_time, reverse=True)[: step.limit]
        shown = [
            {
                "type": e.get("type"),
                "reason": e.get("reason"),
                "object": f"{dig(e, 'involvedObject', 'kind')}/"
                f"{dig(e, 'involvedObject', 'name')}",
                "message": cap(e.get("message")),
                "count": e.get("count") or 1,
                "last_seen": iso(event_time(e)) if event_time(e) > EPOCH else None,
                "age": age_of(now, event_time(e)) if event_time(e) > EPOCH else None,
            }
            for e in events
        ]
        where = step.target()
        if not shown:
            return StepResult(
                ok=True, reason=f"no events for {where}", result={"events": []}
            )
        warnings = sum(1 for e in shown if e["type"] == "Warning")
        top = next((e for e in shown if e["type"] == "Warning"), shown[0])
        reason = (
            f"{where}: {len(found)} events, {warnings} warnings among the newest "
            f"{len(shown)}; newest "
            f"{'warning' if top['type'] == 'Warning' else 'event'}: {top['reason']} "
            f"{top['object']}: {cap(top['message'], 160)}"
            f" (x{top['count']}, {top['age'] or '?'} ago)"
        )
        if partial:
            reason += f" (read the first {_LIST_CAP * _EVENT_PAGES} events only)"
        return StepResult(
            ok=True,
            reason=reason,
            result={"events": shown, "total": len(found), "partial": partial},
        )

    async def _list_events(
        self, ns: str, selector: str | None
    ) -> tuple[list[Json], bool]:
        """Events matching ``selector``, a few pages at most; whether more exist."""
        core = await self._api.core()
        items: list[Json] = []
        token: str | None = None
        for _ in range(_EVENT_PAGES):
            kwargs: dict[str, Any] = {"limit": _LIST_CAP}
            if selector:
                kwargs["field_selector"] = selector
            if token:
                kwargs["_continue"] = token
            body = await self._api.json(
                f"list events -n {ns}"
                + (f" --field-selector {selector}" if selector else ""),
                core.list_namespaced_event,
                ns,
                **kwargs,
            )
            items += body.get("items") or []
            token = dig(body, "metadata", "continue")
            if not token:
                return items, False
        return items, True

    async def _logs(self, step: K8sLogs) -> StepResult:
        ns = step.namespace
        if step.pod:
            self._check_kind("Pod")
            core = await self._api.core()
            pods = [
                await self._api.json(
                    f"get pod/{step.pod} -n {ns}",
                    core.read_namespaced_pod,
                    step.pod,
                    ns,
                )
            ]
        else:
            assert step.workload is not None  # noqa: S101 (validated at load)
            selector = await self._selector_of(step.workload_kind, ns, step.workload)
            pods, _ = await self._list_pods(ns, selector, _LIST_CAP)
            # The broken pods first: those are the ones someone paged wants to read.
            pods.sort(
                key=lambda p: (
                    is_pod_ready(p),
                    -sum(
                        int(c.get("restartCount") or 0)
                        for c in dig(p, "status", "containerStatuses") or []
                    ),
                    dig(p, "metadata", "name") or "",
                )
            )
            pods = pods[: step.max_pods]
        grep = re2.compile(step.grep) if step.grep else None
        out = [await self._pod_log(step, pod, grep) for pod in pods]
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

    async def _pod_log(self, step: K8sLogs, pod: Json, grep: Any) -> Json:
        name = str(dig(pod, "metadata", "name"))
        containers = [c.get("name") for c in dig(pod, "spec", "containers") or []]
        default = dig(
            pod, "metadata", "annotations", "kubectl.kubernetes.io/default-container"
        )
        container = step.container or default or (containers[0] if containers else None)
        kwargs: dict[str, Any] = {"tail_lines": step.tail_lines}
        if container:
            kwargs["container"] = container
        if step.previous:
            kwargs["previous"] = True
        if step.since:
            kwargs["since_seconds"] = max(int(step.since.total_seconds()), 1)
        core = await self._api.core()

        async def read(response: aiohttp.ClientResponse) -> LogTail:
            return await read_log(response, grep, step.max_bytes)

        entry: Json = {"pod": name, "container": container}
        try:
            tail = await self._api.request(
                f"logs pod/{name} -c {container} -n {step.namespace}",
                core.read_namespaced_pod_log,
                name,
                step.namespace,
                read=read,
                **kwargs,
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

    async def _history(self, step: K8sRolloutHistory) -> StepResult:
        deployment = await self._read_workload(
            "Deployment", step.namespace, step.deployment
        )
        owned = await self._owned_replica_sets(step.namespace, deployment)
        now = self._clock()
        current = revision_of(deployment) or (revision_of(owned[0]) if owned else 0)
        revisions = [
            {
                "revision": revision_of(rs),
                "replicaset": dig(rs, "metadata", "name"),
                "change_cause": dig(rs, "metadata", "annotations", CHANGE_CAUSE),
                "images": template_images(dig(rs, "spec", "template", default={})),
                "created": dig(rs, "metadata", "creationTimestamp"),
                "age": age_of(
                    now, parse_time(dig(rs, "metadata", "creationTimestamp"))
                ),
                "replicas": int(dig(rs, "status", "replicas", default=0)),
                "current": revision_of(rs) == current,
            }
            for rs in owned[: step.limit]
        ]
        if not revisions:
            return StepResult(
                ok=True,
                reason=f"{step.target()}: no ReplicaSets found (no rollout history)",
                result={"revisions": [], "recent_rollout": False},
            )
        head = next((r for r in revisions if r["current"]), revisions[0])
        created = parse_time(head["created"])
        recent = created is not None and now - created <= step.flag_within
        cause = f" {head['change_cause']!r}" if head["change_cause"] else ""
        reason = (
            f"{step.target()}: revision {head['revision']} (current){cause}, "
            f"{', '.join(head['images'])}, first rolled out {head['age'] or '?'} ago"
        )
        older = [r for r in revisions if r["revision"] < head["revision"]]
        if older:
            prev = older[0]
            reason += (
                f"; previous revision {prev['revision']}: "
                f"{', '.join(prev['images'])} ({prev['age'] or '?'} ago)"
            )
        window = format_duration(step.flag_within)
        reason += (
            f"; RECENT ROLLOUT within {window}"
            if recent
            else f"; no rollout within {window}"
        )
        return StepResult(
            ok=True,
            reason=reason,
            result={
                "revisions": revisions,
                "current_revision": head["revision"],
                "recent_rollout": recent,
                "flag_within": window,
            },
        )

    async def _describe(self, step: K8sDescribe) -> StepResult:
        kind, ns, name = step.object_kind, step.namespace, step.object_name
        if kind == "HorizontalPodAutoscaler":
            return await self._describe_hpa(ns, name)
        if kind == "Pod":
            self._check_kind("Pod")
            core = await self._api.core()
            pod = await self._api.json(
                f"get pod/{name} -n {ns}", core.read_namespaced_pod, name, ns
            )
            summary = pod_summary(pod, self._clock())
            conditions = condition_list(pod)
            return StepResult(
                ok=True,
                reason=f"pod/{name}: {pod_line(summary)} on {summary['node']}; "
                + conditions_line(conditions),
                result={"pod": summary, "conditions": conditions},
            )
        obj = await self._read_workload(kind, ns, name)
        status = dig(obj, "status", default={})
        conditions = condition_list(obj)
        if kind == "Deployment":
            counts = {
                "desired": dig(obj, "spec", "replicas", default=1),
                "updated": status.get("updatedReplicas") or 0,
                "ready": status.get("readyReplicas") or 0,
                "available": status.get("availableReplicas") or 0,
                "unavailable": status.get("unavailableReplicas") or 0,
            }
            line = (
                f"{counts['ready']}/{counts['desired']} ready, {counts['updated']} "
                f"updated, {counts['unavailable']} unavailable"
            )
        elif kind == "StatefulSet":
            counts = {
                "desired": dig(obj, "spec", "replicas", default=1),
                "ready": status.get("readyReplicas") or 0,
                "updated": status.get("updatedReplicas") or 0,
                "current_revision": status.get("currentRevision"),
                "update_revision": status.get("updateRevision"),
            }
            line = f"{counts['ready']}/{counts['desired']} ready"
        else:
            counts = {
                "desired": status.get("desiredNumberScheduled") or 0,
                "ready": status.get("numberReady") or 0,
                "updated": status.get("updatedNumberScheduled") or 0,
                "available": status.get("numberAvailable") or 0,
                "misscheduled": status.get("numberMisscheduled") or 0,
            }
            line = f"{counts['ready']}/{counts['desired']} ready"
        paused = bool(dig(obj, "spec", "paused"))
        generation = dig(obj, "metadata", "generation", default=0)
        observed = dig(obj, "status", "observedGeneration", default=0)
        if paused:
            line += ", PAUSED"
        if observed < generation:
            line += f", spec change not yet observed ({observed} < {generation})"
        if conditions:
            line += "; " + conditions_line(conditions)
        return StepResult(
            ok=True,
            reason=f"{kind.lower()}/{name}: {line}",
            result={
                "kind": kind,
                "replicas": counts,
                "paused": paused,
                "generation": generation,
                "observed_generation": observed,
                "images": template_images(dig(obj, "spec", "template", default={})),
                "conditions": conditions,
            },
        )

    async def _describe_hpa(self, ns: str, name: str) -> StepResult:
        hpa = await self._read_hpa(ns, name)
        spec = dig(hpa, "spec", default={})
        status = dig(hpa, "status", default={})
        low = int(spec.get("minReplicas") or 1)
        high = int(spec.get("maxReplicas") or 0)
        current = int(status.get("currentReplicas") or 0)
        desired = int(status.get("desiredReplicas") or 0)
        conditions = condition_list(hpa)
        limited = any(
            c["type"] == "ScalingLimited"
            and c["status"] == "True"
            and c["reason"] == "TooManyReplicas"
            for c in conditions
        )
        at_max = high > 0 and (current >= high or desired >= high or limited)
        metrics = [metric_line(m) for m in (status.get("currentMetrics") or [])[:10]]
        reason = (
            f"hpa/{name}: {current} current, {desired} desired (min {low}, max "
            f"{high})" + (" — AT MAX, it cannot scale further" if at_max else "")
        )
        if metrics:
            reason += "; " + ", ".join(metrics)
        if conditions:
            reason += "; " + conditions_line(conditions)
        return StepResult(
            ok=True,
            reason=reason,
            result={
                "current": current,
                "desired": desired,
                "min": low,
                "max": high,
                "at_max": at_max,
                "target": dig(spec, "scaleTargetRef", default={}),
                "metrics": metrics,
                "conditions": conditions,
            },
        )

    async def _read_hpa(self, ns: str, name: str) -> Json:
        self._check_kind("HorizontalPodAutoscaler")
        api = await self._api.autoscaling()
        return await self._api.json(
            f"get hpa/{name} -n {ns}",
            api.read_namespaced_horizontal_pod_autoscaler,
            name,
            ns,
        )

    # ------------------------------------------------------------- remediations

    async def _patch_workload(self, kind: str, ns: str, name: str, body: Any) -> Json:
        apps = await self._api.apps()
        call = {
            "Deployment": apps.patch_namespaced_deployment,
            "StatefulSet": apps.patch_namespaced_stateful_set,
            "DaemonSet": apps.patch_namespaced_daemon_set,
        }[kind]
        return await self._api.json(
            f"patch {kind.lower()}/{name} -n {ns}", call, name, ns, body, retry=False
        )

    def _workload_write(
        self,
        kind: str,
        ns: str,
        name: str,
        body: Json,
        done: Callable[[Any], StepResult],
    ) -> _Write:
        """A strategic-merge patch of a workload, as ``_write_loop`` sends it."""
        request = request_record(
            "patch",
            kind,
            ns,
            name,
            body=body,
            content_type="application/strategic-merge-patch+json",
        )
        return _Write(
            send=lambda: self._patch_workload(kind, ns, name, body),
            request=request,
            done=done,
        )

    async def _prepare_restart(self, step: K8sRolloutRestart) -> Intent:
        kind, ns, name = step.workload_kind, step.namespace, step.workload
        obj = await self._read_workload(kind, ns, name)
        annotations = dig(obj, "spec", "template", "metadata", "annotations") or {}
        stamp = rfc3339(self._clock())
        return Intent(
            f"rollout restart {kind.lower()}/{name} -n {ns} (restartedAt {stamp})",
            {"restarted_at": stamp, "previous": annotations.get(RESTARTED_AT)},
        )

    async def _restart(self, step: K8sRolloutRestart, intent: Intent) -> StepResult:
        kind, ns, name = step.workload_kind, step.namespace, step.workload
        stamp = str(intent.data["restarted_at"])

        def decide(obj: Json, attempt: int) -> Decision:
            annotations = dig(obj, "spec", "template", "metadata", "annotations") or {}
            if attempt and annotations.get(RESTARTED_AT) == stamp:
                return StepResult(
                    ok=True,
                    reason=f"restarted {kind.lower()}/{name} (restartedAt {stamp}; "
                    "an earlier attempt had gone through)",
                    result={"restarted_at": stamp},
                )
            if kind == "Deployment" and dig(obj, "spec", "paused"):
                raise PermanentStepError(
                    f"refused: deployment/{name} is paused; a restart would not roll "
                    "out (kubectl refuses too). Resume it first: kubectl rollout "
                    f"resume deployment/{name} -n {ns}"
                )
            body = {
                "metadata": {
                    "resourceVersion": dig(obj, "metadata", "resourceVersion")
                },
                "spec": {
                    "template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}
                },
            }
            return self._workload_write(
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

        return await self._write_loop(
            f"rollout restart {step.target()}",
            lambda: self._read_workload(kind, ns, name),
            decide,
        )

    async def _prepare_undo(self, step: K8sRolloutUndo) -> Intent | StepResult:
        planned = await self._plan_undo(step)
        if isinstance(planned, StepResult):
            return planned
        return planned.intent

    async def _undo(self, step: K8sRolloutUndo, intent: Intent) -> StepResult:
        """Roll back as ``intent`` says, if the deployment is still as it was read."""
        ns, name = step.namespace, step.deployment
        planned = await self._plan_undo(step)
        if isinstance(planned, StepResult):
            return planned
        if planned.intent.data != intent.data:
            raise PermanentStepError(
                f"refused: deployment/{name} changed between reading it and rolling "
                f"back (now: {planned.intent.summary}; read: {intent.summary}); not "
                "overwriting someone else's change"
            )
        return await self._write_loop(
            f"rollout undo {step.target()}",
            lambda: self._read_workload("Deployment", ns, name),
            planned.decide,
        )

    async def _plan_undo(self, step: K8sRolloutUndo) -> _UndoPlan | StepResult:
        ns, name = step.namespace, step.deployment
        deployment = await self._read_workload("Deployment", ns, name)
        if dig(deployment, "spec", "paused"):
            raise PermanentStepError(
                f"refused: deployment/{name} is paused; kubectl refuses to roll back "
                f"a paused deployment too. Resume it first: kubectl rollout resume "
                f"deployment/{name} -n {ns}"
            )
        owned = await self._owned_replica_sets(ns, deployment)
        current_template = without_hash(dig(deployment, "spec", "template", default={}))
        current_rs = next(
            (
                rs
                for rs in owned
                if without_hash(dig(rs, "spec", "template", default={}))
                == current_template
            ),
            None,
        )
        current = revision_of(current_rs) if current_rs else revision_of(deployment)
        now = self._clock()
        if step.only_if_rollout_within is not None:
            created = parse_time(dig(current_rs, "metadata", "creationTimestamp"))
            window = format_duration(step.only_if_rollout_within)
            if created is None or now - created > step.only_if_rollout_within:
                when = (
                    f"{age_of(now, created)} ago" if created else "at an unknown time"
                )
                return StepResult(
                    ok=True,
                    changed=False,
                    reason=f"did not roll back deployment/{name}: its current "
                    f"revision {current} was first rolled out {when}, not within "
                    f"{window}, so a bad deploy is not the likely cause",
                    result={"rolled_back": False, "current_revision": current},
                )
        target = self._undo_target(step, owned, current)
        target_template = without_hash(dig(target, "spec", "template", default={}))
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
            k: v
            for k, v in (dig(deployment, "metadata", "annotations") or {}).items()
            if k in ROLLBACK_KEEP
        }
        annotations.update(
            {
                k: v
                for k, v in (dig(target, "metadata", "annotations") or {}).items()
                if k not in ROLLBACK_KEEP
            }
        )
        before = template_images(current_template)
        after = template_images(target_template)
        cause = dig(target, "metadata", "annotations", CHANGE_CAUSE)

        def decide(obj: Json, attempt: int) -> Decision:
            live = without_hash(dig(obj, "spec", "template", default={}))
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
            body = [
                {
                    "op": "replace",
                    "path": "/metadata/resourceVersion",
                    "value": dig(obj, "metadata", "resourceVersion"),
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
            return _Write(
                send=lambda: self._patch_workload("Deployment", ns, name, body),
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
                "to_pod_template_hash": dig(
                    target, "metadata", "labels", POD_TEMPLATE_HASH
                ),
            },
        )
        return _UndoPlan(intent, decide)

    @staticmethod
    def _undo_target(step: K8sRolloutUndo, owned: list[Json], current: int) -> Json:
        name = step.deployment
        known = sorted(
            {revision_of(rs) for rs in owned if revision_of(rs)}, reverse=True
        )
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

    async def _prepare_scale(self, step: K8sScale) -> Intent:
        kind, ns, name = step.workload_kind, step.namespace, step.workload
        read, _patch = await self._scale_calls(step)
        first = await read()
        start = int(dig(first, "spec", "replicas", default=0))
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
        self, step: K8sScale
    ) -> tuple[Callable[[], Awaitable[Json]], Callable[[Json], Awaitable[Json]]]:
        """Read and patch the scale subresource of the step's workload."""
        kind, ns, name = step.workload_kind, step.namespace, step.workload
        self._check_kind(kind)
        apps = await self._api.apps()
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
            return await self._api.json(f"get {what} scale", read_call, name, ns)

        async def patch(body: Json) -> Json:
            return await self._api.json(
                f"patch {what} scale", patch_call, name, ns, body, retry=False
            )

        return read, patch

    async def _scale(self, step: K8sScale, intent: Intent) -> StepResult:
        kind, ns, name = step.workload_kind, step.namespace, step.workload
        what = f"{kind.lower()}/{name} -n {ns}"
        read, patch = await self._scale_calls(step)
        start = int(intent.data["from"])
        target = int(intent.data["to"])
        up = bool(intent.data["up"])
        notes = [str(n) for n in intent.data.get("notes") or []]

        def decide(obj: Json, attempt: int) -> Decision:
            live = int(dig(obj, "spec", "replicas", default=0))
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
            body = {
                "metadata": {
                    "resourceVersion": dig(obj, "metadata", "resourceVersion")
                },
                "spec": {"replicas": final},
            }
            request = request_record(
                "patch",
                f"{kind}/scale",
                ns,
                name,
                body=body,
                content_type="application/strategic-merge-patch+json",
            )

            return _Write(
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

        return await self._write_loop(f"scale {what}", read, decide)

    async def _prepare_hpa(self, step: K8sPatchHpa) -> Intent:
        ns, name = step.namespace, step.hpa
        first = await self._read_hpa(ns, name)
        start = int(dig(first, "spec", "maxReplicas", default=0))
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

    async def _patch_hpa(self, step: K8sPatchHpa, intent: Intent) -> StepResult:
        ns, name = step.namespace, step.hpa
        api = await self._api.autoscaling()
        start = int(intent.data["from"])
        target = int(intent.data["to"])
        note = str(intent.data.get("note") or "")

        def decide(obj: Json, attempt: int) -> Decision:
            live = int(dig(obj, "spec", "maxReplicas", default=0))
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
            body = {
                "metadata": {
                    "resourceVersion": dig(obj, "metadata", "resourceVersion")
                },
                "spec": {"maxReplicas": target},
            }
            request = request_record(
                "patch",
                "HorizontalPodAutoscaler",
                ns,
                name,
                body=body,
                content_type="application/strategic-merge-patch+json",
            )

            async def send() -> Json:
                return await self._api.json(
                    f"patch hpa/{name} -n {ns}",
                    api.patch_namespaced_horizontal_pod_autoscaler,
                    name,
                    ns,
                    body,
                    retry=False,
                )

            return _Write(
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

        return await self._write_loop(
            f"patch hpa/{name} -n {ns}", lambda: self._read_hpa(ns, name), decide
        )

    async def _prepare_memory(self, step: K8sSetMemoryLimit) -> Intent:
        kind, ns, name = step.workload_kind, step.namespace, step.workload
        obj = await self._read_workload(kind, ns, name)
        live = _limit_of(obj, step.container)
        return Intent(
            f"set the memory limit of {step.container} in {kind.lower()}/{name} "
            f"-n {ns} from {live or 'none'} to {step.memory}",
            {"container": step.container, "from": live, "to": step.memory},
        )

    async def _set_memory_limit(
        self, step: K8sSetMemoryLimit, intent: Intent
    ) -> StepResult:
        del intent  # the limit is absolute already: the step's own value
        kind, ns, name = step.workload_kind, step.namespace, step.workload
        target = parse_quantity(step.memory)

        def decide(obj: Json, attempt: int) -> Decision:
            containers = dig(obj, "spec", "template", "spec", "containers") or []
            container = next(
                (c for c in containers if c.get("name") == step.container), None
            )
            if container is None:
                raise PermanentStepError(
                    f"refused: {kind.lower()}/{name} has no container "
                    f"{step.container!r} (containers: "
                    f"{', '.join(str(c.get('name')) for c in containers)})"
                )
            live = dig(container, "resources", "limits", "memory")
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
            body = {
                "metadata": {
                    "resourceVersion": dig(obj, "metadata", "resourceVersion")
                },
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": step.container,
                                    "resources": {"limits": {"memory": step.memory}},
                                }
                            ]
                        }
                    }
                },
            }
            return self._workload_write(
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

        return await self._write_loop(
            f"set memory limit {step.target()}",
            lambda: self._read_workload(kind, ns, name),
            decide,
        )

    async def _prepare_delete(self, step: K8sDeletePod) -> Intent:
        """Choose the pods to delete (within the caps) and name them by uid."""
        self._check_kind("Pod")
        ns = step.namespace
        core = await self._api.core()
        if step.pod:
            pod = await self._api.json(
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
                for k, v in sorted((dig(pod, "metadata", "labels") or {}).items())
                if k not in PER_POD_LABELS
            )
            peers, _ = await self._list_pods(ns, siblings_selector, _SELECT_PODS)
            peers = [
                p
                for p in peers
                if (controller_of(p) or {}).get("uid") == owner.get("uid")
            ] or [pod]
            candidates = [pod]
            self._remember(ns, step, siblings_selector)
        else:
            peers, _ = await self._list_pods(ns, step.selector, _SELECT_PODS)
            candidates = peers
            self._remember(ns, step, step.selector or "")
        return self._choose_pods(step, peers, candidates)

    def _remember(self, ns: str, step: K8sDeletePod, selector: str) -> None:
        key = (ns, step.target())
        self._replaced_by[key] = selector
        self._replaced_by.move_to_end(key)
        while len(self._replaced_by) > _MEMO_SIZE:
            self._replaced_by.popitem(last=False)

    def _choose_pods(
        self, step: K8sDeletePod, peers: list[Json], candidates: list[Json]
    ) -> Intent:
        ready = sum(1 for p in peers if is_pod_ready(p))
        skipped: list[Json] = []
        chosen: list[Json] = []
        # Broken pods first: deleting them costs no ready capacity.
        ordered = sorted(
            candidates,
            key=lambda p: (
                is_pod_ready(p),
                -pod_summary(p, self._clock())["restarts"],
                dig(p, "metadata", "name") or "",
            ),
        )
        left = ready
        for pod in ordered:
            name = dig(pod, "metadata", "name")
            owner = controller_of(pod)
            if owner is None or owner.get("kind") not in REPLACING_OWNERS:
                skipped.append(
                    {"pod": name, "why": "not owned by a ReplicaSet or StatefulSet"}
                )
                continue
            if dig(pod, "metadata", "deletionTimestamp") is not None:
                skipped.append({"pod": name, "why": "already terminating"})
                continue
            if len(chosen) >= step.max_pods:
                skipped.append(
                    {"pod": name, "why": f"max_pods {step.max_pods} reached"}
                )
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
        pods = [
            {"name": dig(p, "metadata", "name"), "uid": dig(p, "metadata", "uid")}
            for p in chosen
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

    async def _delete_pods(self, step: K8sDeletePod, intent: Intent) -> StepResult:
        """Delete exactly the pods ``intent`` names (uid preconditions)."""
        self._check_kind("Pod")
        ns = step.namespace
        ready = int(intent.data["ready_before"])
        left = int(intent.data["ready_at_least"])
        skipped = list(intent.data.get("skipped") or [])
        deleted = [
            await self._delete_pod(ns, {"metadata": dict(pod)})
            for pod in intent.data["pods"]
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

    async def _delete_pod(self, ns: str, pod: Json) -> Json:
        name = str(dig(pod, "metadata", "name"))
        uid = dig(pod, "metadata", "uid")
        core = await self._api.core()
        # Preconditions: only the pod that was inspected, never a same-named
        # replacement a StatefulSet made in between.
        body = {"preconditions": {"uid": uid}} if uid else {}
        request = request_record(
            "delete", "Pod", ns, name, body=body, content_type="application/json"
        )
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                await self._api.json(
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
                if attempt + 1 == _WRITE_ATTEMPTS:
                    raise
                await asyncio.sleep(backoff_delay(self._backoff, attempt))
                try:
                    live = await self._api.json(
                        f"get pod/{name} -n {ns}", core.read_namespaced_pod, name, ns
                    )
                except KubeNotFoundError:
                    return {
                        "pod": name,
                        "note": "gone after a retry",
                        "request": request,
                    }
                if uid and dig(live, "metadata", "uid") != uid:
                    return {"pod": name, "note": "replaced already", "request": request}
                if dig(live, "metadata", "deletionTimestamp") is not None:
                    return {"pod": name, "request": request}
                continue
            return {"pod": name, "request": request}
        raise TransientStepError(
            f"delete pod/{name} -n {ns}: gave up"
        )  # pragma: no cover

    # ------------------------------------------------------------- verification

    async def _verified_workload(self, step: StepModel) -> tuple[str, str, str]:
        if isinstance(step, K8sRolloutUndo):
            return "Deployment", step.namespace, step.deployment
        if isinstance(step, K8sRolloutRestart | K8sScale | K8sSetMemoryLimit):
            return step.workload_kind, step.namespace, step.workload
        if isinstance(step, K8sPatchHpa):
            ref = dig(
                await self._read_hpa(step.namespace, step.hpa), "spec", "scaleTargetRef"
            )
            kind, name = dig(ref, "kind"), dig(ref, "name")
            if kind not in ("Deployment", "StatefulSet", "DaemonSet") or not name:
                raise PermanentStepError(
                    f"hpa/{step.hpa} scales {kind}/{name}, which has no rollout status"
                )
            return str(kind), step.namespace, str(name)
        raise PermanentStepError(
            f"k8s.rollout_status cannot verify {step.type_name()}: it names no "
            "workload (use k8s.pods_ready)"
        )

    async def _verified_pods(self, step: StepModel) -> tuple[str, str]:
        if isinstance(step, K8sDeletePod):
            if step.selector:
                return step.namespace, step.selector
            remembered = self._replaced_by.get((step.namespace, step.target()))
            if remembered is None:
                raise PermanentStepError(
                    f"cannot tell which pods replace {step.target()}: it was not "
                    "deleted by this receiver process"
                )
            return step.namespace, remembered
        kind, ns, name = await self._verified_workload(step)
        return ns, await self._selector_of(kind, ns, name)

    async def _poll_rollout(
        self, kind: str, ns: str, name: str, timeout: timedelta
    ) -> StepResult:
        deadline = time.monotonic() + timeout.total_seconds()
        last = "not checked"
        polls = 0
        while True:
            polls += 1
            try:
                obj = await self._read_workload(kind, ns, name)
            except TransientStepError as exc:
                last = str(exc)
            else:
                done, last = rollout_status(kind, obj)
                if done:
                    return StepResult(
                        ok=True, reason=f"verified: {last}", result={"polls": polls}
                    )
            if time.monotonic() >= deadline:
                return StepResult(
                    ok=False,
                    reason=f"not verified within {format_duration(timeout)}: {last}",
                    result={"polls": polls},
                )
            await asyncio.sleep(self._poll)

    async def _poll_ready(
        self, ns: str, selector: str, check: PodsReadyVerify
    ) -> StepResult:
        deadline = time.monotonic() + check.timeout.total_seconds()
        last = "not checked"
        polls = 0
        while True:
            polls += 1
            try:
                pods, _ = await self._list_pods(ns, selector, _LIST_CAP)
            except TransientStepError as exc:
                last = str(exc)
            else:
                ready = [p for p in pods if is_pod_ready(p)]
                last = f"{len(ready)} of {len(pods)} pods ready (-l {selector})"
                if len(ready) >= check.min_ready:
                    return StepResult(
                        ok=True,
                        reason=f"verified: {last}, at least {check.min_ready} wanted",
                        result={"polls": polls, "ready": len(ready)},
                    )
            if time.monotonic() >= deadline:
                return StepResult(
                    ok=False,
                    reason=f"not verified within {format_duration(check.timeout)}: "
                    f"{last}, {check.min_ready} wanted",
                    result={"polls": polls},
                )
            await asyncio.sleep(self._poll)


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


def _limit_of(obj: Mapping[str, Any], name: str) -> str | None:
    """The memory limit of container ``name`` in a workload, if it has one."""
    for c in dig(obj, "spec", "template", "spec", "containers") or []:
        if c.get("name") == name:
            limit = dig(c, "resources", "limits", "memory")
            return None if limit is None else str(limit)
    return None
