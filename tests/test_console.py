"""The console at ``/ui/`` in a real browser (headless Debian Chromium, Selenium).

The receiver runs in execute mode on a real socket with an ``http.request`` step
aimed at a counting server. Screenshots of each page go to
``$RECEIVER_TEST_ARTIFACTS`` (default ``test-artifacts/``, not committed).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    ADMIN_TOKEN,
    APPROVE_TOKEN,
    BASIC_USER,
    bearer,
    full_settings,
    journal_drained,
    park_entry,
)
from counting import CountingServer
from test_backtest import API_DOWN, RULES, UNDO, changed_runbook
from test_console_backtest import fill
from test_sinks_outbox import Recording
from test_sinks_outbox import trace as outbox_trace

from receiver.app import OUTBOX, SINKS, create_app
from receiver.app_incidents import INCIDENTS
from receiver.incidents import lifecycle
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.sinks.outbox import encode_trace
from receiver.steps.catalog import builtin_registry
from receiver.steps.http import HttpExecutor
from receiver.store import MemoryStore
from receiver.store.base import DecisionQuery, Pause
from receiver.store.incidents_base import IncidentQuery

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ARTIFACTS = Path(os.environ.get("RECEIVER_TEST_ARTIFACTS", "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Generous: the machine running the tests may be loaded; nothing waits this long
# unless something is broken.
WAIT = 60


def seen(driver: Any, css: str) -> Any:
    """The element matching ``css`` once it is displayed (waits explicitly)."""
    return WebDriverWait(driver, WAIT).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def page_with(driver: Any, url: str, text: str) -> str:
    """Open ``url`` and wait until its body holds ``text``; the body's text."""
    driver.get(url)
    WebDriverWait(driver, WAIT).until(
        ec.text_to_be_present_in_element((By.TAG_NAME, "body"), text)
    )
    return str(driver.find_element(By.TAG_NAME, "body").text)


def click_and_wait(driver: Any, css: str, url_part: str, then: str) -> Any:
    """Click ``css``; wait for the next page (URL holding ``url_part``) and ``then``.

    The click submits a form: the old page stays in place until the POST and its
    redirect finish, so the next page is waited for, never assumed.
    """
    seen(driver, css).click()
    WebDriverWait(driver, WAIT).until(ec.url_contains(url_part))
    return seen(driver, then)


def rules(hook: str) -> str:
    """One remediation that waits for approval."""
    return textwrap.dedent(
        f"""
        playbooks:
          restart:
            remediation:
              - type: http.request
                url: "{hook}/run/{{alert.fingerprint}}"
                approval: required
            guards: {{cooldown: 30m}}
        rules:
          - name: restart
            match: ['alertname="Restart"']
            playbook: restart
            severity: P2
        """
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium; the test fails (not skips) when it is missing."""
    from selenium.webdriver.chrome.options import Options  # noqa: PLC0415
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=412,900")  # a phone's width
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def login(driver: Any, user: str, password: str) -> None:
    """Send basic credentials with every request (what the prompt would do)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )


async def fire(api: httpx.AsyncClient, store: Any) -> None:
    """Send the alert and wait (bounded) until its step waits for approval."""
    body = {
        "version": "4",
        "status": "firing",
        "groupKey": "g",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "Restart"},
                "startsAt": "2026-12-05T11:00:00Z",
                "fingerprint": "fp-ui",
            }
        ],
    }
    resp = await api.post("/webhooks/alertmanager", json=body, headers=bearer())
    assert resp.status_code == 202
    await journal_drained(store)


