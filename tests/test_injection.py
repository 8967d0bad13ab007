"""Alert values cannot change what a step does: each injection path, end to end.

Every test posts an Alertmanager webhook to a receiver in execute mode, whose
steps point at a real counterpart (a recording HTTP server, a throwaway
redis-server, kmock, Prometheus), and checks two things: the step is recorded as
skipped with a reason naming the label and the slot, and nothing reached the
counterpart. A well-formed value goes through the same harness, so each test can
fail.
"""

from __future__ import annotations

import asyncio
import itertools
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio
from aiohttp.test_utils import TestClient
from conftest import bearer, full_settings, wait_for_decisions
from fakes import RecordingServer, Reply
from kube import Cluster, seed_rollout, serve
from peers import run_prometheus, run_redis

from receiver.app import create_app
from receiver.engine.runner import Executor
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.settings import Settings
from receiver.steps import build_executors
from receiver.steps.catalog import builtin_registry
from receiver.steps.k8s import KubernetesExecutor
from receiver.steps.kube_client import KubeConnection, new_api_client
from receiver.store import MemoryStore

RUNBOOK = Path(__file__).parent.parent / "rules"
_serial = itertools.count()


class TickingClock:
    """Real time, one millisecond later on every read (never frozen)."""

    def __init__(self) -> None:
        self._now = datetime.now(UTC)

    def __call__(self) -> datetime:
        self._now += timedelta(milliseconds=1)
        return self._now


@dataclass
class Receiver:
    """A receiver in execute mode, and a way to post one alert and read its steps."""

    client: TestClient[Any, Any]
    clock: TickingClock

    async def steps(self, **labels: str) -> list[dict[str, Any]]:
        """Post one firing alert with ``labels``; the steps of its first match."""
        fingerprint = f"inj-{next(_serial)}"
        started = self.clock() - timedelta(hours=1)
        body = {
            "version": "4",
            "groupKey": "{}:{}",
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "receiver",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.test:9093",
            "alerts": [
                {
                    "status": "firing",
                    "labels": labels,
                    "annotations": {},
                    "startsAt": started.isoformat().replace("+00:00", "Z"),
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "",
                    "fingerprint": fingerprint,
                }
            ],
        }
        resp = await self.client.post(
            "/webhooks/alertmanager", json=body, headers=bearer()
        )
        assert resp.status == 202, await resp.text()
        [record] = await wait_for_decisions(self.client, {"fingerprint": fingerprint})
        [match] = record["matches"]
        return list(match["steps"])


Start = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def start(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Start]:
    """Start a receiver on ``rules`` (YAML text, or a path) with real executors."""
    built: list[Any] = []

    async def factory(
        rules: str | Path,
        executors: dict[str, Executor] | None = None,
        **settings: Any,
    ) -> Receiver:
        if isinstance(rules, str):
            path = tmp_path / f"rules-{next(_serial)}.yaml"
            path.write_text(textwrap.dedent(rules), encoding="utf-8")
            rules = path
        config: Settings = full_settings(mode="execute", **settings)
        found = dict(build_executors(config))
        built.extend(found.values())
        found.update(executors or {})
        clock = TickingClock()
        app = create_app(
            build_runtime(config),
            rulebook=load_rulebook([rules], steps=builtin_registry()),
            store=MemoryStore(),
            clock=clock,
            executors=found,
            sinks={},
        )
        return Receiver(await aiohttp_client(app), clock)

    yield factory
    for executor in built:
        await executor.aclose()


def skipped(step: dict[str, Any], *fragments: str) -> None:
    """The step was skipped, and its reason says each fragment."""
    assert step["decision"] == "skipped", step
    for fragment in fragments:
        assert fragment in step["reason"], step["reason"]


# ----------------------------------------------------------------- HTTP


@pytest.fixture
def hooks() -> Any:
    with RecordingServer() as server:
        server.script("POST", ".*", Reply(200, b"ok"))
        server.script("GET", ".*", Reply(200, {"ok": True}))
        yield server


BREAKER_HOOK = """
playbooks:
  reset:
    remediation:
      - type: http.request
        url: "{url}/api/breakers/{{labels.breaker}}/reset"
    guards: {{cooldown: 0s}}
rules:
  - name: reset
    match: ['alertname="BreakerOpen"']
    playbook: reset
"""


