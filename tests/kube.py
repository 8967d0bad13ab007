"""A Kubernetes API server for tests: kmock 0.8's emulator, its gaps filled, and seeds.

``Cluster`` subclasses ``kmock.KubernetesEmulator`` (pinned ``kmock==0.8``, served
over real HTTP by ``kmock.Server``) and fills what the receiver's k8s steps need
and 0.8 lacks (see shared/INFRA.md):

- ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) and
  ``fieldSelector`` (dotted paths, ``=``/``!=``) filter lists; ``limit`` and
  ``continue`` page them;
- ``/version`` and ``/version/`` answer; the bundled resources load without the
  deprecated ``importlib.resources.read_binary`` (an error under ``-W error``);
- objects get ``uid``, ``resourceVersion``, ``generation`` and
  ``creationTimestamp``, and every write bumps ``resourceVersion`` (and
  ``generation`` when ``spec`` changes);
- PATCH honours its content type: JSON patch (RFC 6902), merge patch (RFC 7386) and
  strategic merge patch, approximated as merge patch with lists of named objects
  (containers, env, volumes...) merged by ``name``; a ``resourceVersion`` in the
  patched object that is not the stored one is a 409, as on a real API server;
- the ``scale`` subresource reads and writes ``spec.replicas`` as a ``Scale``;
- ``pods/log`` serves text set in ``Cluster.logs`` / ``Cluster.previous_logs``, with
  ``tailLines``, ``limitBytes``, ``container`` and ``previous`` (400 when there
  is no previous container, as kubelet answers);
- DELETE honours ``preconditions.uid``;
- a tiny controller: ``settle_after`` seconds after a Deployment's template changes,
  its ReplicaSets (an existing one whose template matches gets the next revision,
  as on rollback) and pods are rolled and its status catches up, so rollout status
  can be verified; deleted controller-owned pods are recreated the same way;
- ``fail(...)`` answers chosen requests with an error, before or after applying them.

Seed helpers build realistic objects (a Deployment with a selector, ReplicaSets with
revision, change-cause and pod-template-hash, pods with container statuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gzip
import hashlib
import importlib.resources
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import aiohttp.web
import attrs
import jsonpatch
import kmock

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
REPLICASETS = kmock.resource("apps", "v1", "replicasets")
STATEFULSETS = kmock.resource("apps", "v1", "statefulsets")
DAEMONSETS = kmock.resource("apps", "v1", "daemonsets")
PODS = kmock.resource("", "v1", "pods")
EVENTS = kmock.resource("", "v1", "events")
HPAS = kmock.resource("autoscaling", "v2", "horizontalpodautoscalers")

REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
HASH = "pod-template-hash"
_KINDS = {
    DEPLOYMENTS: ("apps/v1", "Deployment"),
    REPLICASETS: ("apps/v1", "ReplicaSet"),
    STATEFULSETS: ("apps/v1", "StatefulSet"),
    DAEMONSETS: ("apps/v1", "DaemonSet"),
    PODS: ("v1", "Pod"),
    EVENTS: ("v1", "Event"),
    HPAS: ("autoscaling/v2", "HorizontalPodAutoscaler"),
}
_SKIP_TO_RS = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
}
_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # strconv.ParseBool
VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-kmock",
    "platform": "linux/amd64",
}


def now() -> datetime:
    return datetime.now(UTC)


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable pod-template-hash for a template (without its own hash label)."""
    clean = without_hash(template)
    digest = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()
    return "".join(c for c in digest if c in "bcdfghjklmnpqrstvwxz2456789")[:10]


def without_hash(template: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(template))
    out.get("metadata", {}).get("labels", {}).pop(HASH, None)
    return out


def dig(obj: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, Mapping) or obj.get(key) is None:
            return default
        obj = obj[key]
    return obj


# ----------------------------------------------------------------- selectors

