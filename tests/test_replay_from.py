"""`receiver replay --from URL/ID` decides a payload stored by a running receiver."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from fakes import RecordingServer, Reply
from peers import run_receiver

from receiver.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "alertmanager" / "sark-api-down.firing.json"
TOKEN = "replay-from-token"


def test_replay_from_a_running_receiver(tmp_path, monkeypatch, capsys):
    """The stored payload is fetched with the API token and replayed in dry-run."""
    env = {"RECEIVER_AUTH_TOKENS": TOKEN}
    with run_receiver(tmp_path, rules=ROOT / "rules", env=env) as rx:
        response = httpx.post(
            f"{rx.url}/webhooks/alertmanager",
            content=EXAMPLE.read_bytes(),
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
            },
            timeout=5,
        )
        payload_id = response.json()["id"]
        monkeypatch.setenv("RECEIVER_AUTH_TOKENS", TOKEN)
        code = main(
            [
                "replay",
                "--json",
                "--rules",
                str(ROOT / "rules"),
                "--from",
                f"{rx.url}/{payload_id}",
            ]
        )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    [alert] = out["alerts"]
    assert alert["labels"]["alertname"] == "SarkApiDown"
    assert alert["matches"][0]["playbook"] == "api-down"
    assert {s["decision"] for s in alert["matches"][0]["steps"]} == {"dry_run"}


def test_replay_from_bad_reference(capsys):
    """A reference that is not BASE_URL/ID is a clear usage error (exit 2)."""
    assert main(["replay", "--from", "not-a-url"]) == 2
    assert "expected BASE_URL/PAYLOAD_ID" in capsys.readouterr().err


def test_replay_from_an_unreachable_or_refusing_receiver(capsys):
    """No receiver there, or one answering 404: exit 2 with what went wrong."""
    assert main(["replay", "--from", "http://127.0.0.1:1/abc"]) == 2
    assert "--from http://127.0.0.1:1/abc: cannot reach the receiver" in (
        capsys.readouterr().err
    )
    with RecordingServer() as server:
        server.script("GET", "/api/v1/payloads/gone", Reply(404, {"title": "none"}))
        assert main(["replay", "--from", f"{server.url}/gone"]) == 2
        assert [r.path for r in server.requests] == ["/api/v1/payloads/gone"]
    assert f"--from {server.url}/gone: HTTP 404: " in capsys.readouterr().err


def test_replay_from_uses_a_token_given_only_in_the_config_file(tmp_path):
    """`--config` is read for the token too, not only the environment."""
    config = tmp_path / "receiver.yaml"
    config.write_text('auth:\n  read_tokens: ["config-only-read-token"]\n')
    with RecordingServer() as server:
        server.script(
            "GET",
            "/api/v1/payloads/p1",
            Reply(200, {"payload": json.loads(EXAMPLE.read_bytes())}),
        )
        code = main(
            [
                "replay",
                "--config",
                str(config),
                "--rules",
                str(ROOT / "rules"),
                "--from",
                f"{server.url}/p1",
            ]
        )
        [request] = server.requests
    assert code == 0
    assert request.headers["Authorization"] == "Bearer config-only-read-token"
