"""``redis.delete_pattern``: SCAN + UNLINK the keys of a prefixed pattern, under a cap.

Never ``KEYS`` or ``FLUSH*``; the pattern must start with a literal prefix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import AfterValidator, Field
from typing_extensions import override

from receiver.model import Alert, Intent, JSONObject, RecheckResult, StepResult
from receiver.rulebook.steps.verify import Remediation
from receiver.rulebook.templates import Slot, SlotMarker
from receiver.steps.defs import Change
from receiver.steps.redis.base import RedisStep

if TYPE_CHECKING:
    from receiver.steps.redis.executor import RedisExecutor


def _check_pattern(pattern: str) -> str:
    stripped = pattern.strip()
    if not stripped or stripped[0] in "*?[\\":
        raise ValueError(
            f"pattern {pattern!r} has no literal prefix; start it with a fixed "
            "prefix such as 'policy:decision:*' (a bare '*' would delete everything)"
        )
    return pattern


class RedisDeletePattern(RedisStep, Remediation):
    """Delete keys matching a prefixed pattern with SCAN + UNLINK, under a cap."""

    verb: ClassVar[str] = "SCAN+UNLINK"
    type: Literal["redis.delete_pattern"] = "redis.delete_pattern"
    pattern: Annotated[str, AfterValidator(_check_pattern), SlotMarker(Slot.REDIS_KEY)]
    max_keys: int = Field(default=1000, ge=1, le=100_000)
    scan_count: int = Field(default=500, ge=10, le=10_000)

    @override
    def subject(self) -> str:
        return self.pattern

    @override
    def details(self) -> JSONObject:
        return {"pattern": self.pattern, "max_keys": self.max_keys}

    @override
    def action(self) -> str:
        return (
            f"SCAN MATCH {self.pattern} COUNT {self.scan_count} and UNLINK "
            f"at most {self.max_keys} keys on redis {self.target_name}"
        )


async def prepare(
    redis: RedisExecutor, step: RedisDeletePattern, alert: Alert
) -> Intent:
    """A sample of the matching keys with their digests."""
    del alert
    return await redis.prepare_pattern(step)


async def apply(
    redis: RedisExecutor, step: RedisDeletePattern, alert: Alert, intent: Intent
) -> StepResult:
    """SCAN MATCH and UNLINK in batches, at most ``max_keys``."""
    del alert, intent
    return await redis.delete_pattern(step)


async def recheck(
    redis: RedisExecutor, step: RedisDeletePattern, intent: Intent
) -> RecheckResult:
    """Gone: took effect; every key as it was: did not; else cannot tell."""
    return await redis.recheck_deleted(step.target_name, intent, step)


STEPS = (Change(RedisDeletePattern, prepare, apply, recheck),)