_SET_OP = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def label_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (equality- and set-based)."""
    return all(_term_matches(term, labels) for term in _split_selector(selector))


def _term_matches(term: str, labels: Mapping[str, str]) -> bool:
    found = _SET_OP.match(term)
    if found:
        key, op, values = found.groups()
        allowed = {v.strip() for v in values.split(",") if v.strip()}
        return (op == "in") == (labels.get(key) in allowed)
    if "!=" in term:
        key, value = (s.strip() for s in term.split("!=", 1))
        return labels.get(key) != value
    if "=" in term:
        key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
        return labels.get(key) == value
    if term.startswith("!"):
        return term[1:].strip() not in labels
    return term in labels


def field_matches(selector: str, obj: Mapping[str, Any]) -> bool:
    """Field selectors: comma-separated ``a.b=v`` / ``a.b!=v`` on dotted paths."""
    for term in _split_selector(selector):
        negate = "!=" in term
        path, value = (s.strip() for s in re.split(r"!=|==|=", term, maxsplit=1))
        actual = dig(obj, *path.split("."))
        if (str(actual) == value if actual is not None else value == "") == negate:
            return False
    return True


# ----------------------------------------------------------------- patches


def merge_patch(base: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386 merge; with ``strategic``, lists of named objects merge by name."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge_patch(out.get(key), value, strategic=strategic)
        elif strategic and _named(value) and _named(out.get(key)):
            merged = [copy.deepcopy(i) for i in out[key]]
            for item in value:
                index = next(
                    (n for n, m in enumerate(merged) if m["name"] == item["name"]), None
                )
                if index is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[index] = merge_patch(merged[index], item, strategic=True)
            out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


def _named(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(i, dict) and "name" in i for i in value
    )


# ----------------------------------------------------------------- the emulator


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    apply: bool
    before: Callable[[Cluster], None] | None = None


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    """kmock's emulator with the gaps above filled; see the module docstring."""

    settle_after: float = 0.0
    logs: dict[tuple[str, str, str], str] = attrs.field(factory=dict)
    previous_logs: dict[tuple[str, str, str], str] = attrs.field(factory=dict)
    recreate_pods: bool = True
    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(1000), init=False)
    _pending: dict[tuple[Any, str, str], float] = attrs.field(factory=dict, init=False)
    _new_pods: dict[tuple[str, str], float] = attrs.field(factory=dict, init=False)
    _pod_serial: Iterator[int] = attrs.field(factory=itertools.count, init=False)
    _deleted_pods: list[dict[str, Any]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # load_bundled() in 0.8 uses importlib.resources.read_binary, deprecated.
        bundle = importlib.resources.files("kmock._internal") / "resources.json.gz"
        self.resources.load_data(gzip.decompress(bundle.read_bytes()))

    # ------------------------------------------------------------- test API

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        *,
        times: int = 1,
        apply: bool = False,
        before: Callable[[Cluster], None] | None = None,
    ) -> None:
        """Answer the next ``times`` requests to ``path`` (a regex) with ``status``.

        With ``apply``, the request takes effect first and only its answer is lost;
        ``before`` runs first (e.g. another client changing the object meanwhile).
        """
        self._faults.append(
            Fault(method.upper(), re.compile(path), status, times, apply, before)
        )

    def before(
        self, method: str, path: str, hook: Callable[[Cluster], None], *, times: int = 1
    ) -> None:
        """Run ``hook`` before serving the next ``times`` matching requests."""
        self._faults.append(
            Fault(method.upper(), re.compile(path), 0, times, apply=True, before=hook)
        )

    def seen(self, method: str, path: str = "") -> list[Any]:
        """Requests received with ``method`` whose path matches ``path`` (a regex)."""
        pattern = re.compile(path)
        return [
            r
            for r in self
            if r.method.value == method.upper() and pattern.search(r.url.path)
        ]

    def put(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as the API server would (uid, resourceVersion, ...)."""
        resource = _resource_of(obj)
        stored = copy.deepcopy(dict(obj))
        meta = stored.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", stamp(now()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[resource, meta.get("namespace"), meta["name"]] = stored
        return stored

    def get(self, resource: Any, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object, or None when it does not exist (or was deleted)."""
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def items(
        self, resource: Any, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        """Live objects of ``resource`` (in ``namespace``)."""
        return [
            copy.deepcopy(obj.raw)
            for (res, ns, _), obj in self.objects.items()
            if res == resource and (namespace is None or ns == namespace)
            if not obj.deleted
        ]

    def settle(self) -> None:
        """Let the controller simulation finish everything that is due."""
        self._settle(force=True)

    # ------------------------------------------------------------- serving

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        self._settle()
        try:
            return await self._faulty(request)
        except ApiError as exc:
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "metadata": {},
                    "status": "Failure",
                    "code": exc.status,
                    "reason": exc.reason,
                    "message": exc.message,
                },
                status=exc.status,
            )

    async def _faulty(self, request: Any) -> aiohttp.web.StreamResponse:
        """Serve ``request``, unless an injected fault answers instead (or after)."""
        fault = self._take_fault(request)
        if fault is not None and fault.before is not None:
            fault.before(self)
        if fault is None or not fault.status:
            return await self._serve(request)
        if fault.apply:
            await self._serve(request)
        raise ApiError(fault.status, "Injected", f"injected HTTP {fault.status}")

    async def _serve(self, request: Any) -> aiohttp.web.StreamResponse:  # noqa: PLR0911
        method = request.method.value
        if method == "GET" and request.url.path.rstrip("/") == "/version":
            return aiohttp.web.json_response(VERSION)
        if request.resource is None or request.name is None:
            return await super()._handle(request)
        if request.subresource == "log" and method == "GET":
            return self._serve_log(request)
        if request.subresource == "scale":
            return await self._serve_scale(request)
        if request.subresource is None and method == "PATCH":
            return aiohttp.web.json_response(await self._serve_patch(request))
        if request.subresource is None and method == "DELETE":
            self._check_delete(request)
            response = await super()._handle(request)
            self._after_delete(request)
            return response
        return await super()._handle(request)

    async def _serve_list(self, request: Any) -> Any:
        body = await super()._serve_list(request)
        items = body["items"]
        labels = request.params.get("labelSelector")
        if labels:
            items = [
                i
                for i in items
                if label_matches(labels, dig(i, "metadata", "labels", default={}))
            ]
        fields = request.params.get("fieldSelector")
        if fields:
            items = [i for i in items if field_matches(fields, i)]
        items.sort(
            key=lambda i: (
                dig(i, "metadata", "namespace") or "",
                dig(i, "metadata", "name"),
            )
        )
        limit = int(request.params.get("limit") or 0)
        start = int(request.params.get("continue") or 0)
        items = items[start:]
        meta: dict[str, Any] = {"resourceVersion": str(next(self._rv))}
        if limit and len(items) > limit:
            # The continue token is an offset into the (sorted) result.
            meta["continue"] = str(start + limit)
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        version, kind = _KINDS.get(request.resource, ("v1", "List"))
        return {
            "apiVersion": version,
            "kind": f"{kind}List",
            "metadata": meta,
            "items": items,
        }

    def _take_fault(self, request: Any) -> Fault | None:
        for fault in self._faults:
            if (
                fault.times > 0
                and fault.method == request.method.value
                and fault.path.search(request.url.path)
            ):
                fault.times -= 1
                return fault
        return None

    def _stored(self, request: Any) -> Any:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            kind = _KINDS.get(request.resource, ("", request.resource.plural))[1]
            raise ApiError(
                404, "NotFound", f'{kind.lower()}s "{request.name}" not found'
            )
        return self.objects[key]

    def _apply_patch(self, request: Any, current: dict[str, Any]) -> dict[str, Any]:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        patch = request.data
        if ctype == "application/json-patch+json":
            try:
                return jsonpatch.apply_patch(current, patch)  # type: ignore[no-any-return]
            except (
                jsonpatch.JsonPatchException,
                jsonpatch.JsonPointerException,
            ) as exc:
                raise ApiError(422, "Invalid", f"the JSON patch failed: {exc}") from exc
        if ctype == "application/merge-patch+json":
            return merge_patch(current, patch)  # type: ignore[no-any-return]
        if ctype == "application/strategic-merge-patch+json":
            return merge_patch(current, patch, strategic=True)  # type: ignore[no-any-return]
        raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")

    def _commit(
        self, resource: Any, obj: Any, old: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        """Store a write: rv precondition, new rv, generation, the controller."""
        old_meta, meta = old["metadata"], new.setdefault("metadata", {})
        wanted = meta.get("resourceVersion")
        if wanted and wanted != old_meta.get("resourceVersion"):
            kind = _KINDS.get(resource, ("", "object"))[1]
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {kind.lower()}s "
                f'"{old_meta["name"]}": '
                "the object has been modified; please apply your changes to the latest "
                "version and try again",
            )
        for kept in ("uid", "name", "namespace", "creationTimestamp"):
            meta[kept] = old_meta.get(kept)
        meta["resourceVersion"] = str(next(self._rv))
        if new.get("spec") != old.get("spec"):
            meta["generation"] = int(old_meta.get("generation") or 1) + 1
            if resource in (DEPLOYMENTS, STATEFULSETS, DAEMONSETS):
                self._pending[resource, meta["namespace"], meta["name"]] = (
                    time.monotonic() + self.settle_after
                )
        obj.history.append(new)
        return new

    async def _serve_patch(self, request: Any) -> dict[str, Any]:
        async with self._lock:
            obj = self._stored(request)
            old = copy.deepcopy(obj.raw)
            new = self._apply_patch(request, copy.deepcopy(old))
            return self._commit(request.resource, obj, old, new)

    async def _serve_scale(self, request: Any) -> aiohttp.web.StreamResponse:
        async with self._lock:
            obj = self._stored(request)
            old = copy.deepcopy(obj.raw)
            scale = _scale_of(old)
            if request.method.value == "PATCH":
                patched = self._apply_patch(request, copy.deepcopy(scale))
                new = copy.deepcopy(old)
                new["spec"]["replicas"] = dig(patched, "spec", "replicas")
                new["metadata"]["resourceVersion"] = dig(
                    patched, "metadata", "resourceVersion"
                )
                scale = _scale_of(self._commit(request.resource, obj, old, new))
            elif request.method.value != "GET":
                raise ApiError(405, "MethodNotAllowed", "scale supports GET and PATCH")
        return aiohttp.web.json_response(scale)

    def _serve_log(self, request: Any) -> aiohttp.web.StreamResponse:
        pod = self._stored(request).raw
        names = [c["name"] for c in dig(pod, "spec", "containers", default=[])]
        container = request.params.get("container")
        if container is None:
            if len(names) != 1:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"a container name must be specified for pod {request.name}, "
                    f"choose one of: {names}",
                )
            container = names[0]
        key = (request.namespace, request.name, container)
        if request.params.get("previous") in _GO_TRUE:
            if key not in self.previous_logs:
                raise ApiError(
                    400,
                    "BadRequest",
                    f'previous terminated container "{container}" in pod '
                    f'"{request.name}" not found',
                )
            text = self.previous_logs[key]
        else:
            text = self.logs.get(key, "")
        lines = text.splitlines(keepends=True)
        if "tailLines" in request.params:
            lines = (
                lines[-int(request.params["tailLines"]) :]
                if int(request.params["tailLines"])
                else []
            )
        body = "".join(lines).encode()
        if "limitBytes" in request.params:
            body = body[: int(request.params["limitBytes"])]
        return aiohttp.web.Response(body=body, content_type="text/plain")

    def _check_delete(self, request: Any) -> None:
        obj = self._stored(request)
        want = dig(request.data, "preconditions", "uid")
        if want and want != dig(obj.raw, "metadata", "uid"):
            raise ApiError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {want}, UID in object "
                f"meta: {dig(obj.raw, 'metadata', 'uid')}",
            )

    def _after_delete(self, request: Any) -> None:
        if request.resource != PODS or not self.recreate_pods:
            return
        self._new_pods[request.namespace, request.name] = (
            time.monotonic() + self.settle_after
        )
        self._deleted_pods.append(
            copy.deepcopy(self.objects[PODS, request.namespace, request.name].last.raw)
        )

    # ------------------------------------------------------------- controller

    def _settle(self, *, force: bool = False) -> None:
        clock = time.monotonic()
        for key, due in list(self._pending.items()):
            if force or due <= clock:
                del self._pending[key]
                resource, namespace, name = key
                if resource == DEPLOYMENTS:
                    self._roll_deployment(namespace, name)
                else:
                    self._roll_other(resource, namespace, name)
        keep = []
        for pod in self._deleted_pods:
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            due = self._new_pods.get(key, 0.0)
            if force or due <= clock:
                self._new_pods.pop(key, None)
                self._replace_pod(pod)
            else:
                keep.append(pod)
        self._deleted_pods = keep

    def _replace_pod(self, pod: dict[str, Any]) -> None:
        owner = next(
            (
                r
                for r in dig(pod, "metadata", "ownerReferences", default=[])
                if r.get("controller")
            ),
            None,
        )
        if owner is None or owner.get("kind") not in ("ReplicaSet", "StatefulSet"):
            return
        fresh = copy.deepcopy(pod)
        meta = fresh["metadata"]
        if owner["kind"] == "ReplicaSet":
            meta["name"] = f"{owner['name']}-{_suffix(next(self._pod_serial))}"
        for field in (
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
        ):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        fresh["status"] = _running_status(fresh, restarts=0)
        if (PODS, meta["namespace"], meta["name"]) in self.objects:
            del self.objects[PODS, meta["namespace"], meta["name"]]
        self.put(fresh)

    def _roll_deployment(self, namespace: str, name: str) -> None:
        dep = self.get(DEPLOYMENTS, namespace, name)
        if dep is None:
            return
        uid = dep["metadata"]["uid"]
        owned = [
            rs
            for rs in self.items(REPLICASETS, namespace)
            if any(
                r.get("uid") == uid and r.get("controller")
                for r in dig(rs, "metadata", "ownerReferences", default=[])
            )
        ]
        template = dep["spec"]["template"]
        top = max((_revision(rs) for rs in owned), default=0)
        current = next(
            (
                rs
                for rs in owned
                if without_hash(rs["spec"]["template"]) == without_hash(template)
            ),
            None,
        )
        replicas = int(dep["spec"].get("replicas", 1))
        annotations = {
            k: v
            for k, v in dig(dep, "metadata", "annotations", default={}).items()
            if k not in _SKIP_TO_RS
        }
        if current is None:
            current = replica_set(
                dep,
                template=template,
                revision=top + 1,
                replicas=replicas,
                created=now(),
            )
            current["metadata"]["annotations"].update(annotations)
            current = self.put(current)
        elif _revision(current) != top:
            # A rollback: the old ReplicaSet becomes the newest revision again.
            current["metadata"]["annotations"].update(annotations)
            current["metadata"]["annotations"][REVISION] = str(top + 1)
        new_revision = _revision(current)
        for rs in owned:
            if rs["metadata"]["name"] == current["metadata"]["name"]:
                continue
            rs["spec"]["replicas"] = 0
            rs["status"] = {
                "replicas": 0,
                "observedGeneration": rs["metadata"].get("generation", 1),
            }
            self._rewrite(REPLICASETS, rs)
            for pod in self._pods_of(namespace, rs):
                self.objects[PODS, namespace, pod["metadata"]["name"]].delete()
        current["spec"]["replicas"] = replicas
        current["status"] = {
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "fullyLabeledReplicas": replicas,
            "observedGeneration": current["metadata"].get("generation", 1),
        }
        self._rewrite(REPLICASETS, current)
        pods = self._pods_of(namespace, current)
        for extra in pods[replicas:]:
            self.objects[PODS, namespace, extra["metadata"]["name"]].delete()
        for _ in range(len(pods), replicas):
            self.put(
                pod_of(
                    current,
                    f"{current['metadata']['name']}-{_suffix(next(self._pod_serial))}",
                )
            )
        dep["metadata"].setdefault("annotations", {})[REVISION] = str(new_revision)
        dep["status"] = deployment_status(dep, replicas)
        self._rewrite(DEPLOYMENTS, dep)

    def _roll_other(self, resource: Any, namespace: str, name: str) -> None:
        obj = self.get(resource, namespace, name)
        if obj is None:
            return
        status = obj.setdefault("status", {})
        status["observedGeneration"] = obj["metadata"]["generation"]
        if resource == STATEFULSETS:
            replicas = int(obj["spec"].get("replicas", 1))
            revision = f"{name}-{template_hash(obj['spec']['template'])}"
            status.update(
                replicas=replicas,
                readyReplicas=replicas,
                availableReplicas=replicas,
                updatedReplicas=replicas,
                currentReplicas=replicas,
                currentRevision=revision,
                updateRevision=revision,
            )
        else:
            desired = int(status.get("desiredNumberScheduled") or 0)
            status.update(
                updatedNumberScheduled=desired,
                numberAvailable=desired,
                numberReady=desired,
            )
        self._rewrite(resource, obj)

    def _pods_of(
        self, namespace: str, owner: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        uid = owner["metadata"]["uid"]
        return [
            p
            for p in self.items(PODS, namespace)
            if any(
                r.get("uid") == uid
                for r in dig(p, "metadata", "ownerReferences", default=[])
            )
        ]

    def _rewrite(self, resource: Any, obj: dict[str, Any]) -> None:
        """A controller's write: new resourceVersion, no generation change."""
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        meta = obj["metadata"]
        self.objects[resource, meta["namespace"], meta["name"]].history.append(obj)


def _suffix(serial: int) -> str:
    return hashlib.sha256(str(serial).encode()).hexdigest()[:5]


def _revision(obj: Mapping[str, Any]) -> int:
    return int(dig(obj, "metadata", "annotations", REVISION, default="0"))


def _resource_of(obj: Mapping[str, Any]) -> Any:
    for resource, (_, kind) in _KINDS.items():
        if kind == obj.get("kind"):
            return resource
    raise ValueError(f"unknown kind {obj.get('kind')!r}")


def _scale_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    selector = ",".join(
        f"{k}={v}"
        for k, v in sorted(
            dig(obj, "spec", "selector", "matchLabels", default={}).items()
        )
    )
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": dig(obj, "spec", "replicas", default=1)},
        "status": {
            "replicas": dig(obj, "status", "replicas", default=0),
            "selector": selector,
        },
    }


