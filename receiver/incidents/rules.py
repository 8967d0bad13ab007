"""What incidents read of the loaded rulebook, cached per rulebook object.

The policy (the runbook's targets with the rule files' ``incidents:`` overrides),
the playbook flags (outcomes drive PagerDuty, diagnostics kept as evidence), a
rule's ``group_by`` keys and an alert's severity now. A reload swaps the rulebook
object, which invalidates each cache. ``service`` holds one ``RuleView``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from receiver.incidents.grouping import keys_of
from receiver.incidents.policy import IncidentPolicy, policy_from
from receiver.model import Alert, Severity
from receiver.rulebook.severity import resolve_severity

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from receiver.incidents.model import AlertRef
    from receiver.model import AlertTrace
    from receiver.rulebook.loader import Rulebook
    from receiver.rulebook.schema import CompiledRule


class RuleView:
    """The incident service's reading of the current rulebook."""

    def __init__(
        self,
        rulebook: Callable[[], Rulebook],
        policy: IncidentPolicy | None = None,
        *,
        nobody_contacted: str = "",
    ) -> None:
        self._rulebook = rulebook
        self._nobody_contacted = nobody_contacted
        self._fixed_policy = (
            replace(policy, nobody_contacted=nobody_contacted)
            if policy is not None and nobody_contacted
            else policy
        )
        self._policy_of: tuple[Rulebook, IncidentPolicy] | None = None
        self._flags_of: tuple[Rulebook, frozenset[str], frozenset[str]] | None = None
        self._rules_of: tuple[Rulebook, dict[str, CompiledRule]] | None = None

    @property
    def policy(self) -> IncidentPolicy:
        """The runbook's targets with the rule files' ``incidents:`` overrides."""
        if self._fixed_policy is not None:
            return self._fixed_policy
        book = self._rulebook()
        if self._policy_of is None or self._policy_of[0] is not book:
            built = policy_from(book.incidents)
            if self._nobody_contacted:
                built = replace(built, nobody_contacted=self._nobody_contacted)
            self._policy_of = (book, built)
        return self._policy_of[1]

    def _flags(self) -> tuple[frozenset[str], frozenset[str]]:
        """Rules whose playbook lets outcomes drive PagerDuty; keeps evidence."""
        book = self._rulebook()
        if self._flags_of is None or self._flags_of[0] is not book:
            playbooks = [(c.name, book.playbooks.get(c.playbook)) for c in book.rules]
            follows = frozenset(
                n for n, p in playbooks if p and p.pagerduty_follows_outcomes
            )
            evidence = frozenset(n for n, p in playbooks if p and p.evidence)
            self._flags_of = (book, follows, evidence)
        return self._flags_of[1], self._flags_of[2]

    def _rule_named(self, name: str) -> CompiledRule | None:
        """The loaded rule called ``name`` (an index per rulebook, not a scan)."""
        book = self._rulebook()
        if self._rules_of is None or self._rules_of[0] is not book:
            self._rules_of = (book, {c.name: c for c in book.rules})
        return self._rules_of[1].get(name)

    def follows(self) -> frozenset[str]:
        """Rules whose playbook lets verified outcomes drive PagerDuty."""
        return self._flags()[0]

    def evidence_rules(self) -> frozenset[str]:
        """Rules whose playbook keeps its diagnostics as evidence."""
        return self._flags()[1]

    def keys(self, trace: AlertTrace) -> list[str]:
        """Grouping keys; a rule's ``group_by`` labels come first when it has them."""
        keys = keys_of(trace.alert)
        if not trace.matches:
            return keys
        name = trace.matches[0].rule
        rule = self._rule_named(name)
        group_by = rule.rule.group_by if rule is not None else None
        if group_by:
            values = ",".join(f"{k}={trace.alert.labels.get(k, '')}" for k in group_by)
            keys.insert(0, f"rule:{name}:{values}")
        return keys

    def reevaluate(self, ref: AlertRef, now: datetime) -> Severity | None:
        """The alert's severity now, by its rule (the matrix ages with the alert)."""
        rule = self._rule_named(ref.rule)
        if rule is None:
            return None
        alert = Alert(
            source="alertmanager" if ref.source == "alertmanager" else "events_v2",
            fingerprint=ref.fingerprint,
            status="firing",
            labels=ref.labels,
            starts_at=ref.starts_at,
        )
        return resolve_severity(rule.severity, alert, now)[0]
