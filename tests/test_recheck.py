"""A crash mid-remediation is re-checked against its recorded intent, per step type.

Every remediation type runs through a real ``Runner`` and ``GuardKeeper`` on a
real SQLite store, against kmock (Kubernetes), a throwaway redis-server or a
recording HTTP server. The first incarnation ("dead") is stopped at a chosen
point, deterministically: its task is cancelled right after the run-once key
was marked ``sending`` (the action never left) or right after the action
(it took effect, its outcome never recorded), as a kill -9 there would leave
it. A new incarnation then recovers the store and decides the same occurrence:
each case asserts the decision, its reason and that the target saw the action
exactly once (or not at all, where that cannot be told).
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
from counting import CountingServer
from kube import (
    DEPLOYMENTS,
    HPAS,
    Cluster,
    hpa,
    seed_rollout,
    serve,
)
from peers import run_redis

from receiver.engine.guards import GuardDefaults, GuardKeeper, idempotency_key
from receiver.engine.planner import Plan, PlanContext, plan
from receiver.engine.runner import Runner
from receiver.model import (
    Alert,
    Intent,
    RecheckResult,
    StepKind,
    StepResult,
    StepTrace,
    freeze,
)
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.steps.http import HttpExecutor
from receiver.steps.k8s import KubernetesExecutor
from receiver.steps.kube_client import KubeConnection, new_api_client
from receiver.steps.redis import RedisExecutor
from receiver.store import SqliteStore
from receiver.store.base import AlertState, JournalEntry, Store
from receiver.store.redis import RedisStore

STEP_TYPES = builtin_registry().steps

NS = "production"
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
HISTORY = [
    ("ghcr.io/example/sark:1.8", timedelta(days=9), "deploy 1.8"),
    ("ghcr.io/example/sark:1.9", timedelta(days=3), "deploy 1.9"),
    ("ghcr.io/example/sark:2.0", timedelta(minutes=10), "deploy 2.0"),
]
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
STEPS = {
    "undo": "{type: k8s.rollout_undo, namespace: production, deployment: sark}",
    "restart": "{type: k8s.rollout_restart, namespace: production, workload: sark}",
    "scale": "{type: k8s.scale, namespace: production, workload: sark, "
    "replicas: '+2', max: 10}",
    "hpa": "{type: k8s.patch_hpa, namespace: production, hpa: sark-hpa, "
    "max_replicas: '+5', cap: 20}",
    "memory": "{type: k8s.set_memory_limit, namespace: production, workload: sark, "
    "container: app, memory: 1Gi, cap: 2Gi}",
    "delete_pod": "{type: k8s.delete_pod, namespace: production, selector: app=sark, "
    "max_pods: 1, min_ready: 0}",
    "delete_keys": "{type: redis.delete_keys, redis: app, keys: [cache:a, cache:b]}",
    "delete_pattern": "{type: redis.delete_pattern, redis: app, pattern: 'cache:*'}",
    "breaker": "{type: redis.reset_circuit_breaker, redis: app, breaker: siem}",
    "http": "{type: http.request, url: 'HOOK/run'}",
}


class Clock:
    """Advances a millisecond on every reading; ``advance`` moves it further."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _rules(kind: str, hook: str) -> str:
    step = STEPS[kind].replace("HOOK", hook)
    return textwrap.dedent(
        f"""
        playbooks:
          fix:
            remediation:
              - {step}
            guards:
              cooldown: 0s
              budget: {{max: 100, window: 1h}}
        rules:
          - {{name: fix, match: ['alertname="Crash"'], playbook: fix}}
        """
    )


ALERT = Alert(
    source="alertmanager",
    fingerprint="00000000000000ab",
    status="firing",
    labels=freeze({"alertname": "Crash"}),
    starts_at=datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
)


class Killed(Exception):  # noqa: N818 (marks where the test stopped the run)
    """Never raised: the run is cancelled where a kill -9 would stop it."""