# ----------------------------------------------------------------- seeds


def container(
    name: str = "app", image: str = "ghcr.io/example/sark:2.0", memory: str = "512Mi"
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": "LOG_LEVEL", "value": "info"}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": memory},
        },
    }


def deployment(
    name: str,
    namespace: str,
    *,
    image: str,
    replicas: int = 3,
    paused: bool = False,
    annotations: Mapping[str, str] | None = None,
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A Deployment as the API returns it (selector, template, strategy)."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels),
            "annotations": dict(annotations or {}),
        },
        "spec": {
            "replicas": replicas,
            "paused": paused,
            "selector": {"matchLabels": dict(labels)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "containers": containers or [container(image=image)],
                    "restartPolicy": "Always",
                },
            },
        },
    }


def deployment_status(dep: Mapping[str, Any], ready: int) -> dict[str, Any]:
    replicas = int(dep["spec"].get("replicas", 1))
    return {
        "observedGeneration": dep["metadata"].get("generation", 1),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": replicas - ready,
        "conditions": [
            {
                "type": "Available",
                "status": "True" if ready >= replicas else "False",
                "reason": "MinimumReplicasAvailable"
                if ready >= replicas
                else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if ready >= replicas
                else "Deployment does not have minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{dep["metadata"]["name"]}" has successfully '
                "progressed.",
            },
        ],
    }


