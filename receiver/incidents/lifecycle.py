"""Pure incident transitions: open, observe a trace, acknowledge, mitigate, advance.

Each returns the new ``Incident`` and the ``Effect`` values to carry out
(announcements through the sinks, a PagerDuty escalation, a breach to count);
``receiver.incidents.service`` carries them out. Time is always passed in.
``Folding`` folds a run of traces into one incident (the service's batch) with
the result of ``observe`` applied to each in turn, without rebuilding the
ledger and alerts per trace.

Clocks follow the runbook: acknowledge counts from detection, mitigate from the
acknowledgment (detection if nobody acknowledged), resolve from mitigation. Each
stops once, at the first of what stops it (``clocks.clocks`` says when); what
comes later is on the timeline only. A clock past its target for the current
severity is a breach, recorded once per clock and severity, and escalates.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from itertools import islice

from receiver.incidents.clocks import clocks, describe_age
from receiver.incidents.effects import (
    Announce,
    CountBreach,
    Effect,
    PagerDutyEscalate,
    PagerDutyStatus,
)
from receiver.incidents.model import (
    MAX_LEDGER,
    MAX_TIMELINE,
    STATE_RANK,
    AlertRef,
    Evidence,
    Incident,
    LedgerItem,
    LedgerKey,
    SeverityChange,
    State,
    TimelineEntry,
    add_entry,
    evolve,
    ledger_index,
    with_ledger,
)
from receiver.incidents.policy import IncidentPolicy, describe, worse
from receiver.incidents.status import draft, minute, phase
from receiver.model import (
    AlertTrace,
    Decision,
    Severity,
    StepKind,
    StepTrace,
    freeze,
    iso,
)

Reevaluate = Callable[[AlertRef, datetime], Severity | None]
MAX_EVIDENCE = 200
MAX_EVIDENCE_CHARS = 256 * 1024
# An alert storm must not grow one record forever: past ``MAX_ALERTS`` listed
# alerts the oldest resolved one goes, else the oldest (firing) one, whose
# fingerprint is kept in ``Incident.unlisted`` (up to ``MAX_UNLISTED``; past
# that the incident has lost track and never resolves by itself).
MAX_ALERTS = 1000
MAX_UNLISTED = 10_000


def title_of(trace: AlertTrace) -> str:
    """A short description: the alert's summary, else its name and namespace."""
    alert = trace.alert
    summary = " ".join(alert.annotations.get("summary", "").split())
    if summary:
        return summary[:200]
    name = alert.labels.get("alertname", alert.fingerprint)
    where = alert.labels.get("namespace", "")
    return f"{name} in {where}" if where else name


def _severity_of(trace: AlertTrace) -> Severity | None:
    levels = [m.severity for m in trace.matches]
    if not levels:
        return None
    found = levels[0]
    for level in levels[1:]:
        found = worse(found, level)
    return found


def open_incident(
    incident_id: str,
    keys: Iterable[str],
    trace: AlertTrace,
    now: datetime,
    policy: IncidentPolicy,
    *,
    follows: frozenset[str] = frozenset(),
    evidence: frozenset[str] = frozenset(),
) -> tuple[Incident, list[Effect]]:
    """A new incident for the first firing alert of a group."""
    severity = _severity_of(trace) or Severity.P3
    target = policy.of(severity)
    incident = Incident(
        id=incident_id,
        keys=tuple(dict.fromkeys(keys)),
        title=title_of(trace),
        severity=severity,
        state=State.TRIGGERED,
        opened_at=now,
        cadence_from=now,
        severities=(SeverityChange(now, severity),),
        pagerduty_id=trace.alert.refs.get("incident_id", "")
        if trace.alert.source == "pagerduty"
        else "",
    )
    incident = add_entry(
        incident,
        now,
        "opened",
        f"Incident opened at {severity} ({severity.info.name}): {incident.title}; "
        f"first contact {target.first_contact}; acknowledge within "
        f"{describe(target.acknowledge)}",
        severity=severity.value,
    )
    incident, more = observe(
        incident, trace, now, policy, follows=follows, evidence=evidence
    )
    opened = Announce(
        "opened",
        f"[{severity}] {incident.id} opened: {incident.title}",
        draft(incident, now, policy),
        target.first_contact,
    )
    return incident, [opened, *more]


