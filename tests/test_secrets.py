"""No secret leaks: logs, the journal, decisions, notes, messages or error texts.

Every secret the receiver can hold is configured with a distinctive value. A real
receiver process (JSON logs captured to a file, debug level) takes webhooks from
every source with every credential, runs Redis and Prometheus steps with
credentials in their URLs, and posts to every sink; the stand-in PagerDuty,
Slack and webhook servers answer with errors that echo the credentials they were
sent back, the worst case for error messages. Then every place a secret could
land is searched.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import redis
from conftest import flat_settings
from fakes import RecordingServer, Reply, Request
from peers import Peer, poll, run_receiver, run_redis
from pydantic import SecretStr, ValidationError

from receiver.errors import ConfigError
from receiver.settings import load_settings
from receiver.sinks.render import alertmanager_dedup_key

pytestmark = pytest.mark.e2e

AUTH_TOKEN = "sec-auth-token-A1xq"
AUTH_TOKEN_2 = "sec-auth-token-B2zr"
BASIC_PASSWORD = "sec-basic-pass-C3vk"
PD_SIGNING = "sec-pd-signing-D4mw"
ROUTING_KEY = "sec-routing-key-E5np"
PD_API_TOKEN = "sec-pd-api-token-F6hy"
PD_EVENT_KEY = "sec-pd-event-key-G7tb"
SLACK_PATH = "sec-slack-path-H8gd"
WEBHOOK_TOKEN = "sec-webhook-token-I9fs"
REDIS_PASSWORD = "sec-redis-pass-J10ca"
REDIS_WRONG = "sec-redis-wrong-K11ej"
PROM_PASSWORD = "sec-prom-pass-L12ux"
PRESENTED_WRONG = "sec-presented-wrong-M13"
SECRETS = {
    name: value
    for name, value in globals().copy().items()
    if isinstance(value, str) and value.startswith("sec-")
}
GROUP_KEY = '{}:{alertname="LeakyAlert"}'

RULES = """
playbooks:
  leaky:
    diagnostics:
      - type: redis.get
        keys: ["leaky:{labels.alertname}"]
      - type: redis.get
        name: wrong password
        redis: broken
        keys: [k]
      - type: redis.info
      - type: prometheus.query
        query: up
    remediation:
      - type: redis.delete_keys
        keys: ["leaky:gone"]
    guards: {cooldown: 0s, budget: {max: 100, window: 1h}}
    sinks: [pagerduty_note, pagerduty_event, slack, webhook]
rules:
  - name: leaky-pagerduty
    sources: [pagerduty]
    match: ['incident_key="leaky"']
    playbook: leaky
  - name: leaky
    match: ['alertname=~"Leaky.*"']
    playbook: leaky