@dataclass
class Crashing:
    """A real executor whose ``apply`` is stopped before or after it acts."""

    inner: Any
    after: bool
    applied: list[Intent] = field(default_factory=list)

    async def run(self, step: Any, alert: Alert) -> StepResult:
        return await self.inner.run(step, alert)

    async def verify(self, check: Any, step: Any, alert: Alert) -> StepResult:
        return await self.inner.verify(check, step, alert)

    async def prepare(self, step: Any, alert: Alert) -> Intent | StepResult | None:
        return await self.inner.prepare(step, alert)

    async def apply(self, step: Any, alert: Alert, intent: Intent) -> StepResult:
        if self.after:
            await self.inner.apply(step, alert, intent)
            self.applied.append(intent)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the process dies here: nothing after this is recorded
        await asyncio.sleep(0)
        raise Killed

    async def recheck(self, step: Any, alert: Alert, intent: Intent) -> RecheckResult:
        return await self.inner.recheck(step, alert, intent)


@dataclass
class Target:
    """What one step type acts on, and how the test reads what it saw."""

    family: str
    executor: Any
    hook: str = ""
    actions: Callable[[], int] = lambda: 0
    state: Callable[[], Any] = lambda: None


def _plan(rules: Path) -> Plan:
    return plan(
        ALERT,
        load_rulebook([rules], steps=builtin_registry()),
        T0,
        PlanContext(execute=True, namespaces=(NS,)),
    )


async def _crash_then_recover(
    tmp_path: Path,
    kind: str,
    target: Target,
    *,
    after: bool,
    store: Store | None = None,
    retired: bool = False,
) -> tuple[StepTrace, Crashing, Store]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules(kind, target.hook))
    clock = Clock()
    store = store or SqliteStore(str(tmp_path / "state.db"))
    await store.register("dead", clock(), timedelta(seconds=30))
    crashing = Crashing(target.executor, after=after)
    dead = Runner(
        {target.family: crashing},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "dead", GuardDefaults()),
    )
    first = await _approved(dead, store, rules, clock)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(crashing.applied) == int(after)
    if retired:
        # A clean stop that cancelled the step mid-send: it says it stopped.
        await store.retire("dead", clock())
    # kill -9: "dead" stops saying it is alive; a new incarnation recovers.
    clock.advance(timedelta(minutes=5))
    await store.register("restarted", clock(), timedelta(hours=1))
    await store.recover("restarted", clock())
    restarted = Runner(
        {target.family: target.executor},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "restarted", GuardDefaults()),
    )
    trace = await restarted.run(_plan(rules))
    (step,) = trace.matches[0].steps
    return step, crashing, store


async def _approved(
    runner: Runner, store: Store, rules: Path, clock: Clock
) -> asyncio.Task[Any]:
    """Start the run; a step that needs a human's approval gets it first."""
    task = asyncio.create_task(runner.run(_plan(rules)))
    await asyncio.wait([task])
    if task.cancelled():
        return task
    (step,) = task.result().matches[0].steps
    assert step.decision.value == "awaiting_approval", step.reason
    (pending,) = await store.approvals("pending")
    await store.decide_approval(pending.id, "approved", "alice", clock())
    return asyncio.create_task(runner.run(_plan(rules)))


# ----------------------------------------------------------------- targets


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Cluster, KubernetesExecutor]]:
    kube = Cluster()
    async with serve(kube) as url:

        async def factory() -> Any:
            return await new_api_client(KubeConnection(mode="host", host=url))

        executor = KubernetesExecutor(factory, poll_interval=0.02, backoff=0.001)
        yield kube, executor
        await executor.aclose()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[tuple[Any, RedisExecutor]]:
    admin = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    await admin.execute_command("FLUSHDB")  # the test's own reset, not a step's
    executor = RedisExecutor({"app": redis_url}, timeout=2.0)
    yield admin, executor
    await executor.aclose()
    await admin.aclose()


def _dep(kube: Cluster) -> dict[str, Any]:
    found = kube.get(DEPLOYMENTS, NS, "sark")
    assert found is not None
    return found