def _promote(
    incident: Incident,
    severity: Severity,
    why: str,
    now: datetime,
) -> tuple[Incident, list[Effect]]:
    if worse(severity, incident.severity) == incident.severity:
        return incident, []
    before = incident.severity
    # A record from before severities were kept: what it was at up to now is
    # the best there is (no worse than reading the current severity).
    kept = incident.severities or (SeverityChange(incident.opened_at, before),)
    incident = replace(
        incident,
        severity=severity,
        severities=(*kept, SeverityChange(now, severity)),
    )
    text = f"Severity {before} → {severity} ({severity.info.name}): {why}"
    incident = add_entry(
        incident,
        now,
        "severity_changed",
        text,
        before=before.value,
        after=severity.value,
    )
    return incident, [
        Announce("promoted", f"[{severity}] {incident.id} promoted", text)
    ]


def _alert_ref(trace: AlertTrace, severity: Severity) -> AlertRef:
    """The alert as the incident records it (``severity``: when no rule says)."""
    alert = trace.alert
    return AlertRef(
        alert.fingerprint,
        alert.source,
        trace.matches[0].rule if trace.matches else "",
        alert.status,
        _severity_of(trace) or severity,
        freeze(dict(alert.labels)),
        alert.starts_at,
        alert.ends_at,
        title_of(trace),
        alert.generator_url,
    )


def _as_recorded(old: AlertRef, trace: AlertTrace, severity: Severity) -> bool:
    """Whether ``_alert_ref`` (and the rule ``_upsert_alert`` keeps) equals ``old``."""
    alert = trace.alert
    if not (
        old.status == alert.status
        and old.starts_at == alert.starts_at
        and old.ends_at == alert.ends_at
        and old.source == alert.source
        and old.link == alert.generator_url
    ):
        return False
    rule = trace.matches[0].rule if trace.matches else ""
    if rule and (old.rule != rule or old.severity != (_severity_of(trace) or severity)):
        return False
    return old.summary == title_of(trace) and old.labels == alert.labels


def _alert_entry(incident: Incident, trace: AlertTrace, now: datetime) -> Incident:
    """The timeline entry for an alert that fired or resolved."""
    alert = trace.alert
    name = alert.labels.get("alertname", alert.fingerprint)
    if alert.status == "firing":
        since = f" (since {iso(alert.starts_at)})" if alert.starts_at else ""
        text = f"{name} firing{since} from {alert.source}"
        return add_entry(
            incident, now, "alert_fired", text, fingerprint=alert.fingerprint
        )
    return add_entry(
        incident,
        now,
        "alert_resolved",
        f"{name} resolved",
        fingerprint=alert.fingerprint,
    )


def lost_track_text(incident_id: str) -> str:
    """The timeline's sentence when an incident loses track of its alerts."""
    return (
        f"Lost track of this alert storm: more than {MAX_ALERTS + MAX_UNLISTED:,} "
        f"of its alerts fired at once ({MAX_ALERTS:,} listed, {MAX_UNLISTED:,} "
        "more by fingerprint, the rest not followed). It will not resolve by "
        "itself when its alerts resolve: a person or PagerDuty must resolve it "
        "(the Resolve incident button on its console page, "
        f"POST /api/v1/incidents/{incident_id}/resolve, or resolve the linked "
        "PagerDuty incident)."
    )


def _lose_track(incident: Incident, now: datetime) -> Incident:
    """Mark the incident as having lost track of its alerts (said once)."""
    if incident.lost_track:
        return incident
    incident = evolve(incident, lost_track=True)
    return add_entry(incident, now, "lost_track", lost_track_text(incident.id))


def _changed(old: AlertRef | None, ref: AlertRef, *, unlisted: bool) -> bool:
    """Whether the alert's status or occurrence changed (news for the timeline).

    An unlisted alert was firing when it was dropped from the list: firing
    again is no news.
    """
    if old is not None:
        return (old.status, old.starts_at) != (ref.status, ref.starts_at)
    return not (unlisted and ref.status == "firing")


def _capped(alerts: tuple[AlertRef, ...]) -> tuple[tuple[AlertRef, ...], list[str]]:
    """At most ``MAX_ALERTS`` alerts, and the fingerprints of firing ones dropped.

    The oldest resolved alert goes first; only when every listed alert fires
    does the oldest one go.
    """
    kept = list(alerts)
    dropped: list[str] = []
    while len(kept) > MAX_ALERTS:
        gone = next((i for i, a in enumerate(kept) if a.status == "resolved"), 0)
        ref = kept.pop(gone)
        if ref.status != "resolved":
            dropped.append(ref.fingerprint)
    return tuple(kept), dropped