"""


def echo(request: Request) -> Reply:
    """Answer 400 with everything the client sent: headers, path, query, body."""
    return Reply(
        400,
        {
            "error": {
                "message": "rejected",
                "headers": request.headers,
                "path": request.path,
                "query": request.query,
                "body": request.body.decode(errors="replace"),
            }
        },
    )


def leaks(text: str, *, allow: tuple[str, ...] = ()) -> list[str]:
    """Names of the secrets found in ``text``."""
    return [n for n, v in SECRETS.items() if v in text and n not in allow]


def signed(body: bytes, secret: str = PD_SIGNING) -> str:
    return "v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def am_payload(name: str) -> dict:
    started = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    return {
        "version": "4",
        "status": "firing",
        "receiver": "rx",
        "groupKey": GROUP_KEY,
        "externalURL": "http://alertmanager.test",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": name},
                "annotations": {},
                "startsAt": started,
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": hashlib.sha256(name.encode()).hexdigest()[:16],
            }
        ],
    }


def pd_payload() -> bytes:
    now = datetime.now(UTC)
    return json.dumps(
        {
            "event": {
                "id": "01JLEAKY0000000000000000001",
                "event_type": "incident.triggered",
                "resource_type": "incident",
                "occurred_at": now.isoformat(),
                "data": {
                    "id": "QLEAKPD",
                    "type": "incident",
                    "status": "triggered",
                    "incident_key": "leaky",
                    "created_at": (now - timedelta(minutes=1)).isoformat(),
                    "title": "LeakyIncident",
                },
            }
        }
    ).encode()


BEARER = {"Authorization": f"Bearer {AUTH_TOKEN}"}
EVENT = {
    "routing_key": ROUTING_KEY,
    "event_action": "trigger",
    "dedup_key": "leaky-event",
    "payload": {
        "summary": "LeakyEvent",
        "source": "test",
        "severity": "error",
        "class": "LeakyEvent",
    },
}


@contextlib.contextmanager
def leaky_world(tmp_path: Path) -> Iterator[tuple[Peer, RecordingServer]]:
    """A receiver with every secret set; stand-ins that echo what they get."""
    with run_redis(tmp_path) as plain_url, RecordingServer() as fake:
        with redis.Redis.from_url(plain_url) as raw:
            raw.config_set("requirepass", REDIS_PASSWORD)
        redis_url = plain_url.replace("redis://", f"redis://:{REDIS_PASSWORD}@")
        broken_url = plain_url.replace("redis://", f"redis://:{REDIS_WRONG}@")
        incidents = {alertmanager_dedup_key(GROUP_KEY): "QLEAKAM"}

        def lookup(request: Request) -> Reply:
            key = request.query.get("incident_key", [""])[0]
            found = [{"id": incidents[key]}] if key in incidents else []
            return Reply(200, {"incidents": found})

        fake.route("GET", "/incidents", lookup)
        for method, path in (
            ("POST", r"/incidents/.*/notes"),
            ("POST", "/v2/enqueue"),
            ("POST", f"/services/T1/B1/{SLACK_PATH}"),
            ("POST", "/hook"),
            ("GET", "/api/v1/query"),
        ):
            fake.route(method, path, echo)
        host = f"127.0.0.1:{fake.port}"
        env = {
            "RECEIVER_MODE": "execute",
            "RECEIVER_LOG_LEVEL": "debug",
            "RECEIVER_STORE": f"sqlite:///{tmp_path / 'state.db'}",
            "RECEIVER_AUTH_TOKENS": f"{AUTH_TOKEN},{AUTH_TOKEN_2}",
            "RECEIVER_BASIC_AUTH": f"am:{BASIC_PASSWORD}",
            "RECEIVER_PAGERDUTY_SECRETS": PD_SIGNING,
            "RECEIVER_ROUTING_KEYS": ROUTING_KEY,
            "RECEIVER_REDIS_TARGETS": f"default={redis_url},broken={broken_url}",
            "RECEIVER_PROMETHEUS_TARGETS": f"default=http://prom:{PROM_PASSWORD}@{host}",
            "RECEIVER_PAGERDUTY_API_URL": fake.url,
            "RECEIVER_PAGERDUTY_API_TOKEN": PD_API_TOKEN,
            "RECEIVER_PAGERDUTY_FROM": "bot@example.com",
            "RECEIVER_PAGERDUTY_EVENTS_URL": f"{fake.url}/v2/enqueue",
            "RECEIVER_PAGERDUTY_ROUTING_KEY": PD_EVENT_KEY,
            "RECEIVER_SLACK_WEBHOOK_URL": f"{fake.url}/services/T1/B1/{SLACK_PATH}",
            "RECEIVER_WEBHOOK_URLS": f"{fake.url}/hook?token={WEBHOOK_TOKEN}",
            "RECEIVER_SINK_ATTEMPTS": "1",
        }
        rules = tmp_path / "rules.yaml"
        rules.write_text(textwrap.dedent(RULES))
        with run_receiver(tmp_path, rules=rules, env=env) as rx:
            yield rx, fake


def accepted(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def send_with_every_credential(base: str) -> list[str]:
    """One payload per source and credential kind; their journal ids."""
    basic = base64.b64encode(f"am:{BASIC_PASSWORD}".encode()).decode()
    ids = [
        accepted(
            httpx.post(
                f"{base}/webhooks/alertmanager", json=am_payload(name), headers=auth
            )
        )
        for name, auth in (
            ("LeakyAlert", BEARER),
            ("LeakyBasic", {"Authorization": f"Basic {basic}"}),
        )
    ]
    body = pd_payload()
    pd_headers = {"Content-Type": "application/json", "X-PagerDuty-Signature": ""}
    pd_headers["X-PagerDuty-Signature"] = signed(body)
    ids.append(
        accepted(
            httpx.post(f"{base}/webhooks/pagerduty", content=body, headers=pd_headers)
        )
    )
    ids.append(accepted(httpx.post(f"{base}/v2/enqueue", json=EVENT)))
    return ids


def send_wrong_credentials(base: str) -> None:
    """Wrong credentials of every kind, carrying secret-looking values."""
    wrong_basic = base64.b64encode(f"am:{PRESENTED_WRONG}".encode()).decode()
    body = pd_payload()
    responses = [
        httpx.post(
            f"{base}/webhooks/alertmanager",
            json=am_payload("LeakyAlert"),
            headers={"Authorization": auth},
        )
        for auth in (f"Bearer {PRESENTED_WRONG}", f"Basic {wrong_basic}")
    ]
    responses.append(
        httpx.post(
            f"{base}/webhooks/pagerduty",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-PagerDuty-Signature": signed(body, PRESENTED_WRONG),
            },
        )
    )
    responses.append(
        httpx.post(f"{base}/v2/enqueue", json={**EVENT, "routing_key": PRESENTED_WRONG})
    )
    for response in responses:
        assert response.status_code in (401, 403), response.text
        assert leaks(response.text) == []


def read_back(base: str, ids: list[str]) -> tuple[str, str, list[str]]:
    """Once every sink outcome is recorded: decisions, payload list, each payload."""

    def sink_records() -> list[dict]:
        found = []
        for pid in ids:
            found += httpx.get(
                f"{base}/api/v1/decisions",
                params={"payload_id": f"{pid}.sinks"},
                headers=BEARER,
            ).json()["decisions"]
        return found

    assert poll(lambda: len(sink_records()) == len(ids), timeout=30)
    time.sleep(0.3)
    decisions = httpx.get(
        f"{base}/api/v1/decisions", params={"limit": 1000}, headers=BEARER
    ).text
    listing = httpx.get(f"{base}/api/v1/payloads", headers=BEARER).text
    payloads = [
        httpx.get(f"{base}/api/v1/payloads/{pid}", headers=BEARER).text for pid in ids
    ]
    return decisions, listing, payloads


def check_the_paths_ran(logs: str, decisions: str, fake: RecordingServer) -> None:
    """Redis auth failed, Prometheus refused, every sink failed on an echo."""
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    failures = [
        r
        for r in records
        if r.get("event") == "sink_finished" and r["status"] == "failed"
    ]
    assert {r["sink"] for r in failures} == {
        "pagerduty_note",
        "pagerduty_event",
        "slack",
        "webhook",
    }
    assert any("***" in r["detail"] for r in failures)
    assert "refused our credentials" in decisions
    assert "query rejected" in decisions
    assert fake.seen("POST", r"/incidents/QLEAK(AM|PD)/notes")


def test_no_secret_reaches_logs_journal_decisions_sinks_or_errors(tmp_path):
    """Every configured secret stays out of every place people and tools read."""
    with leaky_world(tmp_path) as (rx, fake):
        ids = send_with_every_credential(rx.url)
        send_wrong_credentials(rx.url)
        decisions, listing, payloads = read_back(rx.url, ids)
        logs = rx.log.read_text()
        check_the_paths_ran(logs, decisions, fake)

        assert leaks(logs) == []
        assert leaks(decisions) == []
        assert leaks(listing) == []
        for pid, text in zip(ids, payloads, strict=True):
            assert leaks(text) == [], pid
        for request in fake.requests:
            text = request.body.decode()
            if request.path == "/v2/enqueue":
                sent = request.json()
                assert sent.pop("routing_key") == PD_EVENT_KEY
                text = json.dumps(sent)
            assert leaks(text) == [], request.path


def test_the_events_v2_routing_key_is_not_journaled(tmp_path):
    """An accepted Events API v2 request is stored without its routing key."""
    env = {"RECEIVER_ROUTING_KEYS": ROUTING_KEY, "RECEIVER_AUTH_TOKENS": AUTH_TOKEN}
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent(RULES))
    event = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "payload": {"summary": "x", "source": "y", "severity": "info"},
    }
    with run_receiver(tmp_path, rules=rules, env=env) as rx:
        pid = httpx.post(f"{rx.url}/v2/enqueue", json=event).json()["id"]
        stored = httpx.get(
            f"{rx.url}/api/v1/payloads/{pid}",
            headers={"Authorization": f"Bearer {AUTH_TOKEN}"},
        ).text
    assert ROUTING_KEY not in stored


# ------------------------------------------------------------------ settings


def every_secret_settings(**overrides) -> dict:
    values = {
        "auth_tokens": [AUTH_TOKEN],
        "basic_auth": f"am:{BASIC_PASSWORD}",
        "pagerduty_secrets": [PD_SIGNING],
        "routing_keys": [ROUTING_KEY],
        "pagerduty_api_token": PD_API_TOKEN,
        "pagerduty_from": "bot@example.com",
        "pagerduty_routing_key": PD_EVENT_KEY,
        "slack_webhook_url": f"https://hooks.example/services/T/B/{SLACK_PATH}",
        "webhook_urls": [f"https://audit.example/hook?token={WEBHOOK_TOKEN}"],
        "redis_targets": {"app": f"redis://:{REDIS_PASSWORD}@cache:6379/0"},
        "prometheus_targets": {"default": f"http://u:{PROM_PASSWORD}@prom:9090"},
    }
    values.update(overrides)
    return values


def test_settings_never_print_their_secrets():
    """repr, str and JSON dumps of settings mask every secret."""
    settings = flat_settings(**every_secret_settings())
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert leaks(text) == []
    found = set(settings.secret_values())
    expected = {
        v
        for n, v in SECRETS.items()
        if n not in ("REDIS_WRONG", "PRESENTED_WRONG", "AUTH_TOKEN_2")
    }
    assert all(any(v in f for f in found) for v in expected), expected - found


def test_invalid_settings_errors_do_not_echo_secrets():
    """A settings error (ConfigError or ValidationError) names the field, not values."""
    with pytest.raises(ValidationError) as caught:
        flat_settings(
            **every_secret_settings(
                store="redis://cache:6379/0", pagerduty_from="not-an-email"
            )
        )
    assert leaks(str(caught.value)) == []
    with pytest.raises(ConfigError) as config:
        load_settings(
            environ={
                "RECEIVER_STORE": "redis://cache:6379/0",
                "RECEIVER_REDIS_TARGETS": f"app=redis://:{REDIS_PASSWORD}@cache:6379",
                "RECEIVER_SLACK_WEBHOOK_URL": f"https://h/{SLACK_PATH}",
                "RECEIVER_SINKS": "slack,pagerduty_note",
            }
        )
    assert "own state store" in str(config.value)
    assert leaks(str(config.value)) == []


def test_a_sink_listed_without_its_credentials_is_refused_at_startup():
    """sinks: [pagerduty_note] without token and From fails with both names."""
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"RECEIVER_SINKS": "pagerduty_note"})
    assert "RECEIVER_PAGERDUTY_API_TOKEN and RECEIVER_PAGERDUTY_FROM" in str(
        caught.value
    )


def test_secret_values_cover_url_credentials():
    """Passwords inside target URLs are known secrets, for log redaction."""
    settings = flat_settings(
        redis_targets={"a": SecretStr(f"redis://user:{REDIS_PASSWORD}@h:1/0")}
    )
    assert REDIS_PASSWORD in settings.secret_values()
