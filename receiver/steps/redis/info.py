"""``redis.info``: INFO stats with the cache hit rate, as the runbook computes it."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from typing_extensions import override

from receiver.model import Alert, JSONObject, StepResult
from receiver.steps.defs import Probe
from receiver.steps.redis.base import RedisStep

if TYPE_CHECKING:
    from receiver.steps.redis.executor import RedisExecutor


class RedisInfo(RedisStep):
    """INFO stats with the cache hit rate, as the runbook computes it."""

    verb: ClassVar[str] = "INFO"
    type: Literal["redis.info"] = "redis.info"
    section: Literal["stats", "memory", "clients", "server", "keyspace"] = "stats"

    @override
    def details(self) -> JSONObject:
        return {"section": self.section}

    @override
    def action(self) -> str:
        rate = " (hit rate = hits / (hits + misses))" if self.section == "stats" else ""
        return f"INFO {self.section} on redis {self.target_name}{rate}"


async def run(redis: RedisExecutor, step: RedisInfo, alert: Alert) -> StepResult:
    """Read one INFO section; for ``stats``, the cache hit rate."""
    del alert
    return await redis.info(step)


STEPS = (Probe(RedisInfo, run),)