def _upsert_alert(
    incident: Incident, trace: AlertTrace, now: datetime
) -> tuple[Incident, bool]:
    """Record the alert; True if its status or occurrence changed."""
    alert = trace.alert
    ref = _alert_ref(trace, incident.severity)
    alerts = incident.alerts
    last = alerts[-1] if alerts else None
    if last is not None and last.fingerprint == alert.fingerprint:
        # Seen last already (an alert that keeps firing): no scan.
        old: AlertRef | None = last
        others = alerts[:-1]
    else:
        old = next((a for a in alerts if a.fingerprint == alert.fingerprint), None)
        others = tuple(a for a in alerts if a.fingerprint != alert.fingerprint)
    unlisted = alert.fingerprint in incident.unlisted
    if unlisted:
        incident = evolve(incident, unlisted=incident.unlisted - {alert.fingerprint})
    changed = _changed(old, ref, unlisted=unlisted)
    if old is not None and ref.rule == "":
        ref = replace(ref, rule=old.rule, severity=old.severity)
    lost = False
    if old is not last or ref != old:
        kept, dropped = _capped((*others, ref))
        incident = evolve(incident, alerts=kept)
        if dropped:
            kept_unlisted = set(incident.unlisted)
            for gone in dropped:
                if len(kept_unlisted) < MAX_UNLISTED:
                    kept_unlisted.add(gone)
                else:
                    lost = True
            incident = evolve(incident, unlisted=frozenset(kept_unlisted))
    if changed:
        incident = _alert_entry(incident, trace, now)
    if lost:
        incident = _lose_track(incident, now)
    return incident, changed


def _note_contacts(incident: Incident, trace: AlertTrace) -> Incident:
    """Remember whom the matched playbooks say to escalate to."""
    named = [m.escalate_to for m in trace.matches if m.escalate_to]
    if all(c in incident.contacts for c in named):
        return incident
    return replace(
        incident, contacts=tuple(dict.fromkeys((*incident.contacts, *named)))
    )


def _verified(result: object) -> bool:
    verification = getattr(result, "get", lambda _k: None)("verification")
    return bool(isinstance(verification, dict) and verification.get("ok"))


def observe(
    incident: Incident,
    trace: AlertTrace,
    now: datetime,
    policy: IncidentPolicy,
    *,
    follows: frozenset[str] = frozenset(),
    evidence: frozenset[str] = frozenset(),
) -> tuple[Incident, list[Effect]]:
    """Fold one alert's decisions into the incident (resends change nothing).

    ``follows``: rules whose playbook lets verified outcomes drive PagerDuty;
    ``evidence``: rules whose playbook's diagnostics are kept as evidence.
    """
    folding = Folding(incident)
    effects = folding.observe(trace, now, policy, follows=follows, evidence=evidence)
    return folding.incident(), effects


