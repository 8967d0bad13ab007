"""Offline commands and NAME=VALUE settings: read-only backtests, masked logs, entries.

``receiver backtest`` refuses a file that is not a receiver's store and leaves
it as it was; ``replay``, ``backtest`` and ``report`` log with ``serve``'s
secrets mask; a NAME=VALUE setting refuses an entry without ``=`` or an empty
one between two others, naming the setting and never the entry.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
from conftest import stored_payloads

from receiver.cli import main, offline
from receiver.errors import ConfigError
from receiver.settings import load_settings
from receiver.store import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
EXAMPLE = ROOT / "examples" / "alertmanager" / "sark-api-down.firing.json"
ADMIN_TOKEN = "adm-7f3c9e1d5b2a4680c1e2"


def _stored(db: Path, count: int = 2) -> Path:
    return stored_payloads(db, EXAMPLE.read_bytes(), count)


def _empty(path: Path) -> None:
    path.touch()


def _foreign(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
        db.commit()


def _text(path: Path) -> None:
    path.write_text("not a database\n", encoding="utf-8")


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())
    }


@pytest.mark.parametrize("option", ["--db", "--store"])
@pytest.mark.parametrize(
    "case",
    [
        (_empty, "holds no receiver tables"),
        (_foreign, "holds no receiver tables"),
        (_text, "not a SQLite database"),
        (None, "no such database file"),
    ],
    ids=["empty", "other-sqlite", "text", "missing"],
)
def test_backtest_refuses_a_file_that_is_not_a_store_and_leaves_it_alone(
    tmp_path, capsys, monkeypatch, option, case
):
    """A missing, empty or foreign file is exit 2, one line, and stays as it was."""
    make, problem = case
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "given.db"
    if make is not None:
        make(db)
    before = _snapshot(folder)
    target = str(db) if option == "--db" else f"sqlite:///{db}"
    assert main(["backtest", "--rules", str(RULES), option, target]) == 2
    assert _snapshot(folder) == before, "the file was written, or one created beside"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"receiver: {option} {db}: {problem}")
    assert "expected a receiver's SQLite store" in err[0]


def test_backtest_leaves_the_claims_in_a_store_file_alone(tmp_path, monkeypatch):
    """An entry a live worker claimed is still claimed after a backtest of the file."""
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    db = _stored(tmp_path / "receiver.db", count=1)

    async def claim() -> None:
        store = SqliteStore(str(db))
        assert await store.claim("worker-1", 0, datetime.now(UTC)) is not None
        await store.close()

    asyncio.run(claim())
    assert main(["backtest", "--rules", str(RULES), "--db", str(db)]) == 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        states = conn.execute("SELECT state, consumer FROM journal").fetchall()
    assert states == [("claimed", "worker-1")]


def _planner_quoting(secret: str) -> Callable[..., None]:
    def plan(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"planner saw Bearer {secret}")

    return plan


def test_replay_masks_secrets_in_its_log_lines(capsys, monkeypatch):
    """A traceback replay logs that quotes the admin token shows it as ***."""
    monkeypatch.setenv("RECEIVER_ADMIN_TOKENS", ADMIN_TOKEN)
    monkeypatch.setattr(
        "receiver.engine.processing.plan", _planner_quoting(ADMIN_TOKEN)
    )
    assert main(["replay", "--rules", str(RULES), str(EXAMPLE)]) == 0
    err = capsys.readouterr().err
    assert "alert_not_decided" in err
    assert "planner saw Bearer ***" in err
    assert ADMIN_TOKEN not in err


def test_backtest_masks_secrets_in_its_log_lines(tmp_path, capsys, monkeypatch):
    """A traceback backtest logs that quotes the admin token shows it as ***."""
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    monkeypatch.setenv("RECEIVER_ADMIN_TOKENS", ADMIN_TOKEN)
    db = _stored(tmp_path / "receiver.db")
    monkeypatch.setattr(
        "receiver.engine.processing.plan", _planner_quoting(ADMIN_TOKEN)
    )
    assert main(["backtest", "--rules", str(RULES), "--db", str(db)]) == 0
    err = capsys.readouterr().err
    assert "alert_not_decided" in err
    assert "planner saw Bearer ***" in err
    assert ADMIN_TOKEN not in err


async def test_report_masks_secrets_in_its_log_lines(capsys, monkeypatch):
    """A line logged while the report is made shows the admin token as ***."""
    monkeypatch.setenv("RECEIVER_ADMIN_TOKENS", ADMIN_TOKEN)

    async def print_report(*_args: object) -> int:
        structlog.get_logger("receiver").error(
            "report_failed", error=f"store answered Bearer {ADMIN_TOKEN}"
        )
        return 1

    monkeypatch.setattr("receiver.app_incidents.print_report", print_report)
    args = argparse.Namespace(
        incident_id="INC-2026-01-01-001", config=None, store=None, rules=None
    )
    assert await offline.run_report(args) == 1
    err = capsys.readouterr().err
    assert "store answered Bearer ***" in err
    assert ADMIN_TOKEN not in err


NAME_VALUE_SETTINGS = [
    ("RECEIVER_APPROVER_TOKENS", "auth.approver_tokens", "tok-a1b2c3d4e5"),
    ("RECEIVER_REDIS_TARGETS", "redis.targets", "redis://:pw-9z8y7x@cache:6379/0"),
    ("RECEIVER_SLACK_APPROVERS", "slack.approvers", "alice@example.com"),
]


def _settings_error(variable: str, value: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={variable: value})
    return str(caught.value)


@pytest.mark.parametrize(("variable", "setting", "value"), NAME_VALUE_SETTINGS)
@pytest.mark.parametrize("gap", [",,", ", ,", ",\n,"])
def test_an_empty_entry_between_name_value_pairs_is_refused(
    variable, setting, value, gap
):
    """``a=1,,b=2``: an entry went missing; the error names the setting, no value."""
    error = _settings_error(variable, f"one={value}{gap}two={value}")
    assert f"{setting} ({variable}): entry 2 of 3 is empty" in error
    assert value not in error


@pytest.mark.parametrize(("variable", "setting", "value"), NAME_VALUE_SETTINGS)
@pytest.mark.parametrize(
    "entry", ["{value}", "={value}", "name="], ids=["no-equals", "no-name", "no-value"]
)
def test_a_name_value_entry_without_both_parts_is_refused_unshown(
    variable, setting, value, entry
):
    """An entry that is not NAME=VALUE is refused by position, never echoed."""
    text = f"one={value},{entry.format(value=value)},two={value}"
    error = _settings_error(variable, text)
    expected = f"{setting} ({variable}): entry 2 of 3 is not NAME=URL or NAME=VALUE"
    assert expected in error
    assert value not in error


@pytest.mark.parametrize(("variable", "setting", "value"), NAME_VALUE_SETTINGS)
def test_a_name_given_twice_is_refused(variable, setting, value):
    """``alice=t1,alice=t2``: the first was silently lost; now refused, unshown."""
    error = _settings_error(variable, f"one={value},two={value},one={value}2")
    assert f"{setting} ({variable}): entry 3 of 3 names 'one' again" in error
    assert value not in error


@pytest.mark.parametrize(("variable", "setting", "value"), NAME_VALUE_SETTINGS)
@pytest.mark.parametrize(
    ("between", "end"),
    [(",", ","), ("\n", "\n"), (",\n", ",\n"), ("\n\n", "\n \n"), (" , ", " , ")],
)
def test_trailing_commas_and_blank_lines_in_name_value_pairs_are_ignored(
    variable, setting, value, between, end
):
    """A comma ending the value or a line, or a blank line, loses nothing."""
    text = f"one={value}{between}two={value}{end}"
    settings = load_settings(environ={variable: text})
    group, field = setting.split(".")
    assert sorted(getattr(getattr(settings, group), field)) == ["one", "two"]


def test_a_config_file_that_repeats_a_key_is_refused(tmp_path):
    """A second ``auth:`` group silently replaced the first; now refused by line."""
    config = tmp_path / "receiver.yaml"
    config.write_text(
        "auth:\n  admin_tokens: [first-admin-secret]\n"
        "server:\n  port: 8080\n"
        "auth:\n  read_tokens: [read-secret]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    error = str(caught.value)
    assert "duplicate key 'auth' (line 5, first on line 1)" in error
    assert "secret" not in error