def replica_set(
    dep: Mapping[str, Any],
    *,
    template: Mapping[str, Any],
    revision: int,
    replicas: int,
    created: datetime,
    change_cause: str | None = None,
) -> dict[str, Any]:
    """A ReplicaSet the deployment controller would own for ``template``."""
    digest = template_hash(template)
    tpl = copy.deepcopy(dict(template))
    tpl.setdefault("metadata", {}).setdefault("labels", {})[HASH] = digest
    selector = copy.deepcopy(dep["spec"]["selector"])
    selector.setdefault("matchLabels", {})[HASH] = digest
    annotations = {
        REVISION: str(revision),
        "deployment.kubernetes.io/desired-replicas": str(
            dep["spec"].get("replicas", 1)
        ),
    }
    if change_cause:
        annotations[CHANGE_CAUSE] = change_cause
    name = dep["metadata"]["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{name}-{digest}",
            "namespace": dep["metadata"]["namespace"],
            "labels": dict(tpl["metadata"]["labels"]),
            "annotations": annotations,
            "creationTimestamp": stamp(created),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": name,
                    "uid": dep["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {"replicas": replicas, "selector": selector, "template": tpl},
        "status": {
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        },
    }


def _running_status(
    pod: Mapping[str, Any], *, restarts: int, ready: bool = True
) -> dict[str, Any]:
    started = stamp(now())
    return {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [
            {
                "name": c["name"],
                "image": c["image"],
                "ready": ready,
                "restartCount": restarts,
                "started": ready,
                "state": {"running": {"startedAt": started}},
            }
            for c in pod["spec"]["containers"]
        ],
        "startTime": started,
    }


def pod_of(
    owner: Mapping[str, Any],
    name: str,
    *,
    ready: bool = True,
    restarts: int = 0,
    waiting: str | None = None,
    last_exit: tuple[str, int] | None = None,
    node: str = "node-a",
    created: datetime | None = None,
) -> dict[str, Any]:
    """A pod of a ReplicaSet or StatefulSet (a bare pod when ``owner`` has no uid)."""
    tpl = owner["spec"]["template"]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": dict(dig(tpl, "metadata", "labels", default={})),
        "creationTimestamp": stamp(created or now()),
    }
    if owner["metadata"].get("uid"):
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {**copy.deepcopy(tpl["spec"]), "nodeName": node},
    }
    status = _running_status(pod, restarts=restarts, ready=ready)
    for c in status["containerStatuses"]:
        if waiting:
            c["state"] = {
                "waiting": {
                    "reason": waiting,
                    "message": f"back-off restarting failed container {c['name']}",
                }
            }
        if last_exit:
            c["lastState"] = {
                "terminated": {
                    "reason": last_exit[0],
                    "exitCode": last_exit[1],
                    "finishedAt": stamp(now() - timedelta(seconds=30)),
                }
            }
    pod["status"] = status
    return pod


