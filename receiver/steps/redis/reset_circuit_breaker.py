"""``redis.reset_circuit_breaker``: delete a breaker's state and failure keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field
from typing_extensions import override

from receiver.model import Alert, Intent, JSONObject, RecheckResult, StepResult
from receiver.rulebook.steps.base import RedisKeyPart
from receiver.rulebook.steps.verify import Remediation
from receiver.steps.defs import Change
from receiver.steps.redis.base import RedisStep

if TYPE_CHECKING:
    from receiver.steps.redis.executor import RedisExecutor


class RedisResetCircuitBreaker(RedisStep, Remediation):
    """Delete ``circuit:<name>:state`` and ``circuit:<name>:failure``."""

    verb: ClassVar[str] = "UNLINK"
    type: Literal["redis.reset_circuit_breaker"] = "redis.reset_circuit_breaker"
    breaker: RedisKeyPart = Field(description="Breaker name, e.g. {labels.siem}.")

    def keys(self) -> list[str]:
        """The two keys the runbook deletes."""
        return [f"circuit:{self.breaker}:state", f"circuit:{self.breaker}:failure"]

    @override
    def subject(self) -> str:
        return f"circuit:{self.breaker}:*"

    @override
    def details(self) -> JSONObject:
        return {"keys": self.keys()}

    @override
    def action(self) -> str:
        return (
            f"reset circuit breaker {self.breaker!r}: UNLINK "
            f"{' '.join(self.keys())} on redis {self.target_name}"
        )


async def prepare(
    redis: RedisExecutor, step: RedisResetCircuitBreaker, alert: Alert
) -> Intent:
    """Name the breaker's two keys and digest their values."""
    del alert
    return await redis.prepare_keys(step.target_name, step.keys())


async def apply(
    redis: RedisExecutor, step: RedisResetCircuitBreaker, alert: Alert, intent: Intent
) -> StepResult:
    """UNLINK the breaker's keys."""
    del alert, intent
    return await redis.reset_breaker(step)


async def recheck(
    redis: RedisExecutor, step: RedisResetCircuitBreaker, intent: Intent
) -> RecheckResult:
    """Gone: took effect; every key as it was: did not; else cannot tell."""
    return await redis.recheck_deleted(step.target_name, intent, None)


STEPS = (Change(RedisResetCircuitBreaker, prepare, apply, recheck),)