def _images(kube: Cluster) -> list[str]:
    return [c["image"] for c in _dep(kube)["spec"]["template"]["spec"]["containers"]]


K8S = {
    # kind: (what the target shows after exactly one run, took-effect, not-yet)
    "undo": (
        _images,
        ["ghcr.io/example/sark:1.9"],
        "runs the template of revision 2",
        "still runs the template of revision 3",
    ),
    "restart": (
        lambda k: (
            RESTARTED_AT
            in _dep(k)["spec"]["template"]["metadata"].get("annotations", {})
        ),
        True,
        "deployment/sark -n production has restartedAt ",
        "still has restartedAt (unset)",
    ),
    "scale": (
        lambda k: _dep(k)["spec"]["replicas"],
        5,
        "replicas is 5 (intended 5)",
        "replicas is still 3, the value it was read at (intended 5)",
    ),
    "hpa": (
        lambda k: (k.get(HPAS, NS, "sark-hpa") or {})["spec"]["maxReplicas"],
        15,
        "maxReplicas of hpa/sark-hpa is 15 (intended 15)",
        "maxReplicas of hpa/sark-hpa is still 10",
    ),
    "memory": (
        lambda k: _dep(k)["spec"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ]["memory"],
        "1Gi",
        "is 1Gi (intended 1Gi)",
        "is 512Mi, as before (intended 1Gi)",
    ),
    "delete_pod": (
        lambda k: len(k.seen("DELETE")),
        1,
        "pods deleted (sark-",
        "no pod of the delete is gone (sark-",
    ),
}


def _writes(kube: Cluster) -> int:
    return len(kube.seen("PATCH")) + len(kube.seen("DELETE"))


@pytest.fixture(params=["sqlite", "redis"])
async def state(request, tmp_path, redis_url) -> AsyncIterator[Store]:
    """A store of each kind (Redis: a key prefix of its own)."""
    if request.param == "sqlite":
        store: Store = SqliteStore(str(tmp_path / "state.db"))
    else:
        store = RedisStore(redis_url, prefix=f"recheck-{uuid.uuid4().hex[:12]}")
    yield store
    await store.close()


@pytest.mark.parametrize("after", [True, False], ids=["took-effect", "not-sent"])
@pytest.mark.parametrize("kind", sorted(K8S))
async def test_a_kubernetes_remediation_interrupted_by_a_crash_runs_once(
    tmp_path, cluster, state, kind, after
):
    """k8s: took effect -> recovered, not re-run; target as before -> run once now.

    "Run once now" needs the crashed holder known to have stopped: SQLite's
    single instance declares it on start. On Redis a holder whose heartbeat
    lapsed may be a stalled replica still sending: see the next test.
    """
    kube, executor = cluster
    seed_rollout(kube, NS, "sark", HISTORY, replicas=3)
    kube.put(hpa("sark-hpa", NS, "sark", high=10))
    read, once, took, not_yet = K8S[kind]
    target = Target("k8s", executor)
    # Redis: the holder said it stopped (a clean stop cancelled it mid-send).
    retired = isinstance(state, RedisStore)
    step, _crashing, _store = await _crash_then_recover(
        tmp_path, kind, target, after=after, store=state, retired=retired
    )
    assert step.decision.value == "executed", step.reason
    if after:
        assert step.reason.startswith("executed, recovered after a crash of dead: ")
        assert took in step.reason
    else:
        assert "interrupted by a crash before it took effect (" in step.reason
        assert not_yet in step.reason, step.reason
        assert step.reason.endswith("; run once now)")
    assert read(kube) == once, "the action reached the target exactly once"
    assert _writes(kube) == 1


