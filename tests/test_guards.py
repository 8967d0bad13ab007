"""Every guard skips with its reason and its name, proved with a real store.

The injected clock advances a millisecond on every reading (and more where a
test moves time on): nothing here depends on two readings being equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from receiver.engine.guards import GuardDefaults, GuardKeeper, Refusal, idempotency_key
from receiver.engine.planner import PlanContext
from receiver.engine.runner import Runner
from receiver.engine.worker import Processor
from receiver.errors import PermanentStepError
from receiver.metrics import Metrics
from receiver.model import Alert, Decision, Silence, SourceView, StepResult, freeze
from receiver.rulebook.loader import load_rulebook
from receiver.steps.catalog import builtin_registry
from receiver.store import SqliteStore
from receiver.store.base import AlertState, JournalEntry, Pause

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)

RULES = """
playbooks:
  hook:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards:
      cooldown: 0s
      budget: {max: 100, window: 1h}
  cooled:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards:
      cooldown: 10m
      budget: {max: 100, window: 1h}
  budgeted:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards:
      cooldown: 0s
      budget: {max: 2, window: 1h}
  breaker:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards:
      cooldown: 0s
      budget: {max: 100, window: 1h}
      circuit_breaker: {failures: 2, cool_off: 30m}
  wide:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards:
      cooldown: 0s
      budget: {max: 100, window: 1h}
      circuit_breaker: {failures: 2, cool_off: 30m, scope: playbook}
  patient:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards:
      cooldown: 0s
      require_firing_for: 5m
  careful:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
        approval: required
    guards:
      cooldown: 0s
  forced:
    remediation:
      - type: http.request
        url: "http://hooks.test/{labels.service}"
    guards:
      dry_run: true
rules:
  - {name: hook, match: ['alertname="Hook"'], playbook: hook}
  - {name: cooled, match: ['alertname="Cooled"'], playbook: cooled}
  - {name: cooled-a, match: ['alertname="CooledA"'], playbook: cooled, as: cooled-a}
  - {name: cooled-b, match: ['alertname="CooledB"'], playbook: cooled, as: cooled-b}
  - {name: budgeted, match: ['alertname="Budgeted"'], playbook: budgeted}
  - {name: breaker, match: ['alertname="Breaker"'], playbook: breaker}
  - {name: wide, match: ['alertname="Wide"'], playbook: wide}
  - {name: patient, match: ['alertname="Patient"'], playbook: patient}
  - {name: careful, match: ['alertname="Careful"'], playbook: careful}
  - {name: forced, match: ['alertname="Forced"'], playbook: forced}