class Folding:
    """One incident folding a run of traces, as ``observe`` would one by one.

    The service's batch folds every trace of a group through one of these.
    Between traces the ledger and the alerts are kept as dicts (by line key,
    by fingerprint) instead of tuples rebuilt per trace, which made folding a
    payload quadratic in its steps: the incident's ``ledger`` and ``alerts``
    fields are stale meanwhile. Nothing reads them there but ``draft`` (through
    ``mitigate`` and ``resolve``), the resolution and the ``MAX_LEDGER`` cut;
    before those they are written back, so every incident, timeline entry and
    effect is what folding the traces one by one gives. The alerts' dict
    outlives a write-back (nothing else changes the alerts), so that a storm
    whose ledger is full, written back per trace, does not rebuild it per
    trace. The resolved alerts are kept apart too, in list order, so that
    neither choosing which alert to drop past ``MAX_ALERTS`` nor the resolution
    scans the alerts. ``unlisted`` is a set once changed, written back by
    ``incident()`` only (nothing else reads it but the resolution, which reads
    the set). The timeline too is kept aside (a deque capped as the timeline
    is): a trace's entries are added to an empty timeline, then moved there;
    one by one, each entry copied the whole timeline (three per alert of a
    storm, up to ``MAX_TIMELINE`` entries each). Nothing reads it while a
    trace is folded but the resolution, after the write-back.
    """

    def __init__(self, incident: Incident) -> None:
        self._incident = incident
        # Ahead of ``self._incident.ledger`` / ``.alerts`` while not None.
        self._ledger: dict[LedgerKey, LedgerItem] | None = None
        # Lines decided again meanwhile, and how often (one ``again`` each, later).
        self._again: dict[LedgerKey, int] = {}
        self._alerts: dict[str, AlertRef] | None = None
        # Whether ``self._alerts`` changed since it was last written back.
        self._alerts_ahead = False
        # The resolved ones of ``self._alerts``, in its order.
        self._resolved: dict[str, None] = {}
        # Ahead of ``self._incident.unlisted`` while not None.
        self._unlisted: set[str] | None = None
        # The timeline's older entries while not None (``self._incident``'s
        # are the newer ones then).
        self._timeline: deque[TimelineEntry] | None = None

    @property
    def active(self) -> bool:
        """Not resolved yet."""
        return self._incident.active

    def incident(self) -> Incident:
        """The incident as folded so far."""
        self._incident = self._with_unlisted(self._written(self._incident))
        return self._incident

    def _written(self, incident: Incident) -> Incident:
        """``incident`` with the ledger, alerts and timeline kept aside written back."""
        if self._timeline is not None:
            kept, self._timeline = self._timeline, None
            timeline = (*kept, *incident.timeline)[-MAX_TIMELINE:]
            incident = evolve(incident, timeline=timeline)
        if self._alerts is not None and self._alerts_ahead:
            incident = evolve(incident, alerts=tuple(self._alerts.values()))
            self._alerts_ahead = False
        ledger = self._ledger
        if ledger is not None:
            for key, times in self._again.items():
                ledger[key] = ledger[key].again(times)
            self._again.clear()
            # The dict becomes the new incident's index: the next trace copies it.
            incident = with_ledger(incident, ledger)
            self._ledger = None
        return incident

    @property
    def keys(self) -> tuple[str, ...]:
        """The incident's grouping keys as folded so far."""
        return self._incident.keys

    def add_keys(self, keys: Iterable[str]) -> None:
        """Group these keys into the incident too (after its own, once each)."""
        incident = self._incident
        merged = tuple(dict.fromkeys((*incident.keys, *keys)))
        if merged != incident.keys:
            self._incident = evolve(incident, keys=merged)

    def observe(
        self,
        trace: AlertTrace,
        now: datetime,
        policy: IncidentPolicy,
        *,
        follows: frozenset[str] = frozenset(),
        evidence: frozenset[str] = frozenset(),
    ) -> list[Effect]:
        """Fold one alert's decisions in (``observe``); return the effects."""
        effects: list[Effect] = []
        incident = self._incident
        if self._timeline is None and incident.timeline:
            self._timeline = deque(incident.timeline, maxlen=MAX_TIMELINE)
            incident = evolve(incident, timeline=())
        incident = self._upsert(incident, trace, now)
        incident = _note_contacts(incident, trace)
        severity = _severity_of(trace)
        if severity is not None and trace.alert.status == "firing" and incident.active:
            incident, more = _promote(
                incident, severity, f"rule {trace.matches[0].rule}", now
            )
            effects += more
        if self._ledger is not None and _drafts_midway(trace, self._ledger):
            # Its draft reads the ledger as it was before this trace.
            incident = self._written(incident)
        ledger = self._ledger
        if ledger is None:
            ledger = self._ledger = ledger_index(incident)
        incident, fresh, more = _fold_steps(
            incident,
            trace,
            (ledger, self._again),
            now,
            policy,
            follows=follows,
            evidence=evidence,
        )
        effects += more
        resolving = incident.active and self._all_resolved(incident)
        if len(ledger) > MAX_LEDGER:
            self._cut(ledger)
        if resolving:
            # The resolution's draft reads the written ledger.
            incident = self._written(incident)
        looked = [i for i in fresh if i.kind == StepKind.DIAGNOSTIC.value]
        if looked:
            listed = ", ".join(
                f"{i.type} {i.target} ({i.decision})" for i in looked[:8]
            )
            incident = add_entry(
                incident, now, "diagnostics", f"Diagnostics ({trace.mode}): {listed}"
            )
        if resolving:
            incident, more = _resolved(incident, now, policy, follows)
            effects += more
        if self._timeline is not None and incident.timeline:
            self._timeline.extend(incident.timeline)
            incident = evolve(incident, timeline=())
        self._incident = incident
        return effects

    def _cut(self, ledger: dict[LedgerKey, LedgerItem]) -> None:
        """Drop the oldest lines past ``MAX_LEDGER`` in place, as ``with_ledger`` would.

        Once per trace, as folding one by one cuts at each write: a line cut
        is gone, and decided again later it is a new line at the end. In
        place, not by writing the ledger back (a storm past the cap would
        rebuild the whole ledger and its index per alert).
        """
        over = len(ledger) - MAX_LEDGER
        again = self._again
        for key in list(islice(ledger, over)):
            del ledger[key]
            again.pop(key, None)

    def _with_unlisted(self, incident: Incident) -> Incident:
        """``incident`` with the unlisted fingerprints kept aside written back."""
        if self._unlisted is not None:
            incident = evolve(incident, unlisted=frozenset(self._unlisted))
            self._unlisted = None
        return incident

    def _all_resolved(self, incident: Incident) -> bool:
        """Whether the incident may resolve by itself: every alert it knows resolved.

        Listed ones, unlisted ones (none may be left), and none lost track of.
        """
        unlisted = self._unlisted if self._unlisted is not None else incident.unlisted
        if unlisted or incident.lost_track:
            return False
        if self._alerts is not None:
            return len(self._resolved) == len(self._alerts)
        return all(a.status == "resolved" for a in incident.alerts)

    def _upsert(self, incident: Incident, trace: AlertTrace, now: datetime) -> Incident:
        """``_upsert_alert`` on the alerts by fingerprint: no scan, no new tuple."""
        alerts = self._alerts
        if alerts is None:
            alerts = {a.fingerprint: a for a in incident.alerts}
            if len(alerts) != len(incident.alerts):
                # Not one per fingerprint (never written so): as it always was.
                incident = self._with_unlisted(incident)
                return _upsert_alert(incident, trace, now)[0]
            self._alerts = alerts
            self._resolved = {
                f: None for f, a in alerts.items() if a.status == "resolved"
            }
        fingerprint = trace.alert.fingerprint
        unlisted = self._unlisted
        was_unlisted = fingerprint in (
            unlisted if unlisted is not None else incident.unlisted
        )
        if was_unlisted:
            self._unlisting(incident).discard(fingerprint)
        old = alerts.get(fingerprint)
        if old is not None and _as_recorded(old, trace, incident.severity):
            # Resent as it was: ``_upsert_alert`` would record an equal ref.
            if next(reversed(alerts)) != fingerprint:
                self._list_last(incident, alerts, old)
            return incident
        ref = _alert_ref(trace, incident.severity)
        changed = _changed(old, ref, unlisted=was_unlisted)
        if old is not None and ref.rule == "":
            ref = replace(ref, rule=old.rule, severity=old.severity)
        lost = False
        if old is None or ref != old or next(reversed(alerts)) != fingerprint:
            lost = self._list_last(incident, alerts, ref)
        if changed:
            incident = _alert_entry(incident, trace, now)
        return _lose_track(incident, now) if lost else incident

    def _list_last(
        self, incident: Incident, alerts: dict[str, AlertRef], ref: AlertRef
    ) -> bool:
        """List ``ref`` last, as ``_upsert_alert`` rebuilds the tuple; True if lost.

        Past the cap the oldest resolved alert is dropped, else the oldest,
        unlisted; lost (track) when ``unlisted`` is full too.
        """
        resolved = self._resolved
        self._alerts_ahead = True
        fingerprint = ref.fingerprint
        alerts.pop(fingerprint, None)
        resolved.pop(fingerprint, None)
        alerts[fingerprint] = ref
        if ref.status == "resolved":
            resolved[fingerprint] = None
        lost = False
        while len(alerts) > MAX_ALERTS:
            if resolved:
                gone = next(iter(resolved))
                del resolved[gone]
                del alerts[gone]
                continue
            gone = next(iter(alerts))
            del alerts[gone]
            kept = self._unlisting(incident)
            if len(kept) < MAX_UNLISTED:
                kept.add(gone)
            else:
                lost = True
        return lost

    def _unlisting(self, incident: Incident) -> set[str]:
        """The unlisted fingerprints as a set to change (copied once per fold)."""
        if self._unlisted is None:
            self._unlisted = set(incident.unlisted)
        return self._unlisted