@pytest.mark.parametrize("kind", sorted(K8S))
async def test_a_silent_replicas_unfinished_send_is_rechecked_never_re_run(
    tmp_path, cluster, redis_url, kind
):
    """Redis: a holder whose heartbeat lapsed is not known to have stopped.

    It may be a live replica stalled mid-send: its action that has not taken
    effect yet is failed with that reason, never sent a second time.
    """
    kube, executor = cluster
    seed_rollout(kube, NS, "sark", HISTORY, replicas=3)
    kube.put(hpa("sark-hpa", NS, "sark", high=10))
    read, _once, _took, not_yet = K8S[kind]
    before = read(kube)
    store = RedisStore(redis_url, prefix=f"silent-{uuid.uuid4().hex[:12]}")
    try:
        step, _crashing, _store = await _crash_then_recover(
            tmp_path, kind, Target("k8s", executor), after=False, store=store
        )
    finally:
        await store.close()
    assert step.decision.value == "failed", step.reason
    assert step.reason.startswith("failed, the attempt by dead had not taken effect (")
    assert not_yet in step.reason
    assert "not run again (at most once): dead stopped renewing its heartbeat" in (
        step.reason
    )
    assert read(kube) == before, "the target was left alone"
    assert _writes(kube) == 0


async def test_a_rollback_changed_by_someone_else_since_is_unknown(tmp_path, cluster):
    """A deploy between the crash and the recovery: unknown, failed, not re-run."""
    kube, executor = cluster
    seed_rollout(kube, NS, "sark", HISTORY, replicas=3)
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules("undo", ""))
    clock = Clock()
    store = SqliteStore(str(tmp_path / "state.db"))
    dead = Runner(
        {"k8s": Crashing(executor, after=False)},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "dead", GuardDefaults()),
    )
    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(dead.run(_plan(rules)))
    obj = kube.objects[DEPLOYMENTS, NS, "sark"]
    obj.patch(
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": "app", "image": "x:3"}]}}
            }
        }
    )
    await store.recover("restarted", clock())
    restarted = Runner(
        {"k8s": executor},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "restarted", GuardDefaults()),
    )
    (step,) = (await restarted.run(_plan(rules))).matches[0].steps
    assert step.decision.value == "failed"
    assert "unknown whether it took effect (deployment/sark -n production runs " in (
        step.reason
    )
    assert "changed by someone else since" in step.reason
    assert not kube.seen("PATCH")
    await store.close()


# ----------------------------------------------------------------- redis


async def _seed_cache(admin: Any) -> None:
    await admin.set("cache:a", "1")
    await admin.set("cache:b", "2")
    await admin.set("circuit:siem:state", "open")
    await admin.set("circuit:siem:failure", "7")
    await admin.set("keep", "me")


REDIS = {
    "delete_keys": (
        ["cache:a", "cache:b"],
        "the keys are absent (cache:a, cache:b)",
        "the keys still hold the values they held before (cache:a, cache:b)",
    ),
    "delete_pattern": (
        ["cache:a", "cache:b"],
        "no key matches cache:*",
        "keys matching cache:* still hold the values they held before",
    ),
    "breaker": (
        ["circuit:siem:state", "circuit:siem:failure"],
        "the keys are absent (circuit:siem:state, circuit:siem:failure)",
        "the keys still hold the values they held before (circuit:siem:state",
    ),
}


@pytest.mark.parametrize("after", [True, False], ids=["took-effect", "not-sent"])
@pytest.mark.parametrize("kind", sorted(REDIS))
async def test_a_redis_remediation_interrupted_by_a_crash_runs_once(
    tmp_path, cache, kind, after
):
    """redis: keys gone -> recovered; keys as they were -> deleted once now."""
    admin, executor = cache
    await _seed_cache(admin)
    keys, took, not_yet = REDIS[kind]
    step, _crashing, store = await _crash_then_recover(
        tmp_path, kind, Target("redis", executor), after=after
    )
    assert step.decision.value == "executed", step.reason
    if after:
        assert (
            step.reason
            == f"executed, recovered after a crash of dead: redis app: {took}"
        )
    else:
        assert f"before it took effect (redis app: {not_yet}" in step.reason
        assert step.reason.endswith("; run once now)")
    assert await admin.exists(*keys) == 0
    assert await admin.get("keep") == "me"
    await store.close()


