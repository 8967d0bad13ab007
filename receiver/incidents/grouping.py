"""Which incident an alert belongs to: its grouping keys.

``am:<group key>`` for Alertmanager, ``ev2:<dedup key>`` for Events v2,
``pd:<incident id>`` for PagerDuty, else ``fp:<fingerprint>``; an Alertmanager
group and an Events v2 dedup key also hold ``pdkey:<incident key>`` (the key
PagerDuty knows the incident by), which is how PagerDuty webhooks about that
incident (acknowledged, status update published) find it. A rule's ``group_by``
adds a key in front (``rules.RuleView.keys``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from receiver.incidents.model import Incident
    from receiver.model import Alert


def pagerduty_key(key: str) -> str:
    """The incident key PagerDuty gets from Alertmanager for a group key.

    Alertmanager's ``pagerduty_configs`` send sha256(group key) as the dedup key
    (the same function as ``receiver.sinks.render.alertmanager_dedup_key``).
    """
    return hashlib.sha256(key.encode()).hexdigest()


def keys_of(alert: Alert) -> list[str]:
    """The grouping keys an alert belongs under, the primary one first."""
    refs = alert.refs
    if alert.source == "pagerduty":
        keys = [f"pd:{refs.get('incident_id') or alert.fingerprint}"]
        if alert.labels.get("incident_key"):
            keys.append(f"pdkey:{alert.labels['incident_key']}")
        return keys
    if alert.source == "alertmanager" and refs.get("group_key"):
        return [f"am:{refs['group_key']}", f"pdkey:{pagerduty_key(refs['group_key'])}"]
    if alert.source == "events_v2" and refs.get("dedup_key"):
        return [f"ev2:{refs['dedup_key']}", f"pdkey:{refs['dedup_key']}"]
    return [f"fp:{alert.fingerprint}"]


def linked(incident: Incident, pagerduty_id: str) -> Incident:
    """The incident linked to a PagerDuty incident (its id becomes a key too)."""
    if not pagerduty_id or incident.pagerduty_id:
        return incident
    return replace(
        incident,
        pagerduty_id=pagerduty_id,
        keys=tuple(dict.fromkeys((*incident.keys, f"pd:{pagerduty_id}"))),
    )