def _fold_steps(
    incident: Incident,
    trace: AlertTrace,
    lines: tuple[dict[LedgerKey, LedgerItem], dict[LedgerKey, int]],
    now: datetime,
    policy: IncidentPolicy,
    *,
    follows: frozenset[str],
    evidence: frozenset[str],
) -> tuple[Incident, list[LedgerItem], list[Effect]]:
    """Each step's ledger line; the new lines.

    ``lines``: the ledger, and the times each line was decided again since
    (both updated in place).
    """
    ledger, again = lines
    effects: list[Effect] = []
    fingerprint = trace.alert.fingerprint
    fresh: list[LedgerItem] = []
    for match in trace.matches:
        rule = match.rule
        for index, step in enumerate(match.steps):
            decision = step.decision.value
            key = (fingerprint, rule, index, decision)
            if rule in evidence:
                incident = keep_evidence(incident, rule, step, now)
            if key in ledger:
                again[key] = again.get(key, 0) + 1
                continue
            item = LedgerItem(
                now,
                rule,
                step.kind.value,
                step.type,
                step.target,
                decision,
                step.reason[:300],
                trace.mode,
                fingerprint=fingerprint,
                index=index,
            )
            ledger[key] = item
            fresh.append(item)
            if step.kind is StepKind.REMEDIATION:
                incident, more = _remediation(
                    incident, item, step.result, now, policy, rule in follows
                )
                effects += more
    return incident, fresh, effects