async def test_redis_keys_written_again_since_the_crash_are_unknown(tmp_path, cache):
    """A breaker that tripped again after the crash is not reset a second time."""
    admin, executor = cache
    await _seed_cache(admin)
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules("breaker", ""))
    clock = Clock()
    store = SqliteStore(str(tmp_path / "state.db"))
    dead = Runner(
        {"redis": Crashing(executor, after=True)},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "dead", GuardDefaults()),
    )
    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(dead.run(_plan(rules)))
    await admin.set("circuit:siem:state", "open")  # tripped again since
    await store.recover("restarted", clock())
    restarted = Runner(
        {"redis": executor},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "restarted", GuardDefaults()),
    )
    (step,) = (await restarted.run(_plan(rules))).matches[0].steps
    assert step.decision.value == "failed"
    assert "unknown whether it took effect (redis app: the keys changed since" in (
        step.reason
    )
    assert await admin.get("circuit:siem:state") == "open"
    await store.close()


# ----------------------------------------------------------------- http


@pytest.mark.parametrize("after", [True, False], ids=["took-effect", "not-sent"])
async def test_an_http_request_interrupted_by_a_crash_is_never_sent_again(
    tmp_path, after
):
    """http.request without a verify: unknown whether it took effect, not re-sent."""
    with CountingServer() as hook:
        client = httpx.AsyncClient(timeout=5)
        executor = HttpExecutor(client, [f"127.0.0.1:{hook.port}"])
        target = Target("http", executor, hook=hook.url)
        step, _crashing, store = await _crash_then_recover(
            tmp_path, "http", target, after=after
        )
        await client.aclose()
        hits = hook.snapshot()
    assert step.decision.value == "failed"
    assert step.reason.startswith(
        "failed, interrupted by a crash of dead after the action was sent; unknown "
        f"whether it took effect (POST {hook.url}/run is not idempotent"
    )
    assert "declare a verify" in step.reason
    assert hits["/run"] == int(after), "sent at most once"
    await store.close()


def test_every_remediation_type_has_a_crash_case():
    """Each remediation type of the step registry is covered by a case above."""
    remediations = {
        t for t, model in STEP_TYPES.items() if model.kind is StepKind.REMEDIATION
    }
    covered = {
        "k8s.rollout_undo",
        "k8s.rollout_restart",
        "k8s.scale",
        "k8s.patch_hpa",
        "k8s.set_memory_limit",
        "k8s.delete_pod",
        "redis.delete_keys",
        "redis.delete_pattern",
        "redis.reset_circuit_breaker",
        "http.request",
    }
    assert remediations == covered, remediations ^ covered


@pytest.mark.parametrize("after", [True, False], ids=["took-effect", "not-sent"])
async def test_an_interrupted_remediation_is_settled_once_the_alert_resolved(
    tmp_path, cluster, after
):
    """Alert resolved since the crash: re-checked and recorded, never run again."""
    kube, executor = cluster
    seed_rollout(kube, NS, "sark", HISTORY, replicas=3)
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules("scale", ""))
    clock = Clock()
    store = SqliteStore(str(tmp_path / "state.db"))
    dead = Runner(
        {"k8s": Crashing(executor, after=after)},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "dead", GuardDefaults()),
    )
    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(dead.run(_plan(rules)))
    resolved = AlertState(ALERT.fingerprint, "resolved", ALERT.starts_at, clock())
    await store.append(JournalEntry("r1", "alertmanager", clock(), b"{}"), [resolved])
    await store.recover("restarted", clock())
    restarted = Runner(
        {"k8s": executor},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "restarted", GuardDefaults()),
    )
    (step,) = (await restarted.run(_plan(rules))).matches[0].steps
    if after:
        assert step.decision.value == "executed"
        assert step.reason == (
            "executed, recovered after a crash of dead: deployment/sark -n "
            "production replicas is 5 (intended 5)"
        )
    else:
        assert (step.decision.value, step.guard) == ("skipped", "resolved")
        assert step.reason.startswith(
            "failed, the attempt by dead was interrupted by a crash before it took "
            "effect (deployment/sark -n production replicas is still 3"
        )
        assert "; not run again: alert resolved" in step.reason
    assert _dep(kube)["spec"]["replicas"] == (5 if after else 3)
    assert len(kube.seen("PATCH")) == int(after)
    key = idempotency_key("fix", 0, "k8s.scale", ALERT)
    later = await store.claim_key(key, "third", clock(), timedelta(hours=1))
    assert not later.won
    assert later.holder.status == ("done" if after else "failed")
    await store.close()