def shot(driver: Any, name: str) -> None:
    """Save a screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"console-{name}.png"))


async def test_approve_in_the_console_runs_the_step_once(  # noqa: PLR0915 (one walk-through)
    aiohttp_server, tmp_path, browser
):
    """Sign in, see the pending step, approve it as yourself: it runs once."""
    with CountingServer() as hook:
        path = tmp_path / "rules.yaml"
        path.write_text(rules(hook.url), encoding="utf-8")
        store = MemoryStore()
        http = httpx.AsyncClient(timeout=5)
        app = create_app(
            build_runtime(
                full_settings(mode="execute", http_allowlist=[f"127.0.0.1:{hook.port}"])
            ),
            rulebook=load_rulebook([path], steps=builtin_registry()),
            store=store,
            executors={"http": HttpExecutor(http, [f"127.0.0.1:{hook.port}"])},
            sinks={},
        )
        server = await aiohttp_server(app)
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as api:
            resp = await api.get("/ui/approvals")
            assert resp.status_code == 401
            assert resp.headers["WWW-Authenticate"].startswith("Basic ")
            await fire(api, store)
            (pending,) = await store.approvals("pending")

            def approve() -> str:
                login(browser, BASIC_USER, APPROVE_TOKEN)
                body = page_with(browser, f"{base}/ui/approvals", pending.id)
                assert f"Signed in as {BASIC_USER}" in body
                assert f"{hook.url}/run/fp-ui" in body
                shot(browser, "approvals")
                status = click_and_wait(
                    browser,
                    "button[name=decision][value=approve]",
                    "notice=",
                    "[role=status]",
                )
                text = str(status.text)
                shot(browser, "approved")
                return text

            notice = await asyncio.to_thread(approve)
            assert f"approved by {BASIC_USER}; running it now" in notice
            await journal_drained(store)
            assert hook.snapshot() == {"/run/fp-ui": 1}
            (approved,) = await store.approvals("approved")
            assert approved.decided_by == BASIC_USER
            await app[INCIDENTS].drain()
            (incident,) = (await app[INCIDENTS].page(IncidentQuery(limit=5)))[0]

            def trace() -> str:
                url = f"{base}/ui/incidents/{incident.id}"
                text = page_with(browser, url, "EXECUTED")
                shot(browser, "incident-executed")
                return text

            detail = await asyncio.to_thread(trace)
            assert "http.request on" in detail
            assert "AWAITING_APPROVAL" in detail  # before the approval, then:
            assert "EXECUTED" in detail

            await store.set_pause(Pause("alice", pending.created_at, "drill"))

            def guards() -> str:
                text = page_with(browser, f"{base}/ui/guards", "PAUSED")
                shot(browser, "guards")
                return text

            page = await asyncio.to_thread(guards)
            assert "Remediations PAUSED by alice" in page
            assert "restart" in page
            assert "closed (0 failures in a row)" in page
            assert "last run" in page

            # A form from elsewhere (no token bound to this identity) is refused.
            resp = await api.post(
                f"/ui/approvals/{pending.id}",
                data={"decision": "reject", "token": "x"},
                auth=(BASIC_USER, APPROVE_TOKEN),
            )
            assert resp.status_code == 403
        await http.aclose()
    assert hook.snapshot() == {"/run/fp-ui": 1}


async def test_resolve_an_incident_that_lost_track(
    aiohttp_server, tmp_path, browser, monkeypatch
):
    """A storm too big to follow; the on-call resolves it from its page, with why."""
    monkeypatch.setattr(lifecycle, "MAX_ALERTS", 1)
    monkeypatch.setattr(lifecycle, "MAX_UNLISTED", 1)
    path = tmp_path / "rules.yaml"
    path.write_text(rules("http://127.0.0.1:9"), encoding="utf-8")
    store = MemoryStore()
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([path], steps=builtin_registry()),
        store=store,
        sinks={},
    )
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    storm = {
        "version": "4",
        "status": "firing",
        "groupKey": "storm",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "Restart", "pod": f"p{i}"},
                "startsAt": "2026-12-05T11:00:00Z",
                "fingerprint": f"fp-storm-{i}",
            }
            for i in range(3)
        ],
    }
    async with httpx.AsyncClient(base_url=base, timeout=10) as api:
        resp = await api.post("/webhooks/alertmanager", json=storm, headers=bearer())
        assert resp.status_code == 202
    await journal_drained(store)
    await app[INCIDENTS].drain()
    (incident,) = (await app[INCIDENTS].page(IncidentQuery(limit=5)))[0]
    assert incident.lost_track
    button = f"form[action='/ui/incidents/{incident.id}/resolve'] button"

    def resolve() -> tuple[str, str, str, int]:
        login(browser, BASIC_USER, APPROVE_TOKEN)
        url = f"{base}/ui/incidents/{incident.id}"
        before = page_with(browser, url, "Resolve incident")
        assert fits(browser)
        why = "form[action$='/resolve'] textarea[name=text]"
        seen(browser, why).send_keys("storm over, nodes back")
        shot(browser, "incident-resolve")
        status = str(click_and_wait(browser, button, "notice=", "[role=status]").text)
        after = page_with(browser, browser.current_url, "Resolved: storm over")
        shot(browser, "incident-resolved")
        assert fits(browser)
        forms = browser.find_elements(By.CSS_SELECTOR, "form[action$='/resolve']")
        return before, status, after, len(forms)

    before, status, after, forms = await asyncio.to_thread(resolve)
    assert "lost track of its alert storm" in before
    assert status.startswith(f"{incident.id} resolved by {BASIC_USER} at ")
    assert "resolved ·" in after  # the state, in words
    # The timeline's line: what, by whom, the why.
    assert f" resolved {BASIC_USER}\nResolved: storm over, nodes back\n" in after
    assert forms == 0
    resolved = await app[INCIDENTS].get(incident.id)
    assert resolved is not None
    assert not resolved.active
    [entry] = [e for e in resolved.timeline if e.kind == "resolved"]
    assert (entry.by, entry.text) == (BASIC_USER, "Resolved: storm over, nodes back")


async def test_acknowledge_and_comment_from_the_incident_page(
    aiohttp_server, tmp_path, browser
):
    """The on-call acknowledges, then comments (HTML in it shown as typed)."""
    path = tmp_path / "rules.yaml"
    path.write_text(rules("http://127.0.0.1:9"), encoding="utf-8")
    store = MemoryStore()
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([path], steps=builtin_registry()),
        store=store,
        sinks={},
    )
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as api:
        await fire(api, store)
    await app[INCIDENTS].drain()
    (incident,) = (await app[INCIDENTS].page(IncidentQuery(limit=5)))[0]
    url = f"{base}/ui/incidents/{incident.id}"
    acknowledge = f"form[action='/ui/incidents/{incident.id}/acknowledge'] button"
    comment = f"form[action='/ui/incidents/{incident.id}/comment'] button"
    typed = "rolled back <b>v2</b> & watching"

    def on_call() -> tuple[str, str, str, int, int]:
        login(browser, BASIC_USER, APPROVE_TOKEN)
        page_with(browser, url, "Acknowledge incident")
        assert fits(browser)
        shot(browser, "incident-acknowledge")
        acked = str(
            click_and_wait(browser, acknowledge, "notice=", "[role=status]").text
        )
        buttons = len(browser.find_elements(By.CSS_SELECTOR, acknowledge))
        # From the page without the notice: the next redirect is then told apart.
        page_with(browser, url, "Add comment")
        seen(browser, "textarea#comment").send_keys(typed)
        said = str(click_and_wait(browser, comment, "notice=", "[role=status]").text)
        after = page_with(browser, browser.current_url, typed)
        shot(browser, "incident-commented")
        assert fits(browser)
        live = len(browser.find_elements(By.CSS_SELECTOR, "pre b"))
        return acked, said, after, buttons, live

    acked, said, after, buttons, live = await asyncio.to_thread(on_call)
    assert acked.startswith(f"{incident.id} acknowledged by {BASIC_USER} at ")
    assert acked.endswith("the acknowledge clock stopped")
    assert buttons == 0
    assert said == f"{incident.id}: comment added to the timeline as {BASIC_USER}"
    assert "acknowledged ·" in after  # the state, in words
    assert "acknowledge: stopped at " in after
    assert f" acknowledged {BASIC_USER}\nAcknowledged via the console\n" in after
    assert f" comment {BASIC_USER}\n{typed}\n" in after
    assert live == 0  # the comment's <b> is text, not an element
    done = await app[INCIDENTS].get(incident.id)
    assert done is not None
    assert done.acknowledged_at is not None
    assert [(e.kind, e.by, e.text) for e in done.timeline[-2:]] == [
        ("acknowledged", BASIC_USER, "Acknowledged via the console"),
        ("comment", BASIC_USER, typed),
    ]


def fits(driver: Any) -> bool:
    """Whether the page fits the phone-wide window (no sideways scrolling)."""
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth <= "
            "document.documentElement.clientWidth + 1"
        )
    )


async def test_incidents_guards_and_rules_pages(  # noqa: PLR0915 (one walk-through)
    aiohttp_server, tmp_path, browser
):
    """Clocks breach in red and words; reset needs admin; rules dry-run a payload."""
    offset = [timedelta(0)]

    def clock() -> datetime:
        return datetime.now(UTC) + offset[0]

    path = tmp_path / "rules.yaml"
    path.write_text(rules("http://127.0.0.1:9"), encoding="utf-8")
    store = MemoryStore()
    http = httpx.AsyncClient(timeout=5)
    app = create_app(
        build_runtime(full_settings(mode="execute", http_allowlist=["127.0.0.1:9"])),
        rulebook=load_rulebook([path], steps=builtin_registry()),
        store=store,
        clock=clock,
        executors={"http": HttpExecutor(http, ["127.0.0.1:9"])},
        sinks={},
        rule_paths=[path],
    )
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as api:
        await fire(api, store)
        await app[INCIDENTS].drain()
        (incident,) = (await app[INCIDENTS].page(IncidentQuery(limit=5)))[0]
        (pending,) = await store.approvals("pending")
        # Two hours on: past the P2 acknowledge target (1h), inside mitigate (8h).
        offset[0] = timedelta(hours=2)

        def incidents() -> tuple[str, str, str]:
            login(browser, BASIC_USER, APPROVE_TOKEN)
            listing = page_with(browser, f"{base}/ui/incidents", incident.id)
            breached = seen(browser, ".clock.breached").text
            shot(browser, "incidents")
            assert fits(browser)
            click_and_wait(
                browser, f"a[href='/ui/incidents/{incident.id}']", incident.id, "h1"
            )
            detail = page_with(browser, browser.current_url, "Decision traces")
            shot(browser, "incident")
            assert fits(browser)
            return listing, str(breached), detail

        listing, breached, detail = await asyncio.to_thread(incidents)
        assert "P2" in listing
        assert "triggered" in listing
        assert breached.startswith("acknowledge: BREACHED")
        assert "mitigate: 5h" in listing  # counting down, in words
        assert "AWAITING_APPROVAL" in detail
        assert "http.request on" in detail
        assert "Report (Markdown)" in detail

        # Open the breaker of the step's target.
        target = str(pending.request["target"])
        scope = f"playbook:restart:target:{target}"
        for _ in range(5):
            await store.record_outcome(scope, ok=False, threshold=5, now=clock())
        assert (await store.circuit(scope)).opened_at is not None

        def reset_refused() -> str:
            page_with(browser, f"{base}/ui/guards", "OPEN since")
            shot(browser, "guards-open")
            assert fits(browser)
            alert = click_and_wait(
                browser,
                "form[action='/ui/guards/reset'] button",
                "reset",
                "[role=alert]",
            )
            return str(alert.text)

        refusal = await asyncio.to_thread(reset_refused)
        assert "needs the admin scope" in refusal
        assert (await store.circuit(scope)).opened_at is not None

        def reset_as_admin() -> str:
            login(browser, "ops-admin", ADMIN_TOKEN)
            page_with(browser, f"{base}/ui/guards", "OPEN since")
            status = click_and_wait(
                browser,
                "form[action='/ui/guards/reset'] button",
                "notice=",
                "[role=status]",
            )
            text = str(status.text)
            seen(browser, "input[name=reason]").send_keys("drill")
            click_and_wait(
                browser, "button[name=paused][value=true]", "paused+by", "[role=status]"
            )
            shot(browser, "guards")
            return text + "\n" + page_with(browser, browser.current_url, "PAUSED by")

        after = await asyncio.to_thread(reset_as_admin)
        assert "reset by ops-admin" in after
        assert "Remediations PAUSED by ops-admin" in after
        assert (await store.circuit(scope)).opened_at is None
        pause = await store.pause()
        assert pause is not None
        assert (pause.by, pause.reason) == ("ops-admin", "drill")
        audit = [
            r
            for r in await store.decisions(DecisionQuery(limit=50))
            if r.get("event") in ("circuit_reset", "paused")
        ]
        assert {(r["event"], r["by"]) for r in audit} == {
            ("circuit_reset", "ops-admin"),
            ("paused", "ops-admin"),
        }

        def dry_run() -> str:
            login(browser, BASIC_USER, APPROVE_TOKEN)
            rules_page = page_with(browser, f"{base}/ui/rules", str(path))
            assert "Last loaded" in rules_page
            seen(browser, "input[name=payload_id]").send_keys(
                pending.request["payload_id"]
            )
            result = click_and_wait(
                browser,
                "form[action='/ui/rules/dry-run'] button",
                "dry-run",
                "#dry-run",
            )
            shot(browser, "rules")
            assert fits(browser)
            return str(result.text)

        result = await asyncio.to_thread(dry_run)
        assert "restart (P2) -> restart" in result
        assert "DRY_RUN" in result  # decided, not run: nothing is sent
    await http.aclose()
    # Nothing was approved, so nothing ran.
    assert (await store.approvals("pending"))[0].id == pending.id


async def test_backtest_a_pasted_rules_change(aiohttp_server, browser):
    """An admin pastes a rules change and sees its differences; others are refused."""
    store = MemoryStore()
    stored = await fill(store, datetime.now(UTC))
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([RULES], steps=builtin_registry()),
        store=store,
        sinks={},
        rule_paths=[RULES],
    )
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    candidate = changed_runbook()

    def refused() -> str:
        login(browser, BASIC_USER, APPROVE_TOKEN)
        text = page_with(browser, f"{base}/ui/backtest", "Refused")
        shot(browser, "backtest-refused")
        return text

    refusal = await asyncio.to_thread(refused)
    assert "Refused: " in refusal
    assert "backtesting rules changes needs the admin scope" in refusal

    def backtest() -> str:
        login(browser, "ops-admin", ADMIN_TOKEN)
        page_with(browser, f"{base}/ui/backtest", "Run the backtest")
        assert fits(browser)
        area = seen(browser, "textarea[name=rules]")
        # Paste: the whole file arrives at once (typing 25 KB key by key is slow).
        browser.execute_script("arguments[0].value = arguments[1];", area, candidate)
        since = seen(browser, "input[name=since]")
        since.clear()
        since.send_keys("1d")
        seen(browser, "input[name=max_changed]").send_keys("5")
        seen(browser, "form[action='/ui/backtest'] button").click()
        report = seen(browser, "#backtest")
        text = str(report.text)
        shot(browser, "backtest")
        assert fits(browser)
        return text

    report = await asyncio.to_thread(backtest)
    assert f"{stored} payloads" in report
    assert "12 decided differently" in report
    assert "THRESHOLD EXCEEDED: 12 alerts decided differently, more than 5" in report
    assert report.count("SarkDatabaseDown") + report.count("SarkApiDown") == 10
    assert "awaiting_approval (approval)" in report
    flat = report.replace("\n", " ")
    for name, runs in API_DOWN.items():
        assert f"{name}: {UNDO} {runs} 0 LESS often" in flat
    (audit,) = [
        r
        for r in await store.decisions(DecisionQuery(limit=50))
        if r.get("event") == "backtest"
    ]
    assert (audit["by"], audit["changed_alerts"]) == ("ops-admin", 12)


async def test_parked_entries_and_deliveries_are_retried_from_the_guards_page(  # noqa: PLR0915 (one walk-through)
    aiohttp_server, browser
):
    """Listed with why; only admin retries: the entry is decided, the delivery sent."""
    store = MemoryStore()
    sink = Recording()
    app = create_app(
        build_runtime(full_settings()),
        rulebook=load_rulebook([RULES], steps=builtin_registry()),
        store=store,
        sinks={sink.name: sink},
        rule_paths=[RULES],
    )
    now = datetime.now(UTC)
    await park_entry(store, "e-ui", "f-ui", now, "claimed 6 times without finishing")
    outbox = app[OUTBOX]
    decided = encode_trace(outbox_trace("p-ui"))
    await outbox.put([("p-ui.0", "owner", decided, [sink.name])], now)
    assert await outbox.claim(now, timedelta(minutes=5)) is not None
    await outbox.park("p-ui.0", "failed 5 times; last error: ConnectError")
    server = await aiohttp_server(app)
    base = f"http://127.0.0.1:{server.port}"
    send = "form[action='/ui/guards/retry-delivery'] button"
    decide = "form[action='/ui/guards/retry-entry'] button"

    def refused() -> tuple[str, str, str]:
        login(browser, BASIC_USER, APPROVE_TOKEN)
        page = page_with(browser, f"{base}/ui/guards", "p-ui.0")
        browser.execute_script(
            "arguments[0].scrollIntoView()", browser.find_element(By.CSS_SELECTOR, send)
        )
        shot(browser, "guards-parked")
        assert fits(browser)
        first = click_and_wait(browser, send, "retry-delivery", "[role=alert]").text
        page_with(browser, f"{base}/ui/guards", "e-ui")
        second = click_and_wait(browser, decide, "retry-entry", "[role=alert]").text
        return page, str(first), str(second)

    page, *refusals = await asyncio.to_thread(refused)
    assert "claimed 6 times without finishing" in page
    assert "Parked sink deliveries" in page
    assert "SiemDown (fp1)" in page
    assert "failed 5 times; last error: ConnectError" in page
    assert all("needs the admin scope" in r for r in refusals), refusals
    assert sink.sent == []
    assert await store.parked_count() == 1

    def as_admin() -> tuple[str, str]:
        login(browser, "ops-admin", ADMIN_TOKEN)
        page_with(browser, f"{base}/ui/guards", "p-ui.0")
        first = click_and_wait(browser, send, "notice=", "[role=status]").text
        page_with(browser, f"{base}/ui/guards", "e-ui")
        second = click_and_wait(browser, decide, "notice=", "[role=status]").text
        return str(first), str(second)

    sent, queued = await asyncio.to_thread(as_admin)
    assert "parked sink delivery p-ui.0 queued again by ops-admin" in sent
    assert "parked journal entry e-ui queued again by ops-admin" in queued
    await app[SINKS].drain()
    assert [payload for payload, _ in sink.sent] == ["p-ui"]
    assert await outbox.counts() == (0, 0)
    await journal_drained(store)
    assert await store.parked_count() == 0
    (record,) = await store.decisions(DecisionQuery(payload_id="e-ui"))
    assert record["fingerprint"] == "f-ui"
    after = await asyncio.to_thread(page_with, browser, f"{base}/ui/guards", "Parked")
    assert "p-ui.0" not in after
    assert "e-ui" not in after