def _resolved(
    incident: Incident, now: datetime, policy: IncidentPolicy, follows: frozenset[str]
) -> tuple[Incident, list[Effect]]:
    """Every alert resolved: the incident too, and PagerDuty's if it follows."""
    incident, effects = resolve(
        incident, now, policy, by="receiver", why="all alerts resolved"
    )
    verified = any(
        e.kind == "remediation" and e.text.startswith("Remediated and verified")
        for e in incident.timeline
    )
    if verified and {a.rule for a in incident.alerts} & follows:
        incident, more = _pagerduty_status(
            incident, "resolved", "remediation verified and alerts resolved"
        )
        effects += more
    return incident, effects


def _drafts_midway(trace: AlertTrace, ledger: Mapping[LedgerKey, LedgerItem]) -> bool:
    """Whether folding ``trace`` may ``mitigate``, whose draft reads the ledger.

    Only a new line for a remediation that ran can (``_remediation``).
    """
    fingerprint = trace.alert.fingerprint
    for match in trace.matches:
        for index, step in enumerate(match.steps):
            if (
                step.decision is Decision.EXECUTED
                and step.kind is StepKind.REMEDIATION
                and (fingerprint, match.rule, index, step.decision.value) not in ledger
            ):
                return True
    return False


def _pagerduty_status(
    incident: Incident, status: str, why: str
) -> tuple[Incident, list[Effect]]:
    """Once per status, when a PagerDuty incident is linked."""
    key = f"pagerduty:{status}"
    if not incident.pagerduty_id or key in incident.escalations:
        return incident, []
    incident = replace(incident, escalations=incident.escalations | {key})
    return incident, [PagerDutyStatus(incident.pagerduty_id, status, why)]


def _remediation(  # noqa: PLR0917 (one call site, all needed)
    incident: Incident,
    item: LedgerItem,
    result: object,
    now: datetime,
    policy: IncidentPolicy,
    follows: bool,
) -> tuple[Incident, list[Effect]]:
    effects: list[Effect] = []
    if follows and item.decision == Decision.EXECUTED.value:
        incident, effects = _pagerduty_status(
            incident, "acknowledged", f"remediation ran: {item.type}"
        )
    what = f"{item.type} {item.target}"
    if item.decision == Decision.AWAITING_APPROVAL.value:
        return add_entry(
            incident, now, "approval_requested", f"Approval requested: {what}"
        ), []
    if item.decision == Decision.EXECUTED.value and _verified(result):
        incident = add_entry(
            incident, now, "remediation", f"Remediated and verified: {what}"
        )
        if STATE_RANK[incident.state] < STATE_RANK[State.MITIGATED]:
            incident, more = mitigate(incident, now, policy, by="receiver", why=what)
            effects += more
        return incident, effects
    if item.decision == Decision.FAILED.value:
        incident = add_entry(
            incident, now, "remediation", f"Remediation failed: {what}: {item.reason}"
        )
        key = f"failed:{item.type}:{item.target}"
        if key not in incident.escalations:
            incident = replace(incident, escalations=incident.escalations | {key})
            effects += _escalate(incident, f"remediation failed: {what}", policy)
        return incident, effects
    verb = {"executed": "Executed", "dry_run": "Would run (dry-run)"}.get(
        item.decision, "Refused"
    )
    text = f"{verb}: {what}: {item.reason}"
    return add_entry(incident, now, "remediation", text), effects


