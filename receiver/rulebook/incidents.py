"""The ``incidents:`` section of a rule file: the runbook's targets, overridden.

A field left out keeps the runbook's value (``receiver.incidents.policy``)::

    incidents:
      severities:
        P1: {acknowledge: 10m, update_every: 30m, escalate_to: "Engineering Manager"}
        P3: {update_every: shift_change}
      shift_changes: ["08:00", "20:00"]   # UTC
      post_mortem_due: 72h

At most one rule file may carry the section. Pure: validated with the rest of the
rules at load time.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from receiver.model import Severity
from receiver.rulebook.steps import Duration

_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


def _hhmm(value: str) -> str:
    if not _HHMM.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a time of day; write HH:MM (UTC), e.g. 09:00"
        )
    return value


class SeverityTargets(BaseModel):
    """One severity's targets; unset fields keep the runbook's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    acknowledge: Duration | None = None
    mitigate: Duration | None = None
    resolve: Duration | None = None
    update_every: Duration | Literal["shift_change"] | None = None
    first_contact: str | None = Field(default=None, min_length=1)
    escalate_after: Duration | None = None
    escalate_to: str | None = Field(default=None, min_length=1)


class IncidentConfig(BaseModel):
    """Incident targets, shift changes and the post-mortem deadline."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    severities: dict[Severity, SeverityTargets] = Field(default_factory=dict)
    shift_changes: list[Annotated[str, AfterValidator(_hhmm)]] | None = Field(
        default=None, min_length=1
    )
    post_mortem_due: Duration | None = None
