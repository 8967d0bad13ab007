"""The depth bound holds under concurrent webhooks: the backlog never passes it.

Webhooks admitted at the same moment are each counted against the bound until
they are journaled (or refused), so a burst arriving while the journal is one
short of ``max_depth`` puts at most one more payload in, not the whole burst.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from conftest import NOW, Ticking, bearer, full_settings

from receiver.app import create_app
from receiver.metrics import Metrics
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.catalog import builtin_registry
from receiver.store import SqliteStore
from receiver.web.handlers import Backpressure


def _payload(i: int) -> bytes:
    alert = {
        "status": "firing",
        "labels": {"alertname": "KubePodCrashLooping", "n": str(i)},
        "annotations": {},
        "startsAt": "2024-05-06T07:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": f"{i:016x}",
    }
    return json.dumps(
        {"version": "4", "status": "firing", "receiver": "r", "alerts": [alert]}
    ).encode()


async def _edge(
    aiohttp_client: Any, web_rules: Path, tmp_path: Path, bound: Any
) -> Any:
    store = SqliteStore(str(tmp_path / "state.db"))
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([web_rules], steps=builtin_registry()),
        store=store,
        clock=Ticking(NOW),
        metrics=Metrics(),
        role="edge",
        backpressure=bound,
    )
    client = await aiohttp_client(app)
    client.store = store
    return client


async def _post(client: Any, i: int, body: bytes | None = None) -> int:
    response = await client.post(
        "/webhooks/alertmanager",
        data=_payload(i) if body is None else body,
        headers={**bearer(), "Content-Type": "application/json"},
    )
    return int(response.status)


async def test_a_burst_at_the_bound_does_not_pass_it(
    aiohttp_client, web_rules, tmp_path
):
    """Twenty webhooks at once with room for one: one 202, nineteen 503."""
    bound = Backpressure(max_depth=3, recount_at_bound=0.0, shed_pause=0.0)
    client = await _edge(aiohttp_client, web_rules, tmp_path, bound)
    assert await _post(client, 0) == 202
    assert await _post(client, 1) == 202
    statuses = await asyncio.gather(*(_post(client, i) for i in range(2, 22)))
    count, _ = await client.store.pending()
    assert count <= bound.max_depth
    assert sorted(statuses).count(202) == 1
    assert sorted(statuses).count(503) == 19


async def test_a_refused_request_gives_its_place_back(
    aiohttp_client, web_rules, tmp_path
):
    """A webhook admitted and then refused (400) does not hold a place."""
    bound = Backpressure(max_depth=2, recount_at_bound=0.0, shed_pause=0.0)
    client = await _edge(aiohttp_client, web_rules, tmp_path, bound)
    assert await _post(client, 0) == 202
    for _ in range(5):
        assert await _post(client, 1, body=b"{not json") == 400
    assert await _post(client, 1) == 202
    assert await _post(client, 2) == 503
    count, _ = await client.store.pending()
    assert count == 2
