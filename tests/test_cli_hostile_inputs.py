"""The offline commands given the wrong thing: one line on stderr, exit 2, no traceback.

``receiver report`` pointed at a file that is not a receiver's store (text, an
empty file, a directory, another program's SQLite file) says so as ``backtest``
does and leaves the file alone; ``report`` and ``backtest`` pointed at a Redis
that does not answer say the store cannot be reached. A rule or rule-test file
that is not YAML is named with the line and column, on one line.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from receiver.cli import main

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
INCIDENT = "INC-2026-11-26-001"


def _text(path: Path) -> None:
    path.write_text("not a database\n", encoding="utf-8")


def _empty(path: Path) -> None:
    path.touch()


def _directory(path: Path) -> None:
    path.mkdir()


def _foreign(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.commit()


def _snapshot(folder: Path) -> list[tuple[str, int]]:
    return [(p.name, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))]


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_text, "not a SQLite database"),
        (_empty, "holds no receiver tables"),
        (_directory, "not a file"),
        (_foreign, "holds no receiver tables"),
    ],
    ids=["text", "empty", "directory", "other-sqlite"],
)
def test_report_refuses_a_file_that_is_not_a_store(
    tmp_path, capsys, monkeypatch, make: Callable[[Path], None], problem: str
):
    """Exit 2 with one line naming the file, what is wrong and what to pass."""
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    folder = tmp_path / "data"
    folder.mkdir()
    db = folder / "given.db"
    make(db)
    before = _snapshot(folder)
    assert main(["report", INCIDENT, "--store", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"receiver: --store {db}: {problem}")
    assert "expected a receiver's SQLite store" in err[0]
    assert _snapshot(folder) == before


def test_report_names_the_setting_when_the_store_comes_from_the_settings(
    tmp_path, capsys, monkeypatch
):
    """Without --store, the refusal names store.url, the setting to fix."""
    db = tmp_path / "notes.txt"
    _text(db)
    monkeypatch.setenv("RECEIVER_STORE", f"sqlite:///{db}")
    assert main(["report", INCIDENT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"receiver: store.url {db}: not a SQLite database")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port bound but not listening: a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "command",
    [
        ["report", INCIDENT],
        ["backtest", "--rules", str(RULES), "--baseline", str(RULES)],
    ],
    ids=["report", "backtest"],
)
def test_an_unreachable_redis_store_is_one_line(capsys, closed_port, command):
    """Exit 2 with one line saying the store cannot be reached and what to check."""
    secret = "pw-5d4c3b2a1"
    url = f"redis://:{secret}@127.0.0.1:{closed_port}/0"
    assert main([*command, "--store", url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("receiver: cannot read the store: ")
    assert f"127.0.0.1:{closed_port}" in err[0]
    assert "check that it is up" in err[0]
    assert secret not in err[0]


@pytest.mark.parametrize(
    ("command", "name"),
    [(["rules", "check"], "broken.yaml"), (["rules", "test"], "broken.test.yaml")],
)
def test_a_rule_file_that_is_not_yaml_is_one_line_with_its_place(
    tmp_path, capsys, command, name
):
    """Line and column, what the parser expected and where it began: one line."""
    bad = tmp_path / name
    bad.write_text("rules: [\n  {name: a\n", encoding="utf-8")
    assert main([*command, str(bad)]) == 1
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "<unicode string>" not in said
    (line,) = [line for line in said.splitlines() if "invalid YAML" in line]
    assert line.endswith(
        "invalid YAML: line 3, column 1: expected ',' or '}', but got "
        "'<stream end>' (while parsing a flow mapping that began on line 2, "
        "column 3)"
    )


def test_a_tab_in_a_rule_file_says_to_indent_with_spaces(tmp_path, capsys):
    """A tab where YAML wants indentation is named, with the fix."""
    bad = tmp_path / "tabs.yaml"
    bad.write_text("rules:\n\t- name: a\n", encoding="utf-8")
    assert main(["rules", "check", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    want = (
        f"error: {bad}: invalid YAML: line 2, column 1: while scanning for the "
        "next token: found character '\\t' that cannot start any token; indent "
        "with spaces, YAML allows no tabs there"
    )
    assert err == [want]


def test_report_on_a_damaged_store_file_is_one_line(tmp_path, capsys, monkeypatch):
    """A store file damaged past its table list: exit 2, one line, no traceback."""
    monkeypatch.delenv("RECEIVER_STORE", raising=False)
    db = tmp_path / "receiver.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA page_size=4096")
        conn.execute("CREATE TABLE journal (id TEXT)")
        conn.execute("CREATE TABLE incidents (id TEXT PRIMARY KEY, body TEXT)")
        conn.executemany(
            "INSERT INTO incidents VALUES (?, ?)",
            [(f"INC-{n}", "x" * 500) for n in range(200)],
        )
    conn.close()
    data = bytearray(db.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page but the table list
    db.write_bytes(bytes(data))
    assert main(["report", INCIDENT, "--store", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"receiver: {db}: the incident {INCIDENT!r} cannot be")
    assert "integrity_check" in err[0]