@dataclass
class Rollout:
    """What ``seed_rollout`` created."""

    deployment: dict[str, Any]
    replica_sets: list[dict[str, Any]]
    pods: list[dict[str, Any]]


def seed_rollout(
    cluster: Cluster,
    namespace: str,
    name: str,
    revisions: list[tuple[str, timedelta, str | None]],
    *,
    replicas: int = 3,
    ready: int | None = None,
    paused: bool = False,
    crash: tuple[str, int] | None = None,
    at: datetime | None = None,
) -> Rollout:
    """A Deployment whose history is ``revisions`` (image, age, change-cause).

    The last revision is current: its ReplicaSet runs ``replicas`` pods, of which
    ``ready`` are ready (the others crash-loop with ``crash`` as last exit). Ages
    count back from ``at`` (default: now).
    """
    at = at or now()
    ready = replicas if ready is None else ready
    image, _, cause = revisions[-1]
    annotations = {REVISION: str(len(revisions))}
    if cause:
        annotations[CHANGE_CAUSE] = cause
    dep = cluster.put(
        deployment(
            name,
            namespace,
            image=image,
            replicas=replicas,
            paused=paused,
            annotations=annotations,
        )
    )
    dep["status"] = deployment_status(dep, ready)
    cluster.objects[DEPLOYMENTS, namespace, name]["status"] = dep["status"]
    sets = []
    for number, (rev_image, age, rev_cause) in enumerate(revisions, start=1):
        template = copy.deepcopy(dep["spec"]["template"])
        template["spec"]["containers"][0]["image"] = rev_image
        current = number == len(revisions)
        sets.append(
            cluster.put(
                replica_set(
                    dep,
                    template=template,
                    revision=number,
                    replicas=replicas if current else 0,
                    created=at - age,
                    change_cause=rev_cause,
                )
            )
        )
    pods = []
    for index in range(replicas):
        healthy = index < ready
        pods.append(
            cluster.put(
                pod_of(
                    sets[-1],
                    f"{sets[-1]['metadata']['name']}-{_suffix(next(cluster._pod_serial))}",
                    ready=healthy,
                    restarts=0 if healthy else 7,
                    waiting=None if healthy else "CrashLoopBackOff",
                    last_exit=None if healthy else crash,
                )
            )
        )
    return Rollout(dep, sets, pods)