def escalate_to(incident: Incident, policy: IncidentPolicy) -> str:
    """The escalation matrix's contacts, then those the playbooks name."""
    target = policy.of(incident.severity).escalate_to
    return ", ".join(dict.fromkeys((target, *incident.contacts)))


def _escalate(incident: Incident, why: str, policy: IncidentPolicy) -> list[Effect]:
    who = escalate_to(incident, policy)
    effects: list[Effect] = [
        Announce(
            "escalation",
            f"[{incident.severity}] {incident.id} escalated to {who}",
            f"{incident.title}: {why}",
            who,
        )
    ]
    if incident.pagerduty_id:
        effects.append(
            PagerDutyEscalate(incident.pagerduty_id, 2, incident.severity, why)
        )
    return effects


def acknowledge(
    incident: Incident, at: datetime, policy: IncidentPolicy, *, by: str, via: str
) -> tuple[Incident, list[Effect]]:
    """Someone acknowledged: a timeline line; the first one while open is kept.

    The acknowledge clock stops here unless a mitigation or the resolution
    stopped it first (``clocks``): then the line says when, and the clock
    stays where it stopped. A resolved incident keeps no acknowledgment time.
    """
    if incident.acknowledged_at is not None:
        return add_entry(
            incident, at, "acknowledged", f"Acknowledged again via {via}", by
        ), []
    text = f"Acknowledged via {via}"
    clock = clocks(incident, policy)[0]
    if clock.stopped is not None:
        text += (
            f" (the acknowledge clock had already stopped at {clock.stopped_by}, "
            f"{minute(clock.stopped)})"
        )
    if incident.active:
        incident = replace(
            incident,
            acknowledged_at=at,
            state=State.ACKNOWLEDGED
            if STATE_RANK[incident.state] < STATE_RANK[State.ACKNOWLEDGED]
            else incident.state,
        )
    return add_entry(incident, at, "acknowledged", text, by), []


def mitigate(
    incident: Incident, at: datetime, policy: IncidentPolicy, *, by: str, why: str
) -> tuple[Incident, list[Effect]]:
    """Mitigated: a verified remediation, or a person's mark; the clock stops."""
    if incident.mitigated_at is not None or not incident.active:
        return incident, []
    incident = replace(incident, mitigated_at=at, state=State.MITIGATED)
    incident = add_entry(incident, at, "mitigated", f"Mitigated: {why}", by)
    return incident, [
        Announce(
            "status_update",
            f"[{incident.severity}] {incident.id}: Monitoring",
            draft(incident, at, policy),
        )
    ]


def resolve(
    incident: Incident, at: datetime, policy: IncidentPolicy, *, by: str, why: str
) -> tuple[Incident, list[Effect]]:
    """Resolved: every clock stops; the post-mortem is due in 48 h."""
    if not incident.active:
        return incident, []
    incident = replace(incident, resolved_at=at, state=State.RESOLVED)
    incident = add_entry(incident, at, "resolved", f"Resolved: {why}", by)
    return incident, [
        Announce(
            "status_update",
            f"[{incident.severity}] {incident.id}: Resolved",
            draft(incident, at, policy),
        )
    ]


def comment(incident: Incident, at: datetime, *, by: str, text: str) -> Incident:
    """A person's note on the timeline."""
    return add_entry(incident, at, "comment", text, by)


def message_sent(incident: Incident, at: datetime, text: str) -> Incident:
    """What was sent where (sinks, PagerDuty), on the timeline."""
    return add_entry(incident, at, "message_sent", text[:500])


def status_published(
    incident: Incident, at: datetime, *, by: str, text: str
) -> Incident:
    """A person published a status update: the cadence counts from now."""
    incident = replace(incident, cadence_from=at)
    return add_entry(
        incident, at, "status_update", text or "Status update published", by
    )


def next_update_at(incident: Incident, policy: IncidentPolicy) -> datetime:
    """When the next status update is due."""
    return policy.next_update(incident.severity, incident.cadence_from)


