"""``redis.delete_keys``: UNLINK named keys (idempotent, so retried safely)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from receiver.model import Alert, Intent, RecheckResult, StepResult
from receiver.rulebook.steps.verify import Remediation
from receiver.steps.defs import Change
from receiver.steps.redis.base import KeysStep

if TYPE_CHECKING:
    from receiver.steps.redis.executor import RedisExecutor


class RedisDeleteKeys(KeysStep, Remediation):
    """Delete explicitly named keys."""

    verb: ClassVar[str] = "UNLINK"
    type: Literal["redis.delete_keys"] = "redis.delete_keys"


async def prepare(redis: RedisExecutor, step: RedisDeleteKeys, alert: Alert) -> Intent:
    """Name the keys and digest their values, for a re-check after a crash."""
    del alert
    return await redis.prepare_keys(step.target_name, list(step.keys))


async def apply(
    redis: RedisExecutor, step: RedisDeleteKeys, alert: Alert, intent: Intent
) -> StepResult:
    """UNLINK the step's keys (the intent only adds their digests)."""
    del alert, intent
    return await redis.delete_keys(step.target_name, list(step.keys))


async def recheck(
    redis: RedisExecutor, step: RedisDeleteKeys, intent: Intent
) -> RecheckResult:
    """Gone: took effect; every key as it was: did not; else cannot tell."""
    return await redis.recheck_deleted(step.target_name, intent, None)


STEPS = (Change(RedisDeleteKeys, prepare, apply, recheck),)
