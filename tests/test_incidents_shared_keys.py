"""A rule's ``group_by`` across Alertmanager groups: a key another incident holds.

Alert A (namespace prod, group g1) opens one incident, alert B (namespace staging,
group g2) another; alert C (namespace prod, group g2) belongs to the first by its
rule key, but its group key ``am:g2`` is the second's. The store refuses to give
a key to two active incidents, so the fold must leave that key where it is
instead of retrying the refused write until it gives up (and losing the batch).
"""

from __future__ import annotations

import uuid

import pytest
from incident_helpers import TickingClock, traces
from peers import run_redis
from test_incidents import CONFIGURED, am_body

from receiver.incidents.service import IncidentService
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store.incidents_base import IncidentQuery
from receiver.store.incidents_redis import RedisIncidentStore
from receiver.store.incidents_sqlite import SqliteIncidentStore


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with run_redis(tmp_path_factory.mktemp("review-keys-redis")) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store(request):
    if request.param == "sqlite":
        return SqliteIncidentStore(":memory:")
    url = request.getfixturevalue("redis_url")
    return RedisIncidentStore(url, prefix=f"t{uuid.uuid4().hex[:8]}")


def body(name: str, group: str, namespace: str) -> dict:
    out = am_body(name, group)
    out["alerts"][0]["labels"]["namespace"] = namespace
    return out


@pytest.fixture
def book(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIGURED)
    return load_rulebook([path], steps=builtin_registry())


async def fingerprints(service: IncidentService) -> dict[str, set[str]]:
    page, _ = await service.page(IncidentQuery())
    return {i.id: {a.fingerprint for a in i.alerts} for i in page}


@pytest.mark.parametrize("batched", [False, True])
async def test_a_key_held_by_another_incident_stays_there(store, book, batched):
    clock = TickingClock()
    service = IncidentService(store, clock=clock, rulebook=lambda: book)
    try:
        a = await traces(book, "alertmanager", body("A", "g1", "prod"), clock())
        b = await traces(book, "alertmanager", body("B", "g2", "staging"), clock())
        c = await traces(book, "alertmanager", body("C", "g2", "prod"), clock())
        if batched:
            await service.observe([*a, *b, *c])
        else:
            for one in (a, b, c):
                await service.observe(one)
        got = await fingerprints(service)
        assert sorted(map(sorted, got.values())) == [["fp-A", "fp-C"], ["fp-B"]]
        first = next(i for i, fps in got.items() if "fp-A" in fps)
        second = next(i for i, fps in got.items() if "fp-B" in fps)
        # Every key has one holder: C's group key stays with B's incident.
        assert (await store.find("am:g2")).id == second
        assert (await store.find("rule:by-namespace:namespace=prod")).id == first
        # A resend of B (group g2) still folds into its own incident, and of C
        # into the first, in one batch or one by one.
        again = [
            *await traces(book, "alertmanager", body("B", "g2", "staging"), clock()),
            *await traces(book, "alertmanager", body("C", "g2", "prod"), clock()),
        ]
        if batched:
            await service.observe(again)
        else:
            for trace in again:
                await service.observe([trace])
        assert await fingerprints(service) == got
    finally:
        await service.aclose()


async def test_the_queue_folds_the_batch_with_a_held_key(book):
    """Through ``put``: the batch is folded, not dropped with an error logged."""
    clock = TickingClock()
    service = IncidentService(
        SqliteIncidentStore(":memory:"), clock=clock, rulebook=lambda: book
    )
    try:
        await service.put(
            await traces(book, "alertmanager", body("A", "g1", "prod"), clock())
        )
        await service.put(
            await traces(book, "alertmanager", body("B", "g2", "staging"), clock())
        )
        await service.drain()
        await service.put(
            [
                *await traces(book, "alertmanager", body("C", "g2", "prod"), clock()),
                *await traces(book, "alertmanager", body("D", "g3", "dev"), clock()),
            ]
        )
        await service.drain()
        got = await fingerprints(service)
        assert sorted(map(sorted, got.values())) == [
            ["fp-A", "fp-C"],
            ["fp-B"],
            ["fp-D"],
        ]
    finally:
        await service.aclose()
