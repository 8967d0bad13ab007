"""Journal and record ids: time-ordered, distinct, random digits taken in blocks.

``new_id`` takes its random digits from the system in blocks (one system call,
one release of the GIL, per block rather than per id). These tests prove that
the ids stay distinct and ordered by time, that a block running out is refilled,
and that a process forked from one holding a block never reuses its digits.
"""

from __future__ import annotations

import os
import re

import pytest

from receiver.store import handles
from receiver.store.handles import _SystemHex, new_id

ID = re.compile(r"[0-9a-f]{25}")


def test_ids_are_distinct_hex_ordered_by_their_millisecond() -> None:
    """Thousands of ids (several blocks): all distinct, 25 hex digits, time first."""
    ids = [new_id() for _ in range(_SystemHex.BLOCK * 3 + 5)]
    assert len(set(ids)) == len(ids)
    assert all(ID.fullmatch(i) for i in ids)
    stamps = [i[:13] for i in ids]
    assert stamps == sorted(stamps)


def test_a_block_running_out_is_refilled_from_the_system(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One system call per block of ids; the next block is fresh randomness."""
    calls: list[int] = []
    real = os.urandom

    def urandom(size: int) -> bytes:
        calls.append(size)
        return real(size)

    monkeypatch.setattr(handles.os, "urandom", urandom)
    digits = _SystemHex()
    taken = [digits.take(12) for _ in range(_SystemHex.BLOCK + 1)]
    assert calls == [_SystemHex.BLOCK * 6, _SystemHex.BLOCK * 6]
    assert len(set(taken)) == len(taken)


def test_a_forked_child_never_hands_out_its_parents_digits() -> None:
    """A real fork: the child takes a block of its own; the parent goes on."""
    digits = _SystemHex()
    digits.take(12)
    parent_next = digits._hex[digits._at : digits._at + 12]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first digits, then leave at once
        os.write(write, digits.take(12).encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child_first = os.read(read, 64).decode()
    os.close(read)
    assert status == 0
    assert len(child_first) == 12
    assert child_first != parent_next
    assert digits.take(12) == parent_next
