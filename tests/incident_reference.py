"""The per-trace ``observe`` as it was before ``Folding``: the reference it must match.

Copied from ``receiver.incidents.lifecycle`` as of commit d646522 (the alert
upserted by a scan of the alerts tuple, the ledger rebuilt as a tuple per
trace), calling the same helpers, so the equivalence tests compare the batch
fold against the old algorithm rather than against itself. The alert cap's
rule since, written out plainly: past ``MAX_ALERTS`` the oldest resolved alert
is dropped, else the oldest, whose fingerprint goes to ``unlisted`` while it
holds fewer than ``MAX_UNLISTED`` (else the incident has lost track); an alert
that comes back leaves ``unlisted``; the incident resolves by itself only when
every listed alert is resolved, none is unlisted and it never lost track.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from receiver.incidents import lifecycle as lc
from receiver.incidents.effects import Effect
from receiver.incidents.model import AlertRef, Incident, LedgerItem
from receiver.incidents.policy import IncidentPolicy
from receiver.model import AlertTrace, StepKind


def _cap(listed: list[AlertRef], unlisted: set[str]) -> bool:
    """Drop alerts past the cap (in place); True if one is lost track of."""
    lost = False
    while len(listed) > lc.MAX_ALERTS:
        resolved = [a for a in listed if a.status == "resolved"]
        if resolved:
            listed.remove(resolved[0])
        else:
            gone = listed.pop(0)
            if len(unlisted) < lc.MAX_UNLISTED:
                unlisted.add(gone.fingerprint)
            else:
                lost = True
    return lost


def _upsert_alert(
    incident: Incident, trace: AlertTrace, now: datetime
) -> tuple[Incident, bool]:
    """Record the alert; True if its status or occurrence changed."""
    alert = trace.alert
    rule = trace.matches[0].rule if trace.matches else ""
    severity = lc._severity_of(trace) or incident.severity
    ref = AlertRef(
        alert.fingerprint,
        alert.source,
        rule,
        alert.status,
        severity,
        lc.freeze(dict(alert.labels)),
        alert.starts_at,
        alert.ends_at,
        lc.title_of(trace),
        alert.generator_url,
    )
    alerts = incident.alerts
    last = alerts[-1] if alerts else None
    if last is not None and last.fingerprint == alert.fingerprint:
        # Seen last already (an alert that keeps firing): no scan.
        old: AlertRef | None = last
        others = alerts[:-1]
    else:
        old = next((a for a in alerts if a.fingerprint == alert.fingerprint), None)
        others = tuple(a for a in alerts if a.fingerprint != alert.fingerprint)
    was_unlisted = alert.fingerprint in incident.unlisted
    unlisted = set(incident.unlisted) - {alert.fingerprint}
    if old is not None:
        changed = (old.status, old.starts_at) != (ref.status, ref.starts_at)
    else:
        # It was firing when it was unlisted: firing again is no news.
        changed = not (was_unlisted and alert.status == "firing")
    if old is not None and ref.rule == "":
        ref = replace(ref, rule=old.rule, severity=old.severity)
    lost = False
    if old is not last or ref != old:
        listed = [*others, ref]
        lost = _cap(listed, unlisted)
        incident = lc.evolve(incident, alerts=tuple(listed))
    incident = lc.evolve(incident, unlisted=frozenset(unlisted))
    if changed:
        name = alert.labels.get("alertname", alert.fingerprint)
        if alert.status == "firing":
            since = f" (since {lc.iso(alert.starts_at)})" if alert.starts_at else ""
            text = f"{name} firing{since} from {alert.source}"
            incident = lc.add_entry(
                incident, now, "alert_fired", text, fingerprint=alert.fingerprint
            )
        else:
            incident = lc.add_entry(
                incident,
                now,
                "alert_resolved",
                f"{name} resolved",
                fingerprint=alert.fingerprint,
            )
    if lost and not incident.lost_track:
        incident = lc.evolve(incident, lost_track=True)
        incident = lc.add_entry(
            incident, now, "lost_track", lc.lost_track_text(incident.id)
        )
    return incident, changed


def observe_one(
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
    effects: list[Effect] = []
    incident, _changed = _upsert_alert(incident, trace, now)
    incident = lc._note_contacts(incident, trace)
    severity = lc._severity_of(trace)
    if severity is not None and trace.alert.status == "firing" and incident.active:
        incident, more = lc._promote(
            incident, severity, f"rule {trace.matches[0].rule}", now
        )
        effects += more
    ledger = lc.ledger_index(incident)
    fingerprint = trace.alert.fingerprint
    fresh: list[LedgerItem] = []
    for match in trace.matches:
        rule = match.rule
        for index, step in enumerate(match.steps):
            decision = step.decision.value
            key = (fingerprint, rule, index, decision)
            if rule in evidence:
                incident = lc.keep_evidence(incident, rule, step, now)
            known = ledger.get(key)
            if known is not None:
                ledger[key] = known.again()
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
                incident, more = lc._remediation(
                    incident, item, step.result, now, policy, rule in follows
                )
                effects += more
    incident = lc.with_ledger(incident, ledger)
    looked = [i for i in fresh if i.kind == StepKind.DIAGNOSTIC.value]
    if looked:
        listed = ", ".join(f"{i.type} {i.target} ({i.decision})" for i in looked[:8])
        incident = lc.add_entry(
            incident, now, "diagnostics", f"Diagnostics ({trace.mode}): {listed}"
        )
    if (
        incident.active
        and all(a.status == "resolved" for a in incident.alerts)
        and not incident.unlisted
        and not incident.lost_track
    ):
        incident, more = lc.resolve(
            incident, now, policy, by="receiver", why="all alerts resolved"
        )
        effects += more
        verified = any(
            e.kind == "remediation" and e.text.startswith("Remediated and verified")
            for e in incident.timeline
        )
        if verified and {a.rule for a in incident.alerts} & follows:
            incident, more = lc._pagerduty_status(
                incident, "resolved", "remediation verified and alerts resolved"
            )
            effects += more
    return incident, effects