"""


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class CountingExecutor:
    """An http executor at our own interface: counts runs, can be told to fail."""

    calls: list[str] = field(default_factory=list)
    fail: bool = False

    async def run(self, step, alert):
        self.calls.append(step.url)
        if self.fail:
            raise PermanentStepError(f"POST {step.url}: HTTP 500")
        return StepResult(ok=True, reason=f"POST {step.url}: HTTP 200")

    async def verify(self, check, step, alert):
        return StepResult(ok=True, reason="verified")


@dataclass
class Harness:
    processor: Processor
    store: SqliteStore
    clock: Clock
    executor: CountingExecutor
    keeper: GuardKeeper | None = None

    async def decide(self, alertname, *, service="api", fp=None, started=None):
        alert = Alert(
            source="alertmanager",
            fingerprint=fp or f"fp-{alertname}-{service}",
            status="firing",
            labels=freeze({"alertname": alertname, "service": service}),
            starts_at=started or T0 - timedelta(hours=1),
        )
        traces = await self.processor.decide([alert], "payload-1")
        return traces[0].matches[0].steps[-1]


@pytest.fixture
async def harness(tmp_path):
    (tmp_path / "rules.yaml").write_text(RULES)
    rulebook = load_rulebook([tmp_path / "rules.yaml"], steps=builtin_registry())
    store = SqliteStore(str(tmp_path / "state.db"))
    clock = Clock()
    executor = CountingExecutor()
    keeper = GuardKeeper(
        store,
        "test-owner",
        GuardDefaults(global_budget_max=1000, cooldown=timedelta(0)),
    )
    runner = Runner({"http": executor}, clock, mode="execute", guards=keeper)
    processor = Processor(
        rulebook, runner, clock, PlanContext(execute=True), store=store
    )
    yield Harness(processor, store, clock, executor, keeper)
    await store.close()


async def test_runs_once_per_occurrence(harness):
    """A resend of the same occurrence (same startsAt) is 'already done'."""
    first = await harness.decide("Hook")
    again = await harness.decide("Hook")
    assert first.decision is Decision.EXECUTED
    assert again.decision is Decision.SKIPPED
    assert again.reason.startswith("already done by test-owner")
    assert len(harness.executor.calls) == 1


async def test_new_occurrence_runs_again(harness):
    """A new startsAt for the same fingerprint is a new occurrence and runs."""
    await harness.decide("Hook", started=T0 - timedelta(hours=1))
    later = await harness.decide("Hook", started=T0 - timedelta(minutes=5))
    assert later.decision is Decision.EXECUTED
    assert len(harness.executor.calls) == 2


async def test_cooldown_skips_until_it_passes(harness):
    """A second alert on the same target within the cooldown is skipped until then."""
    await harness.decide("Cooled", fp="a")
    harness.clock.advance(timedelta(minutes=3))
    held = await harness.decide("Cooled", fp="b")
    assert held.decision is Decision.SKIPPED
    assert held.guard == "cooldown"
    assert held.reason.startswith("cooldown active until 2026-11-26T10:10:00.")
    harness.clock.advance(timedelta(minutes=8))
    assert (await harness.decide("Cooled", fp="c")).decision is Decision.EXECUTED


async def test_bindings_of_one_playbook_share_its_cooldown_per_target(harness):
    """One outage, two rules binding the same playbook (``as:``): one run, not two.

    The runbook binds api-down three ways (Alertmanager, PagerDuty, Events v2
    alerts of the same outage); each binding kept a cooldown of its own, so
    each could roll the same Deployment back, and a rollback done twice goes
    back to the bad revision.
    """
    first = await harness.decide("CooledA", fp="a")
    assert first.decision is Decision.EXECUTED
    harness.clock.advance(timedelta(minutes=3))
    for alertname, fp in (("CooledB", "b"), ("Cooled", "c")):
        held = await harness.decide(alertname, fp=fp)
        assert held.decision is Decision.SKIPPED, held.reason
        assert held.guard == "cooldown"
    other = await harness.decide("CooledB", fp="d", service="web")  # other target
    assert other.decision is Decision.EXECUTED
    assert len(harness.executor.calls) == 2
    harness.clock.advance(timedelta(minutes=8))
    assert (await harness.decide("CooledB", fp="e")).decision is Decision.EXECUTED


async def test_a_cooldown_stamped_by_the_version_before_still_holds(harness):
    """A binding's own cooldown key, all the version before stamped, still holds.

    A run just after the upgrade heeds it, and this version stamps it too.
    """
    keeper = harness.keeper
    assert keeper is not None
    rules = harness.processor.rulebook.playbooks
    target = (await harness.decide("Hook")).target  # the same URL as cooled-b's
    now = harness.clock()
    await harness.store.set_last_run(
        f"cooldown:cooled-b:{target}", now, timedelta(minutes=10)
    )
    with pytest.raises(Refusal) as refused:
        await keeper.check_cooldown(
            "cooled-b", target, rules["cooled-b"].guards, now, shared="cooled"
        )
    assert refused.value.guard == "cooldown"
    # The shared one first: stamped before the binding's own.
    assert GuardKeeper.cooldown_keys("cooled-b", target, "cooled") == [
        f"cooldown:cooled:{target}",
        f"cooldown:cooled-b:{target}",
    ]
    assert GuardKeeper.cooldown_keys("cooled", target, "cooled") == [
        f"cooldown:cooled:{target}"
    ]


async def test_budget_spent_then_refilled(harness):
    """At most N runs per window per playbook; the window sliding frees a slot."""
    for service in ("a", "b"):
        assert (await harness.decide("Budgeted", service=service)).decision is (
            Decision.EXECUTED
        )
    spent = await harness.decide("Budgeted", service="c")
    assert spent.decision is Decision.SKIPPED
    assert spent.reason == "budget 2/1h spent for playbook 'budgeted'"
    assert spent.guard == "budget"
    harness.clock.advance(timedelta(hours=1, seconds=1))
    assert (await harness.decide("Budgeted", service="c")).decision is Decision.EXECUTED


async def test_global_budget(harness):
    """The global budget caps remediations across all playbooks."""
    keeper = GuardKeeper(
        harness.store, "o", GuardDefaults(global_budget_max=1, cooldown=timedelta(0))
    )
    harness.processor._runner = Runner(
        {"http": harness.executor}, harness.clock, mode="execute", guards=keeper
    )
    assert (await harness.decide("Hook", service="a")).decision is Decision.EXECUTED
    spent = await harness.decide("Budgeted", service="b")
    assert spent.reason == "budget 1/1h spent for all playbooks"


async def test_lock_held_by_another_run(harness):
    """A target locked by another run is skipped, naming the holder."""
    lock = await harness.store.acquire_lock(
        "target:http://hooks.test/api", "replica-2:77", T0, timedelta(minutes=5)
    )
    assert lock is not None
    held = await harness.decide("Hook")
    assert held.decision is Decision.SKIPPED
    assert held.reason == (
        "lock on http://hooks.test/api held by replica-2:77 (not run: nothing was sent)"
    )
    assert held.guard == "lock"
    await harness.store.release_lock(lock)
    assert (await harness.decide("Hook")).decision is Decision.EXECUTED


async def test_circuit_opens_after_consecutive_failures(harness):
    """After N failures on one target its circuit opens; other targets still run."""
    harness.executor.fail = True
    for fp in ("a1", "a2"):
        failed = await harness.decide("Breaker", service="a", fp=fp)
        assert failed.decision is Decision.FAILED
    harness.executor.fail = False
    opened = await harness.decide("Breaker", service="a", fp="a3")
    assert opened.decision is Decision.SKIPPED
    assert opened.guard == "circuit_breaker"
    assert opened.reason.startswith("circuit open since 2026-11-26T10:00:00.")
    assert "of playbook 'breaker' on http://hooks.test/a;" in opened.reason
    assert "closes at 2026-11-26T10:30:00." in opened.reason
    other = await harness.decide("Breaker", service="b", fp="b1")
    assert other.decision is Decision.EXECUTED, "one bad target opens only its own"
    harness.clock.advance(timedelta(minutes=31))
    again = await harness.decide("Breaker", service="a", fp="a3")
    assert again.decision is Decision.EXECUTED


async def test_circuit_scope_playbook_opens_for_every_target(harness):
    """With ``scope: playbook`` failures on any target open the whole playbook."""
    harness.executor.fail = True
    for service in ("a", "b"):
        failed = await harness.decide("Wide", service=service)
        assert failed.decision is Decision.FAILED
    harness.executor.fail = False
    opened = await harness.decide("Wide", service="c")
    assert opened.decision is Decision.SKIPPED
    assert opened.guard == "circuit_breaker"
    assert "of playbook 'wide';" in opened.reason


async def test_require_firing_for(harness):
    """An alert that has not fired long enough is not remediated yet."""
    early = await harness.decide("Patient", started=T0 - timedelta(minutes=2))
    assert early.decision is Decision.SKIPPED
    assert early.reason == "not firing long enough: 2m of the required 5m"
    harness.clock.advance(timedelta(minutes=4))
    ready = await harness.decide("Patient", started=T0 - timedelta(minutes=2))
    assert ready.decision is Decision.EXECUTED


async def test_resolved_in_journal_cancels(harness):
    """A resolve already journaled for the fingerprint cancels the remediation."""
    started = T0 - timedelta(hours=1)
    await harness.store.append(
        _entry(), [AlertState("fp-Hook-api", "resolved", started, T0)]
    )
    skipped = await harness.decide("Hook", started=started)
    assert skipped.decision is Decision.SKIPPED
    assert skipped.reason.startswith("alert resolved (resolve received")
    assert harness.executor.calls == []


async def test_approval_required_then_approved(harness):
    """An approval-required step waits, then runs once a human approves."""
    waiting = await harness.decide("Careful")
    assert waiting.decision is Decision.AWAITING_APPROVAL
    assert waiting.reason.startswith("awaiting approval ")
    assert "POST /api/v1/approvals/" in waiting.reason
    (approval,) = await harness.store.approvals("pending")
    assert approval.request["payload_id"] == "payload-1"
    await harness.store.decide_approval(approval.id, "approved", "alice", T0)
    done = await harness.decide("Careful")
    assert done.decision is Decision.EXECUTED
    assert len(harness.executor.calls) == 1


async def test_approval_rejected_and_expired(harness):
    """A rejected approval skips naming who; an unanswered one expires."""
    await harness.decide("Careful", service="a")
    (approval,) = await harness.store.approvals("pending")
    await harness.store.decide_approval(approval.id, "rejected", "bob", T0)
    rejected = await harness.decide("Careful", service="a")
    assert rejected.reason == f"approval {approval.id} rejected by bob"
    await harness.decide("Careful", service="b")
    harness.clock.advance(timedelta(hours=2))
    expired = await harness.decide("Careful", service="b")
    assert expired.decision is Decision.SKIPPED
    assert "expired at" in expired.reason
    assert harness.executor.calls == []


async def test_playbook_forces_dry_run(harness):
    """A playbook may force dry-run even when the service executes."""
    step = await harness.decide("Forced")
    assert step.decision is Decision.DRY_RUN
    assert step.reason.startswith("playbook forces dry-run: would POST")
    assert harness.executor.calls == []


async def test_dry_run_mode_never_executes(harness):
    """In dry-run mode nothing runs, whatever the playbook says."""
    harness.processor._ctx = PlanContext(execute=False)
    step = await harness.decide("Hook")
    assert step.decision is Decision.DRY_RUN
    assert step.reason.startswith("dry-run mode: would POST http://hooks.test/api")
    assert harness.executor.calls == []


def _entry():
    return JournalEntry(id="e-1", source="alertmanager", received_at=T0, body=b"{}")


async def test_nothing_to_do_is_skipped_and_spends_nothing(harness):
    """A remediation that finds nothing to change is skipped and keeps its budget."""

    async def no_op(step, alert):
        harness.executor.calls.append(step.url)
        return StepResult(ok=True, reason="nothing to roll back", changed=False)

    harness.executor.run = no_op
    for service in ("a", "b", "c"):
        step = await harness.decide("Budgeted", service=service)
        assert step.decision is Decision.SKIPPED
        assert step.reason == "nothing to roll back"
    assert len(harness.executor.calls) == 3


async def test_resend_inside_cooldown_says_already_done(harness):
    """A resend of a run occurrence reads 'already done', not 'cooldown active'."""
    await harness.decide("Cooled")
    again = await harness.decide("Cooled")
    assert again.reason.startswith("already done by test-owner")


@dataclass
class FixedAnswer:
    answer: bool | None

    async def look(self, alert):
        return SourceView(firing=self.answer)


@pytest.mark.parametrize(
    ("answer", "decision"),
    [(True, Decision.EXECUTED), (None, Decision.EXECUTED), (False, Decision.SKIPPED)],
)
async def test_alertmanager_is_asked_last(harness, answer, decision):
    """When Alertmanager says it stopped firing, the run is skipped; unknown runs."""
    harness.processor._runner._guards.firing_check = FixedAnswer(answer)
    step = await harness.decide("Hook")
    assert step.decision is decision
    if answer is False:
        assert step.reason.startswith("alert resolved: Alertmanager no longer lists")
        assert harness.executor.calls == []
        again = await harness.decide("Hook")
        assert again.decision is Decision.SKIPPED, "the claim was given back"
        assert again.reason.startswith("alert resolved: Alertmanager")


@dataclass
class FixedView:
    view: SourceView

    async def look(self, alert):
        return self.view


async def test_refused_at_the_last_check_spends_no_budget(harness):
    """Runs refused right before acting give their budget slots back, exactly."""
    keeper = harness.processor._runner._guards
    keeper.firing_check = FixedAnswer(answer=False)
    for service in ("a", "b", "c", "d"):
        step = await harness.decide("Budgeted", service=service)
        assert step.decision is Decision.SKIPPED
        assert step.guard == "resolved"
    keeper.firing_check = FixedAnswer(answer=True)
    for service in ("e", "f"):
        assert (await harness.decide("Budgeted", service=service)).decision is (
            Decision.EXECUTED
        )


async def test_silenced_alert_is_hands_off(harness):
    """A silence in Alertmanager skips the run, naming the silence, author, comment."""
    silence = Silence("3f0c-silence", "alice@example.com", "hands off: migrating")
    keeper = harness.processor._runner._guards
    keeper.firing_check = FixedView(SourceView(firing=True, silences=(silence,)))
    step = await harness.decide("Hook")
    assert step.decision is Decision.SKIPPED
    assert step.guard == "silenced"
    assert step.reason == (
        "silenced in Alertmanager: silence 3f0c-silence by alice@example.com: "
        '"hands off: migrating"'
    )
    assert harness.executor.calls == []
    keeper.firing_check = FixedView(SourceView(firing=True, inhibited_by=("fp-root",)))
    inhibited = await harness.decide("Hook")
    assert inhibited.guard == "inhibited"
    assert inhibited.reason == "inhibited in Alertmanager by alert fp-root"
    keeper.firing_check = FixedView(SourceView(firing=True))
    assert (await harness.decide("Hook")).decision is Decision.EXECUTED


async def test_pause_stops_every_remediation(harness):
    """While paused nothing runs and the reason says who paused and why."""
    await harness.store.set_pause(Pause("bob", T0, "incident review"))
    step = await harness.decide("Hook")
    assert step.decision is Decision.SKIPPED
    assert step.guard == "paused"
    assert step.reason == (
        "remediations paused by bob at 2026-11-26T10:00:00.000Z: incident review"
    )
    await harness.store.set_pause(None)
    assert (await harness.decide("Hook")).decision is Decision.EXECUTED


async def test_guard_metric_reads_the_guard_name(harness):
    """receiver_guard_skips counts by the refusal's guard field."""
    metrics = Metrics()
    harness.processor._metrics = metrics
    await harness.decide("Cooled", fp="a")
    await harness.decide("Cooled", fp="b")
    await harness.decide("Hook")
    await harness.decide("Hook")
    text = metrics.render().decode()
    assert 'receiver_guard_skips_total{guard="cooldown"} 1.0' in text
    assert 'receiver_guard_skips_total{guard="idempotency"} 1.0' in text


async def test_a_claim_taken_over_before_sending_is_not_sent(harness):
    """If another worker took the claim over (we looked dead), nothing is sent."""
    store = harness.store

    class Thief:
        async def look(self, alert):
            key = idempotency_key("hook", 0, "http.request", alert)
            now = harness.clock()
            await store.register(
                "test-owner", now - timedelta(hours=1), timedelta(minutes=1)
            )
            stolen = await store.claim_key(key, "thief", now, timedelta(days=1))
            assert stolen.won
            return SourceView(firing=True)

    harness.processor._runner._guards.firing_check = Thief()
    step = await harness.decide("Hook")
    assert step.decision is Decision.SKIPPED
    assert step.guard == "idempotency"
    assert step.reason.startswith("not run: another worker took over its run-once")
    assert harness.executor.calls == []
