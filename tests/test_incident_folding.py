"""Folding a run of traces at once gives what folding them one by one gives.

The service's batch folds each group's traces through one ``Folding``, which
keeps the ledger and the alerts as dicts between traces instead of rebuilding
tuples per trace. These tests fold random sequences (firing and resolved
alerts, resends, several fingerprints and rules, remediations that ran, failed,
were verified or wait for approval) through it and through the old per-trace
``observe`` (``incident_reference``) and compare every incident and effect.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from incident_reference import observe_one

from receiver.incidents import lifecycle, model
from receiver.incidents.effects import Effect
from receiver.incidents.lifecycle import Folding, observe, open_incident
from receiver.incidents.model import Incident, evolve
from receiver.incidents.policy import DEFAULT_POLICY
from receiver.model import (
    Alert,
    AlertTrace,
    Decision,
    MatchTrace,
    Severity,
    StepKind,
    StepTrace,
    freeze,
)

START = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
RULES = ("r-api", "r-db", "r-cache")
FOLLOWS = frozenset({"r-api"})
EVIDENCE = frozenset({"r-db"})

steps = st.tuples(
    st.sampled_from(StepKind),
    st.sampled_from(Decision),
    st.booleans(),  # verified
    st.sampled_from(("pods", "logs", "events", "restart", "scale")),
)
matches = st.tuples(
    st.sampled_from(RULES),
    st.sampled_from(Severity),
    st.sampled_from(("", "team-db", "team-api")),
    st.lists(steps, max_size=5),
)
decided = st.tuples(  # what the rules decided about one alert
    st.sampled_from(("f0", "f1", "f2", "f3")),
    st.lists(matches, min_size=1, max_size=2),
    st.sampled_from(("dry-run", "live")),
    st.sampled_from(("g1", "g2")),  # a grouping key of its own
)
sent = st.tuples(  # one (re)send of one of them
    st.integers(min_value=0, max_value=7),  # which
    st.sampled_from(("firing", "resolved")),
    st.sampled_from((0, 0, 60)),  # minutes: when it started
    st.sampled_from(("", "login_blocked")),  # the impact label
    st.integers(min_value=0, max_value=3),  # seconds since the last trace
    st.sampled_from(("", "", "summary", "link", "ended")),  # how else it differs
)


def _trace(raw: tuple[object, ...], now: datetime) -> AlertTrace:
    fingerprint, status, started, impact, found, mode, _, _, other = raw
    assert isinstance(found, list)
    labels = {"alertname": f"A{fingerprint}", "impact": str(impact)}
    alert = Alert(
        "alertmanager",
        str(fingerprint),
        "firing" if status == "firing" else "resolved",
        freeze(labels),
        freeze({"summary": "Down"} if other == "summary" else {}),
        starts_at=START + timedelta(minutes=int(str(started))),
        ends_at=START if other == "ended" else None,
        generator_url="http://prometheus/graph" if other == "link" else "",
    )
    return AlertTrace(
        alert,
        tuple(
            MatchTrace(
                rule,
                severity,
                f"playbook {rule}",
                tuple(
                    StepTrace(
                        kind,
                        kind_type,
                        f"deployment/{rule}",
                        decision,
                        f"{decision} for {fingerprint} at {now:%S}",
                        result=freeze({"verification": {"ok": verified}}),
                    )
                    for kind, decision, verified, kind_type in listed
                ),
                escalate_to=escalate,
            )
            for rule, severity, escalate, listed in found
        ),
        now,
        mode=str(mode),
    )


def _timed(raws: list[tuple[object, ...]]) -> list[tuple[AlertTrace, list[str]]]:
    out, now = [], START
    for raw in raws:
        now += timedelta(seconds=int(str(raw[6])))
        out.append((_trace(raw, now), ["by-fingerprint", f"group:{raw[7]}"]))
    return out


def _one_by_one(
    incident: Incident,
    run: list[tuple[AlertTrace, list[str]]],
    fold: Callable[..., tuple[Incident, list[Effect]]] = observe_one,
) -> tuple[Incident, list[Effect]]:
    """As the batch folded before ``Folding``: ``observe`` per trace, then keys."""
    effects: list[Effect] = []
    for trace, keys in run:
        incident, more = fold(
            incident,
            trace,
            trace.decided_at,
            DEFAULT_POLICY,
            follows=FOLLOWS,
            evidence=EVIDENCE,
        )
        incident = evolve(incident, keys=tuple(dict.fromkeys((*incident.keys, *keys))))
        effects += more
    return incident, effects


def _at_once(
    incident: Incident, run: list[tuple[AlertTrace, list[str]]]
) -> tuple[Incident, list[Effect]]:
    folding = Folding(incident)
    effects: list[Effect] = []
    for trace, keys in run:
        effects += folding.observe(
            trace, trace.decided_at, DEFAULT_POLICY, follows=FOLLOWS, evidence=EVIDENCE
        )
        folding.add_keys(keys)
    return folding.incident(), effects


def _opened(first: AlertTrace) -> Incident:
    opened, _ = open_incident(
        "INC-1", ["g0"], first, START, DEFAULT_POLICY, follows=FOLLOWS
    )
    return opened


@settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    pool=st.lists(decided, min_size=1, max_size=8),
    sends=st.lists(sent, min_size=1, max_size=40),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=4),
    cap=st.sampled_from((4, 12, 500)),
    alerts_cap=st.sampled_from((1, 2, 1000)),
    unlisted_cap=st.sampled_from((0, 1, 10_000)),
    doubled=st.booleans(),
)
def test_folding_a_run_equals_folding_one_by_one(  # noqa: PLR0917 (hypothesis draws)
    pool: list[tuple[object, ...]],
    sends: list[tuple[object, ...]],
    cuts: list[int],
    cap: int,
    alerts_cap: int,
    unlisted_cap: int,
    doubled: bool,
) -> None:
    """Same incidents (stored form, ledger, timeline) and effects, batch by batch.

    ``sends``: which of the ``pool`` of decided alerts come, in order, and
    how each is sent (resends are common); ``cap``/``alerts_cap``/
    ``unlisted_cap``: the ledger's, the alerts' and the unlisted fingerprints'
    caps, small enough to bite; ``doubled``: an
    incident holding an alert twice (never written so, folded as it always
    was).
    """
    raws = [
        (fp, status, started, impact, found, mode, seconds, group, other)
        for which, status, started, impact, seconds, other in sends
        for fp, found, mode, group in [pool[int(str(which)) % len(pool)]]
    ]
    run = _timed(raws)
    bounds = sorted({0, len(run), *(c for c in cuts if c < len(run))})
    with (
        mock.patch.object(model, "MAX_LEDGER", cap),
        mock.patch.object(lifecycle, "MAX_LEDGER", cap),
        mock.patch.object(lifecycle, "MAX_ALERTS", alerts_cap),
        mock.patch.object(lifecycle, "MAX_UNLISTED", unlisted_cap),
    ):
        old = _opened(run[0][0])
        if doubled:
            old = evolve(old, alerts=old.alerts * 2)
        new = each = old
        for lo, hi in itertools.pairwise(bounds):
            old, old_effects = _one_by_one(old, run[lo:hi])
            new, new_effects = _at_once(new, run[lo:hi])
            each, each_effects = _one_by_one(each, run[lo:hi], observe)
            assert new == old
            assert each == old
            assert new.to_json() == old.to_json()
            assert new_effects == old_effects
            assert each_effects == old_effects
        assert len(new.ledger) <= cap


def test_a_steady_group_folds_without_writing_the_ledger_per_trace() -> None:
    """A resent payload counts its lines again; the ledger is written at the end."""
    raws: list[tuple[object, ...]] = [
        (f"f{i}", "firing", 0, "", [("r-api", Severity.P2, "", [
            (StepKind.DIAGNOSTIC, Decision.DRY_RUN, False, "pods"),
            (StepKind.REMEDIATION, Decision.SKIPPED, False, "restart"),
        ])], "dry-run", 1, "g1", "")
        for i in range(3)
    ]  # fmt: skip
    run = _timed(raws * 4)
    opened = _opened(run[0][0])
    first, _ = _at_once(opened, run[1:3])
    folding = Folding(first)
    with mock.patch.object(
        lifecycle, "with_ledger", wraps=lifecycle.with_ledger
    ) as written:
        for trace, keys in run[3:]:
            folding.observe(trace, trace.decided_at, DEFAULT_POLICY)
            folding.add_keys(keys)
        assert written.call_count == 0
        folded = folding.incident()
        assert written.call_count == 1
    assert [item.times for item in folded.ledger] == [4] * 6
    assert folded == _one_by_one(first, run[3:])[0]