@pytest.mark.parametrize("after", [True, False], ids=["took-effect", "not-sent"])
async def test_a_redis_user_without_dump_still_deletes_and_rechecks_honestly(
    tmp_path, cache, redis_url, after
):
    """An ACL without DUMP: keys gone is still "took effect"; present is unknown."""
    admin, _executor = cache
    await _seed_cache(admin)
    await admin.execute_command(
        "ACL", "SETUSER", "nodump", "on", ">pw-nodump", "~*", "+@all", "-dump"
    )
    limited_url = redis_url.replace("redis://", "redis://nodump:pw-nodump@", 1)
    limited = RedisExecutor({"app": limited_url}, timeout=2.0)
    try:
        step, _crashing, store = await _crash_then_recover(
            tmp_path, "delete_keys", Target("redis", limited), after=after
        )
    finally:
        await limited.aclose()
        await admin.execute_command("ACL", "DELUSER", "nodump")
    if after:
        assert step.decision.value == "executed"
        assert "the keys are absent (cache:a, cache:b)" in step.reason
    else:
        assert step.decision.value == "failed"
        assert "no digest of their values was recorded (the server refused DUMP)" in (
            step.reason
        )
        assert await admin.exists("cache:a", "cache:b") == 2, "never deleted blindly"
    await store.close()


async def test_a_failed_read_before_acting_records_that_nothing_was_sent(
    tmp_path, cluster
):
    """Prepare fails (no such deployment): failed, nothing sent, key failed."""
    _kube, executor = cluster
    rules = tmp_path / "rules.yaml"
    rules.write_text(_rules("undo", ""))
    clock = Clock()
    store = SqliteStore(str(tmp_path / "state.db"))
    runner = Runner(
        {"k8s": executor},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "only", GuardDefaults()),
    )
    (step,) = (await runner.run(_plan(rules))).matches[0].steps
    assert step.decision.value == "failed"
    assert step.reason.endswith("(nothing was sent)")
    assert "deployment" in step.reason
    key = idempotency_key("fix", 0, "k8s.rollout_undo", ALERT)
    later = await store.claim_key(key, "third", clock(), timedelta(hours=1))
    assert (later.won, later.holder.status, later.holder.intent) == (
        False,
        "failed",
        "",
    )
    await store.close()


async def test_a_remediation_with_nothing_to_do_is_skipped_without_sending(
    tmp_path, cluster
):
    """Prepare finds nothing to do: skipped (already_done), no sending mark."""
    kube, executor = cluster
    seed_rollout(kube, NS, "sark", HISTORY, replicas=3)
    rules = tmp_path / "rules.yaml"
    within = "deployment: sark, only_if_rollout_within: 1m"
    rules.write_text(_rules("undo", "").replace("deployment: sark", within))
    clock = Clock()
    store = SqliteStore(str(tmp_path / "state.db"))
    runner = Runner(
        {"k8s": executor},
        clock,
        mode="execute",
        guards=GuardKeeper(store, "only", GuardDefaults()),
    )
    (step,) = (await runner.run(_plan(rules))).matches[0].steps
    assert (step.decision.value, step.guard) == ("skipped", "already_done")
    assert "not within 1m" in step.reason
    assert not kube.seen("PATCH")
    key = idempotency_key("fix", 0, "k8s.rollout_undo", ALERT)
    later = await store.claim_key(key, "third", clock(), timedelta(hours=1))
    assert (later.holder.status, later.holder.intent) == ("done", "")
    await store.close()