async def test_a_url_path_label_cannot_climb_out_of_its_segment(start, hooks):
    """breaker='../../admin/shutdown?all=true#' skips the POST; nothing is sent."""
    receiver = await start(
        BREAKER_HOOK.format(url=hooks.url),
        http_allowlist=[f"127.0.0.1:{hooks.port}"],
    )
    [step] = await receiver.steps(
        alertname="BreakerOpen", breaker="../../admin/shutdown?all=true#"
    )
    skipped(
        step,
        "label breaker='../../admin/shutdown?all=true#' for url is not a URL path "
        "segment: it contains '/'; step not run",
    )
    assert hooks.requests == []

    [step] = await receiver.steps(alertname="BreakerOpen", breaker="siem%2F..")
    skipped(step, "it contains '..'")
    assert hooks.requests == []

    [step] = await receiver.steps(alertname="BreakerOpen", breaker="siem")
    assert step["decision"] == "executed", step
    assert [r.path for r in hooks.requests] == ["/api/breakers/siem/reset"]


PROBE = """
playbooks:
  probe:
    diagnostics:
      - type: http.get
        url: "http://{labels.host}/health"
rules:
  - name: probe
    match: ['alertname="Probe"']
    playbook: probe
"""


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("127.0.0.1:99999", "label host='127.0.0.1:99999' for url is not a host name"),
        ("127.0.0.1:1/x", "is not a host name: it contains ':'"),
        ("127.0.0.1\n", "is not a host name: it contains whitespace ('\\n')"),
        ("127.0.0.1\r\nX-Evil: 1", "it contains whitespace ('\\r')"),
        ("exa\u00admple.test", "is not a host name: it contains a control"),
    ],
)
async def test_a_port_or_newline_in_an_http_url_is_a_skip_not_a_crash(
    start, hooks, host, fragment
):
    """A label that would make the URL's port invalid or add a newline skips it."""
    receiver = await start(PROBE, http_allowlist=[f"127.0.0.1:{hooks.port}"])
    [step] = await receiver.steps(alertname="Probe", host=host)
    skipped(step, fragment, "step not run")
    assert hooks.requests == []


async def test_a_host_label_is_still_held_to_the_allowlist(start, hooks):
    """A valid host name fills the slot; the allowlist then refuses it, unsent."""
    receiver = await start(PROBE, http_allowlist=[f"127.0.0.1:{hooks.port}"])
    [step] = await receiver.steps(alertname="Probe", host="evil.test")
    assert step["decision"] == "failed", step
    assert "host is not on http_allowlist" in step["reason"]
    assert hooks.requests == []


# ----------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
async def admin(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    await client.execute_command("FLUSHDB")  # the test's own reset
    for siem in ("splunk", "payments-api", "x", "x:y"):
        await client.set(f"circuit:{siem}:state", "open")
        await client.set(f"circuit:{siem}:failure", "5")
    await client.config_resetstat()
    yield client
    await client.aclose()


async def commands(admin: redis.asyncio.Redis) -> set[str]:
    """Commands the server ran since the fixture reset its stats (INFO aside)."""
    stats = await admin.info("commandstats")
    return {k.removeprefix("cmdstat_") for k in stats} - {"info", "config|resetstat"}


async def test_the_runbook_resets_only_the_siems_it_names(start, admin, redis_url):
    """siem=payments-api and siem='x:y' skip every Redis step of siem-down."""
    receiver = await start(RUNBOOK, redis_targets={"default": redis_url})
    for siem, why in [
        ("payments-api", "is not one of splunk, datadog"),
        ("x:y", "is not one of splunk, datadog"),
    ]:
        steps = await receiver.steps(
            alertname="SarkSiemForwardingDown", namespace="production", siem=siem
        )
        by_type = {s["type"]: s for s in steps}
        skipped(
            by_type["redis.reset_circuit_breaker"],
            f"label siem={siem!r} for breaker {why}",
            "step not run",
        )
        skipped(by_type["redis.get"], f"label siem={siem!r} for keys {why}")
        assert await commands(admin) == set(), siem
    assert await admin.get("circuit:payments-api:state") == "open"
    assert await admin.get("circuit:x:y:state") == "open"

    steps = await receiver.steps(
        alertname="SarkSiemForwardingDown", namespace="production", siem="splunk"
    )
    reset = next(s for s in steps if s["type"] == "redis.reset_circuit_breaker")
    # Its PromQL verification has no Prometheus here; the reset itself ran.
    assert "unlinked circuit:splunk:state (was 'open')" in reset["reason"], reset
    assert await admin.get("circuit:splunk:state") is None
    assert await admin.get("circuit:payments-api:state") == "open"


BREAKER = """
playbooks:
  breaker:
    remediation:
      - type: redis.reset_circuit_breaker
        breaker: "{labels.siem}"
    guards: {cooldown: 0s}
rules:
  - name: breaker
    match: ['alertname="SiemDown"']
    playbook: breaker
"""


async def test_a_redis_key_part_cannot_carry_a_separator_or_a_glob(
    start, admin, redis_url
):
    """Without one_of, siem='x:y' or 'x*' is still not a key part: nothing sent."""
    receiver = await start(BREAKER, redis_targets={"default": redis_url})
    for siem, why in [
        ("x:y", "it contains ':', which would change the key's structure"),
        ("x*", "it contains the glob character '*'"),
        ("x\n", "it contains whitespace"),
    ]:
        [step] = await receiver.steps(alertname="SiemDown", siem=siem)
        skipped(step, f"label siem={siem!r} for breaker is not a Redis key part", why)
        assert await commands(admin) == set(), siem
    assert await admin.get("circuit:x:y:state") == "open"
    assert await admin.get("circuit:x:state") == "open"


# ----------------------------------------------------------------- Kubernetes


RESTART = """
playbooks:
  restart:
    remediation:
      - type: k8s.rollout_restart
        namespace: "{labels.namespace}"
        workload: "{labels.deployment}"
    guards: {cooldown: 0s}
rules:
  - name: restart
    match: ['alertname="Stuck"']
    playbook: restart
"""


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Cluster, KubernetesExecutor]]:
    found = Cluster()
    async with serve(found) as url:

        async def factory() -> Any:
            return await new_api_client(KubeConnection(mode="host", host=url))

        executor = KubernetesExecutor(factory, poll_interval=0.02, backoff=0.001)
        yield found, executor
        await executor.aclose()


