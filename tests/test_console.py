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
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import APPROVE_TOKEN, BASIC_USER, bearer, full_settings
from counting import CountingServer

from receiver.app import create_app
from receiver.rulebook.loader import load_rulebook
from receiver.runtime import build_runtime
from receiver.steps.http import HttpExecutor
from receiver.store import MemoryStore
from receiver.store.base import Pause

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402

ARTIFACTS = Path(os.environ.get("RECEIVER_TEST_ARTIFACTS", "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


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
    for _ in range(1000):
        if await store.approvals("pending"):
            return
        await asyncio.sleep(0.01)


def shot(driver: Any, name: str) -> None:
    """Save a screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"console-{name}.png"))


async def test_approve_in_the_console_runs_the_step_once(
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
            rulebook=load_rulebook([path]),
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
                browser.get(f"{base}/ui/")
                assert "Signed in as" in browser.page_source
                assert BASIC_USER in browser.page_source
                assert pending.id in browser.page_source
                assert f"{hook.url}/run/fp-ui" in browser.page_source
                shot(browser, "approvals")
                browser.find_element(
                    By.CSS_SELECTOR, "button[name=decision][value=approve]"
                ).click()
                text = browser.find_element(By.CSS_SELECTOR, "[role=status]").text
                shot(browser, "approved")
                return str(text)

            notice = await asyncio.to_thread(approve)
            assert f"approved by {BASIC_USER}; running it now" in notice
            for _ in range(1000):
                if hook.snapshot() and await store.pending() == (0, None):
                    break
                await asyncio.sleep(0.01)
            assert hook.snapshot() == {"/run/fp-ui": 1}
            (approved,) = await store.approvals("approved")
            assert approved.decided_by == BASIC_USER

            await store.set_pause(Pause("alice", pending.created_at, "drill"))

            def guards() -> str:
                browser.get(f"{base}/ui/guards")
                shot(browser, "guards")
                return str(browser.find_element(By.TAG_NAME, "body").text)

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
