"""``redis.get``: read keys (e.g. circuit-breaker state), each value capped."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from receiver.model import Alert, StepResult
from receiver.steps.defs import Probe
from receiver.steps.redis.base import KeysStep

if TYPE_CHECKING:
    from receiver.steps.redis.executor import RedisExecutor


class RedisGet(KeysStep):
    """Read keys (e.g. circuit-breaker state)."""

    verb: ClassVar[str] = "GET"
    type: Literal["redis.get"] = "redis.get"


async def run(redis: RedisExecutor, step: RedisGet, alert: Alert) -> StepResult:
    """Read the keys: type, value (capped) and TTL of each."""
    del alert
    return await redis.get_keys(step)


STEPS = (Probe(RedisGet, run),)