def advance(
    incident: Incident,
    now: datetime,
    policy: IncidentPolicy,
    reevaluate: Reevaluate,
) -> tuple[Incident, list[Effect]]:
    """Move the clocks to ``now``: promote, breach, escalate, draft, remind."""
    effects: list[Effect] = []
    if incident.active:
        for ref in incident.alerts:
            if ref.status != "firing":
                continue
            level = reevaluate(ref, now)
            if level is not None:
                why = f"{ref.labels.get('alertname', ref.fingerprint)} has fired for "
                why += describe_age(now - ref.starts_at) if ref.starts_at else "a while"
                incident, more = _promote(incident, level, why, now)
                effects += more
        incident, more = _breaches(incident, now, policy)
        effects += more
        incident, more = _matrix_escalation(incident, now, policy)
        effects += more
        due = next_update_at(incident, policy)
        if now >= due:
            incident = replace(incident, cadence_from=now, drafts=incident.drafts + 1)
            text = draft(incident, now, policy)
            incident = add_entry(
                incident,
                now,
                "status_update_draft",
                f"Status-update draft #{incident.drafts} ({phase(incident)}) sent",
            )
            effects.append(
                Announce(
                    "status_draft",
                    f"[{incident.severity}] {incident.id}: status update due "
                    f"({phase(incident)})",
                    text,
                )
            )
    elif (
        incident.resolved_at is not None
        and not incident.post_mortem_reminded
        and now >= incident.resolved_at + policy.post_mortem_due
    ):
        incident = replace(incident, post_mortem_reminded=True)
        text = (
            f"The post-mortem for {incident.id} ({incident.title}) is due: "
            f"resolved {iso(incident.resolved_at)}, the runbook asks for it within "
            f"{describe(policy.post_mortem_due)}. GET /api/v1/incidents/"
            f"{incident.id}/report has the draft."
        )
        incident = add_entry(incident, now, "post_mortem_due", text)
        effects.append(
            Announce("post_mortem_due", f"{incident.id}: post-mortem due", text)
        )
    return incident, effects


def _breaches(
    incident: Incident, now: datetime, policy: IncidentPolicy
) -> tuple[Incident, list[Effect]]:
    effects: list[Effect] = []
    for clock in clocks(incident, policy):
        # A stopped clock is judged, and its breach recorded, at the severity
        # it stopped under; a running one at the current severity.
        key = f"{clock.name}@{clock.severity}"
        if key in incident.breaches or not clock.breached(now):
            continue
        if clock.stopped is not None and clock.stopped <= clock.deadline:
            continue
        incident = replace(incident, breaches=incident.breaches | {key})
        text = (
            f"{clock.name} target {describe(clock.target)} for {clock.severity} "
            f"passed at {iso(clock.deadline)}"
        )
        incident = add_entry(
            incident, now, "breach", f"Breach: {text}", clock=clock.name
        )
        effects.append(CountBreach(clock.severity, clock.name))
        effects += _escalate(incident, f"breach: {text}", policy)
    return incident, effects


def _matrix_escalation(
    incident: Incident, now: datetime, policy: IncidentPolicy
) -> tuple[Incident, list[Effect]]:
    target = policy.of(incident.severity)
    key = f"matrix@{incident.severity}"
    if key in incident.escalations or now < incident.opened_at + target.escalate_after:
        return incident, []
    incident = replace(incident, escalations=incident.escalations | {key})
    when = describe(target.escalate_after)
    why = (
        f"the escalation matrix for {incident.severity} says escalate "
        f"{'immediately' if when == 'immediately' else 'after ' + when} "
        f"to {escalate_to(incident, policy)}"
    )
    quiet = f" ({policy.nobody_contacted})" if policy.nobody_contacted else ""
    incident = add_entry(
        incident,
        now,
        "escalated",
        f"Escalated to {escalate_to(incident, policy)}: {why}{quiet}",
    )
    return incident, _escalate(incident, why, policy)


def keep_evidence(
    incident: Incident, rule: str, step: StepTrace, now: datetime
) -> Incident:
    """Keep a diagnostic's result with its sha256, once per distinct content."""
    if step.kind is not StepKind.DIAGNOSTIC or step.decision is not Decision.EXECUTED:
        return incident
    content = json.dumps(
        {"type": step.type, "target": step.target, "result": dict(step.result)},
        sort_keys=True,
        default=str,
    )[:MAX_EVIDENCE_CHARS]
    digest = hashlib.sha256(content.encode()).hexdigest()
    if any(e.sha256 == digest for e in incident.evidence):
        return incident
    kept = Evidence(now, rule, step.type, step.target, digest, content)
    incident = replace(incident, evidence=(*incident.evidence, kept)[-MAX_EVIDENCE:])
    return add_entry(
        incident,
        now,
        "evidence",
        f"Evidence kept: {step.type} {step.target} sha256={digest}",
        sha256=digest,
    )