@pytest.mark.parametrize(
    ("labels", "fragment"),
    [
        (
            {"namespace": "production\n", "deployment": "sark"},
            (
                "label namespace='production\\n' for namespace is not a Kubernetes "
                "namespace: it contains whitespace ('\\n')"
            ),
        ),
        (
            {"namespace": "production", "deployment": "sark\n"},
            "label deployment='sark\\n' for workload is not a Kubernetes name",
        ),
        (
            {"namespace": "production", "deployment": "../sark"},
            "it contains '/'",
        ),
    ],
)
async def test_a_trailing_newline_is_not_a_dns1123_name(
    start, cluster, labels, fragment
):
    """A name with a trailing newline fails the full match; the API sees nothing."""
    kube, executor = cluster
    seed_rollout(kube, "production", "sark", [("sark:1", timedelta(days=1), None)])
    receiver = await start(RESTART, {"k8s": executor})
    [step] = await receiver.steps(alertname="Stuck", **labels)
    skipped(step, fragment, "step not run")
    assert list(kube) == []

    [step] = await receiver.steps(
        alertname="Stuck", namespace="production", deployment="sark"
    )
    assert step["decision"] == "executed", step
    assert kube.seen("PATCH", "/deployments/sark$")


# ----------------------------------------------------------------- PromQL


WIDEN = """
playbooks:
  pods:
    diagnostics:
      - type: prometheus.query
        query: 'up{{job=~"{{labels.deployment}}"}}'
rules:
  - name: pods
    match: ['alertname="PodsDown"']
    playbook: pods
"""

EMPTY_VECTOR = {"status": "success", "data": {"resultType": "vector", "result": []}}


async def test_a_regex_label_is_escaped_so_it_cannot_widen_the_query(start):
    """deployment='.*|kube-.*' reaches Prometheus as a literal, not a regex."""
    with RecordingServer() as prometheus:
        prometheus.script("GET", "/api/v1/query", Reply(200, EMPTY_VECTOR))
        receiver = await start(WIDEN.format(), prometheus_url=prometheus.url)
        [step] = await receiver.steps(alertname="PodsDown", deployment=".*|kube-.*")
        assert step["decision"] == "executed", step
        [request] = prometheus.requests
        assert request.query["query"] == ['up{job=~"\\\\.\\\\*\\\\|kube-\\\\.\\\\*"}']


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with run_prometheus(tmp_path_factory.mktemp("prometheus")) as url:
        yield url


async def test_a_regex_label_matches_only_itself_in_a_real_prometheus(
    start, prometheus_url
):
    """Against real Prometheus: '.*|prom.*' finds no series; 'prometheus' finds one."""
    async with httpx.AsyncClient() as http:
        for _ in range(300):  # the first scrape lands within about a second
            answer = await http.get(
                f"{prometheus_url}/api/v1/query", params={"query": "up"}
            )
            if answer.json()["data"]["result"]:
                break
            await asyncio.sleep(0.1)
    receiver = await start(WIDEN.format(), prometheus_url=prometheus_url)
    [step] = await receiver.steps(alertname="PodsDown", deployment="prometheus")
    assert step["reason"].startswith("1 series"), step
    [step] = await receiver.steps(alertname="PodsDown", deployment=".*|prom.*")
    assert step["decision"] == "executed", step
    assert step["reason"].startswith("0 series: no data"), step
