"""`receiver replay --from` and `receiver backtest`: bad input is one line, exit 2.

A 200 answer that is not a stored payload, a payload id that would leave its
path segment, a `--since` past what a date can hold, a negative
`--max-changed`, a `--limit` under 1, rules that do not load; and a period
holding more payloads than `--limit` says so rather than replaying part of it
silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import stored_payloads
from fakes import RecordingServer, Reply

from receiver.cli import main

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
EXAMPLE = ROOT / "examples" / "alertmanager" / "sark-api-down.firing.json"


@pytest.mark.parametrize(
    "reply",
    [Reply(200, "<html>sign in</html>"), Reply(200, [1, 2]), Reply(200, {"id": "x"})],
    ids=["html", "list", "no-payload"],
)
def test_replay_from_an_answer_that_is_not_a_payload(capsys, reply):
    """A 200 that holds no stored payload is exit 2 with one line, no traceback."""
    with RecordingServer() as server:
        server.script("GET", "/api/v1/payloads/p1", reply)
        assert (
            main(["replay", "--rules", str(RULES), "--from", f"{server.url}/p1"]) == 2
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"receiver: --from {server.url}/p1: the answer holds no")


def test_replay_from_keeps_the_id_in_its_path_segment(capsys):
    """'?' and '#' in an id are sent encoded; '..' is refused."""
    with RecordingServer() as server:
        server.script("GET", "/api/v1/.*", Reply(404, {"title": "none"}))
        assert main(["replay", "--from", f"{server.url}/a?b=1#c"]) == 2
        assert main(["replay", "--from", f"{server.url}/.."]) == 2
        paths = [r.path for r in server.requests]
    assert paths == ["/api/v1/payloads/a%3Fb%3D1%23c"]
    assert "expected BASE_URL/PAYLOAD_ID" in capsys.readouterr().err


def _db(tmp_path: Path, count: int) -> Path:
    return stored_payloads(tmp_path / "r.db", EXAMPLE.read_bytes(), count)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--max-changed", "-1"], "--max-changed -1: give 0 or more"),
        (["--limit", "0"], "--limit 0: give 1 or more"),
    ],
)
def test_backtest_bad_numbers_exit_2(tmp_path, capsys, extra, fragment):
    """A negative --max-changed or a --limit under 1 is a bad argument."""
    db = _db(tmp_path, 1)
    assert main(["backtest", "--rules", str(RULES), "--db", str(db), *extra]) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("since", ["999999999d", "99999999999999999999999w"])
def test_backtest_a_very_long_period_means_everything(tmp_path, capsys, since):
    """A period past any date replays everything stored, not a traceback."""
    db = _db(tmp_path, 2)
    assert (
        main(["backtest", "--rules", str(RULES), "--db", str(db), "--since", since])
        == 0
    )
    assert capsys.readouterr().out.startswith("2 payloads, ")


def test_backtest_rules_that_do_not_load_exit_2(tmp_path, capsys):
    """Exit 1 is only "more than --max-changed"; broken rules are exit 2."""
    db = _db(tmp_path, 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n", encoding="utf-8")
    code = main(
        ["backtest", "--rules", str(bad), "--db", str(db), "--max-changed", "0"]
    )
    assert code == 2
    assert f"error: {bad}: invalid YAML" in capsys.readouterr().err


def test_backtest_says_when_the_limit_cut_the_period(tmp_path, capsys):
    """More payloads in the period than --limit: the newest are replayed, said so."""
    db = _db(tmp_path, 3)
    args = ["backtest", "--rules", str(RULES), "--db", str(db), "--json"]
    assert main([*args, "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    assert '"payloads": 2' in out
    assert "more than --limit 2 payloads; only the newest 2" in err
    assert main([*args, "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    assert '"payloads": 3' in out
    assert err == ""