def stateful_set(
    name: str,
    namespace: str,
    *,
    replicas: int = 1,
    image: str = "osixia/openldap:1.5.0",
) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": dict(labels)},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [container(name=name, image=image)]},
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": replicas,
            "currentReplicas": replicas,
            "updatedReplicas": replicas,
            "currentRevision": f"{name}-1",
            "updateRevision": f"{name}-1",
        },
    }


def hpa(
    name: str,
    namespace: str,
    target: str,
    *,
    low: int = 3,
    high: int = 10,
    current: int = 10,
    desired: int = 10,
) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": target,
            },
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
        "status": {
            "currentReplicas": current,
            "desiredReplicas": desired,
            "currentMetrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "current": {"averageUtilization": 93}},
                }
            ],
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale"},
                {
                    "type": "ScalingLimited",
                    "status": "True" if desired >= high else "False",
                    "reason": "TooManyReplicas"
                    if desired >= high
                    else "DesiredWithinRange",
                    "message": "the desired replica count is more than the maximum "
                    "replica count",
                },
            ],
        },
    }


def event(
    namespace: str,
    kind: str,
    name: str,
    reason: str,
    message: str,
    *,
    age: timedelta,
    type_: str = "Warning",
    count: int = 1,
    at: datetime | None = None,
) -> dict[str, Any]:
    when = stamp((at or now()) - age)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{name}.{_suffix(hash((kind, name, reason, message)))}",
            "namespace": namespace,
        },
        "involvedObject": {"kind": kind, "name": name, "namespace": namespace},
        "reason": reason,
        "message": message,
        "type": type_,
        "count": count,
        "firstTimestamp": when,
        "lastTimestamp": when,
        "source": {"component": "kubelet"},
    }


# ----------------------------------------------------------------- serving


@contextlib.asynccontextmanager
async def serve(cluster: Cluster) -> Any:
    """Serve ``cluster`` on a loopback port; yield its base URL."""
    async with cluster, kmock.Server(cluster, host="127.0.0.1") as server:
        yield str(server.url).rstrip("/")


class ThreadedCluster:
    """``cluster`` served from a thread's event loop, for tests that block.

    Read or change its state only through ``call``, which runs in that loop.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="kmock", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self.cluster) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[[Cluster], Any]) -> Any:
        """Run ``fn(cluster)`` in the server's loop and return its result."""

        async def run() -> Any:
            return fn(self.cluster)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("kmock did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
