"""Decision pages and approvals against a reference model (Hypothesis state machine).

Both stores (a SQLite file and a real redis-server) run the same random sequence
of writes, approval decisions, expiry sweeps (with a clock that advances on every
step) and paged reads; every page must be what the model says: newest first,
filtered, no record twice, none skipped.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from test_store_contract import redis_url  # noqa: F401 (fixture)

from receiver.model import iso
from receiver.store.base import Approval, DecisionQuery, Store
from receiver.store.redis import RedisStore
from receiver.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)
RULES = ("r1", "r2", "r3")
DECISIONS = ("executed", "skipped", "dry_run")
STATUSES = ("pending", "approved", "rejected", "expired")


class ReadModel(RuleBasedStateMachine):
    """Random writes and paged reads; the store must agree with plain lists."""

    backend = "sqlite"
    redis = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory()
        self.prefix = f"model-{uuid.uuid4().hex[:10]}"
        self.store: Store = (
            RedisStore(self.redis, prefix=self.prefix)
            if self.backend == "redis"
            else SqliteStore(str(Path(self.tmp.name) / "s.db"))
        )
        self.records: list[dict[str, Any]] = []
        self.approvals: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.ticks = 0

    def now(self) -> datetime:
        self.ticks += 1
        return T0 + timedelta(minutes=self.ticks)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        if self.backend == "redis":
            from test_store_contract import _forget_prefix  # noqa: PLC0415

            self.run(_forget_prefix(self.redis, self.prefix))
        self.loop.close()
        self.tmp.cleanup()

    @initialize()
    def start(self) -> None:
        self.ticks = 0

    @rule(
        rule_name=st.sampled_from(RULES),
        decision=st.sampled_from(DECISIONS),
        fingerprint=st.sampled_from(("fa", "fb")),
        count=st.integers(min_value=1, max_value=3),
    )
    def record(self, rule_name, decision, fingerprint, count) -> None:
        batch = []
        for _ in range(count):
            at = self.now()
            batch.append(
                {
                    "n": len(self.records) + len(batch),
                    "fingerprint": fingerprint,
                    "payload_id": "p",
                    "decided_at": iso(at),
                    "matches": [
                        {
                            "rule": rule_name,
                            "playbook": f"pb-{rule_name}",
                            "steps": [{"decision": decision}],
                        }
                    ],
                }
            )
        self.run(self.store.record(batch))
        self.records += batch

    @rule(
        limit=st.integers(min_value=1, max_value=4),
        rule_name=st.none() | st.sampled_from(RULES),
        decision=st.none() | st.sampled_from(DECISIONS),
        fingerprint=st.none() | st.sampled_from(("fa", "fb")),
    )
    def page_decisions(self, limit, rule_name, decision, fingerprint) -> None:
        query = DecisionQuery(
            limit=limit, rule=rule_name, decision=decision, fingerprint=fingerprint
        )
        expected = [
            r["n"]
            for r in reversed(self.records)
            if (rule_name is None or r["matches"][0]["rule"] == rule_name)
            and (
                decision is None or r["matches"][0]["steps"][0]["decision"] == decision
            )
            and (fingerprint is None or r["fingerprint"] == fingerprint)
        ]
        seen: list[int] = []
        cursor = None
        for _ in range(len(self.records) + 2):
            page = self.run(
                self.store.decision_page(
                    DecisionQuery(**{**query.__dict__, "cursor": cursor})
                )
            )
            assert len(page.records) <= limit
            seen += [json.loads(r)["n"] for r in page.records]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == expected

    @rule(ttl=st.integers(min_value=1, max_value=6))
    def put_approval(self, ttl) -> None:
        created = self.now()
        approval = Approval(
            id=f"a{len(self.order):04d}",
            key=f"k{len(self.order)}",
            created_at=created,
            expires_at=created + timedelta(minutes=ttl),
            request={},
        )
        self.run(self.store.put_approval(approval))
        self.approvals[approval.id] = {
            "status": "pending",
            "expires_at": approval.expires_at,
        }
        self.order.append(approval.id)

    @rule(data=st.data(), status=st.sampled_from(("approved", "rejected")))
    def decide(self, data, status) -> None:
        if not self.order:
            return
        approval_id = data.draw(st.sampled_from(self.order))
        decided = self.run(
            self.store.decide_approval(approval_id, status, "model", self.now())
        )
        expected = self.approvals[approval_id]["status"] == "pending"
        assert (decided is not None) == expected
        if expected:
            self.approvals[approval_id]["status"] = status

    @rule()
    def sweep(self) -> None:
        now = self.now()
        due = [
            i
            for i, a in self.approvals.items()
            if a["status"] == "pending" and a["expires_at"] <= now
        ]
        assert self.run(self.store.expire_approvals(now)) == len(due)
        for approval_id in due:
            self.approvals[approval_id]["status"] = "expired"

    @rule(
        limit=st.integers(min_value=1, max_value=4),
        status=st.none() | st.sampled_from(STATUSES),
    )
    def page_approvals(self, limit, status) -> None:
        expected = [
            i
            for i in reversed(self.order)
            if status is None or self.approvals[i]["status"] == status
        ]
        seen: list[str] = []
        before = None
        for _ in range(len(self.order) + 2):
            page = self.run(self.store.approvals(status, limit=limit, before=before))
            seen += [a.id for a in page]
            if len(page) < limit:
                break
            before = page[-1].id
        assert seen == expected

    @invariant()
    def statuses_agree(self) -> None:
        if not self.order:
            return
        listed = self.run(self.store.approvals(limit=1000))
        assert {a.id: a.status for a in listed} == {
            i: a["status"] for i, a in self.approvals.items()
        }


MODEL_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def test_sqlite_reads_match_the_model():
    """SQLite pages and approval expiry agree with the reference model."""
    ReadModel.backend = "sqlite"
    run = ReadModel.TestCase
    run.settings = MODEL_SETTINGS
    run().runTest()


@pytest.mark.e2e
def test_redis_reads_match_the_model(redis_url):  # noqa: F811 (the fixture)
    """Redis pages and approval expiry agree with the reference model."""

    class OnRedis(ReadModel):
        backend = "redis"
        redis = redis_url

    run = OnRedis.TestCase
    run.settings = MODEL_SETTINGS
    run().runTest()
