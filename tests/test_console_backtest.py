"""The console's backtest form (``/ui/backtest``) over HTTP.

Admin only, checked like ``receiver rules check``, bounded in size, payloads and
time, audited.

A real app (in-memory store holding the shipped example payloads, the shipped
rules loaded) answers a plain HTTP client; the browser walk-through is in
``test_console.py``.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from conftest import ADMIN_TOKEN, APPROVE_TOKEN, basic, full_settings
from test_backtest import API_DOWN, EXAMPLES, RULES, UNDO, changed_runbook

from receiver.app import create_app
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.sources import detect, parse_json
from receiver.steps.catalog import builtin_registry
from receiver.store import MemoryStore
from receiver.store.base import DecisionQuery, JournalEntry
from receiver.web.console import CONSOLE, MAX_CANDIDATE_BYTES

ADMIN = basic("ops-admin", ADMIN_TOKEN)
RESPONDER = basic("jane", APPROVE_TOKEN)


async def fill(store: MemoryStore, now: datetime) -> int:
    """The example payloads, twice over, a minute apart, ending an hour ago."""
    bodies = [path.read_bytes() for path in EXAMPLES * 2]
    start = now - timedelta(hours=1, minutes=len(bodies))
    for i, body in enumerate(bodies):
        entry = JournalEntry(
            f"e{i:03d}", detect(parse_json(body)), start + timedelta(minutes=i), body
        )
        await store.append(entry, [])
    return len(bodies)


@pytest.fixture
async def client(aiohttp_client) -> Any:
    """The app with the shipped rules and the examples stored."""
    store = MemoryStore()
    stored = await fill(store, datetime.now(UTC))
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([RULES], steps=builtin_registry()),
        store=store,
        sinks={},
        rule_paths=[RULES],
    )
    client = await aiohttp_client(app)
    client.store = store
    client.stored = stored
    client.console = app[CONSOLE]
    return client


async def token(client: Any, auth: dict[str, str] = ADMIN) -> str:
    """The form token the page gives this identity."""
    resp = await client.get("/ui/backtest", headers=auth)
    assert resp.status == 200, await resp.text()
    found = re.search(r'name=token value="([0-9a-f]+)"', await resp.text())
    assert found
    return found.group(1)


async def run(
    client: Any, rules: str | bytes, *, upload: bool = False, **fields: str
) -> tuple[int, str]:
    """Post the form (pasted or uploaded); the status and the page."""
    form = aiohttp.FormData(default_to_multipart=not fields.pop("urlencoded", ""))
    form.add_field("token", await token(client))
    if upload:
        form.add_field("rules_file", rules, filename="runbook.yaml")
    else:
        form.add_field("rules", rules)
    for name, value in {"since": "1d", "replaces": "0", **fields}.items():
        form.add_field(name, value)
    resp = await client.post("/ui/backtest", data=form, headers=ADMIN)
    return resp.status, await resp.text()


async def audit(client: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in await client.store.decisions(DecisionQuery(limit=50))
        if r.get("event") == "backtest"
    ]


async def test_a_rules_change_shows_the_cli_differences(client):
    """The same six alerts and one remediation as ``receiver backtest``; audited."""
    status, page = await run(client, changed_runbook(), max_changed="5")
    assert status == 200, page
    assert f"{client.stored} payloads" in page
    assert "12 decided differently" in page
    assert "THRESHOLD EXCEEDED: 12 alerts decided differently, more than 5" in page
    report = page[page.index("id=backtest>") : page.index("</section>")]
    # Ten examples shown (as the CLI), the rest counted.
    assert report.count("SarkDatabaseDown") + report.count("SarkApiDown") == 10
    assert "... and 2 more." in report
    assert "awaiting_approval (approval)" in report
    for name, runs in API_DOWN.items():
        assert f'{name}: {UNDO}</td><td data-label="Loaded rules">{runs}<' in report
    assert report.count("LESS often") == len(API_DOWN)
    (record,) = await audit(client)
    assert record["by"] == "ops-admin"
    assert (record["changed_alerts"], record["threshold_exceeded"]) == (12, True)
    assert record["payloads"] == client.stored
    assert record["replaces"].endswith("runbook.yaml")
    assert len(record["candidate_sha256"]) == 64
    assert "rules:" not in str(record), "the candidate itself is not logged"


async def test_an_upload_works_like_a_paste_and_unchanged_rules_show_nothing(client):
    """Uploading the loaded runbook unchanged: no difference, within the threshold."""
    text = (RULES / "runbook.yaml").read_bytes()
    status, page = await run(client, text, upload=True, max_changed="0")
    assert status == 200, page
    assert "0 decided differently" in page
    assert "Within the threshold: 0 of at most 0" in page
    assert "None: remediations would run as often as before." in page
    # A URL-encoded form (curl's -d) is read within the same bound.
    status, page = await run(client, changed_runbook(), urlencoded="yes")
    assert status == 200, page
    assert "12 decided differently" in page


async def test_rule_errors_name_file_rule_and_field_and_nothing_runs(client):
    """A broken candidate is a 400 listing each problem as ``rules check`` does."""
    bad = changed_runbook().replace("playbook: database-outage", "playbook: nope", 1)
    bad = bad.replace("severity: P1", "severity: P7", 1)
    status, page = await run(client, bad, replaces="all")
    assert status == 400
    assert "do not load" in page
    assert "candidate.yaml" in page
    assert "unknown playbook &#x27;nope&#x27;" in page
    assert re.search(r"rules\[\d+\]\.playbook", page)
    assert "sark-database-down" in page
    assert "id=backtest" not in page
    assert await audit(client) == []
    status, page = await run(client, "rules: [\n  - {name: x\n")
    assert status == 400
    assert "invalid YAML" in page
    # Added beside the loaded runbook, its copy clashes with it, file by file.
    status, page = await run(client, changed_runbook(), replaces="new")
    assert status == 400
    assert "duplicate rule name (first in " in page
    assert "runbook.yaml)" in page


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"since": "soon"}, 400, "give a duration like 7d"),
        ({"max_changed": "-1"}, 400, "whole number of alerts"),
        ({"replaces": "/etc/passwd"}, 400, "choose what the candidate replaces"),
        ({"replaces": "99"}, 400, "choose what the candidate replaces"),
    ],
)
async def test_bad_fields_are_refused_saying_why(client, fields, status, words):
    """A bad period, threshold or choice is a 400 page naming it; nothing runs."""
    got, page = await run(client, changed_runbook(), **fields)
    assert got == status
    assert words in page
    assert await audit(client) == []


async def test_size_and_yaml_expansion_are_bounded(client):
    """Over the size cap is a 413; anchors expanding past the bound a 400."""
    status, page = await run(client, "#" * (MAX_CANDIDATE_BYTES + 1))
    assert status == 413
    assert "over 256 KiB" in page
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    status, page = await run(client, "\n".join(laughs) + "\n")
    assert status == 400
    assert "expands to more than" in page
    status, page = await run(client, "   \n")
    assert status == 400
    assert "paste the candidate rules or upload a file" in page


async def test_payloads_and_time_are_bounded(client):
    """A capped run replays the newest payloads; a slow one stops and says so."""
    client.console.backtest_payloads = 5
    status, page = await run(client, changed_runbook())
    assert status == 200
    assert "5 payloads" in page
    assert "the oldest were left out" in page
    client.console.backtest_payloads = 1000
    ticks = itertools.count()
    client.console.timer = lambda: float(next(ticks))  # a second per read
    client.console.backtest_seconds = 3
    status, page = await run(client, changed_runbook())
    assert status == 200
    assert "STOPPED after 3 of" in page
    assert "3 payloads" in page
    records = await audit(client)
    assert sorted((r["payloads"], r["stopped"]) for r in records) == [
        (3, True),
        (5, False),
    ]


async def test_one_backtest_at_a_time(client):
    """While one runs on this replica, another is answered 429 and not run."""
    async with client.console.busy:
        status, page = await run(client, changed_runbook())
    assert status == 429
    assert "another backtest is running" in page
    assert await audit(client) == []


async def test_without_admin_it_is_refused_and_a_foreign_form_too(client):
    """A responder's credential gets the refusal page; a form without the token 403."""
    for method in ("get", "post"):
        resp = await client.request(method, "/ui/backtest", headers=RESPONDER)
        assert resp.status == 403
        text = await resp.text()
        assert "backtesting rules changes needs the admin scope" in text
    resp = await client.get("/ui/backtest")
    assert resp.status == 401
    form = aiohttp.FormData({"token": "x", "rules": "rules: []", "since": "1d"})
    resp = await client.post("/ui/backtest", data=form, headers=ADMIN)
    assert resp.status == 403
    assert await audit(client) == []


async def test_a_malformed_multipart_form_is_a_400(client):
    """A part header the HTTP parser rejects is a 400 page, never a 5xx."""
    body = (
        b'--ab95\r\nContent-Disposition: form-data; name="w\x14p"\r\n\r\nx\r\n'
        b"--ab95--\r\n"
    )
    resp = await client.post(
        "/ui/backtest",
        data=body,
        headers={**ADMIN, "Content-Type": "multipart/form-data; boundary=ab95"},
    )
    assert resp.status == 400
    assert "does not parse as multipart" in await resp.text()
