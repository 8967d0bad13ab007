"""``redis.*`` step models: reads, and deletes capped by key count."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field
from typing_extensions import override

from receiver.rulebook.steps.base import RedisKey, RedisKeyPart, StepModel
from receiver.rulebook.steps.verify import Remediation
from receiver.rulebook.templates import Slot, SlotMarker


class _Redis(StepModel):
    """A step on one of the configured Redis targets."""

    family: ClassVar[str] = "redis"
    target_name: str = Field(
        default="default",
        alias="redis",
        description="Name of a redis_targets entry in settings.",
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RedisGet(_Redis):
    """Read keys (e.g. circuit-breaker state)."""

    type: Literal["redis.get"] = "redis.get"
    keys: list[RedisKey] = Field(min_length=1, max_length=100)

    @override
    def target(self) -> str:
        return f"redis:{self.target_name} {' '.join(self.keys)}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "GET",
            "redis": self.target_name,
            "keys": list(self.keys),
            "action": f"GET {' '.join(self.keys)} on redis {self.target_name}",
        }


class RedisInfo(_Redis):
    """INFO stats with the cache hit rate, as the runbook computes it."""

    type: Literal["redis.info"] = "redis.info"
    section: Literal["stats", "memory", "clients", "server", "keyspace"] = "stats"

    @override
    def target(self) -> str:
        return f"redis:{self.target_name}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "INFO",
            "redis": self.target_name,
            "section": self.section,
            "action": f"INFO {self.section} on redis {self.target_name}"
            + (
                " (hit rate = hits / (hits + misses))"
                if self.section == "stats"
                else ""
            ),
        }


class RedisDeleteKeys(_Redis, Remediation):
    """Delete explicitly named keys."""

    type: Literal["redis.delete_keys"] = "redis.delete_keys"
    keys: list[RedisKey] = Field(min_length=1, max_length=100)

    @override
    def target(self) -> str:
        return f"redis:{self.target_name} {' '.join(self.keys)}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "UNLINK",
            "redis": self.target_name,
            "keys": list(self.keys),
            "action": f"UNLINK {' '.join(self.keys)} on redis {self.target_name}",
        }


def _check_pattern(pattern: str) -> str:
    stripped = pattern.strip()
    if not stripped or stripped[0] in "*?[\\":
        raise ValueError(
            f"pattern {pattern!r} has no literal prefix; start it with a fixed "
            "prefix such as 'policy:decision:*' (a bare '*' would delete everything)"
        )
    return pattern


class RedisDeletePattern(_Redis, Remediation):
    """Delete keys matching a prefixed pattern with SCAN + UNLINK, under a cap."""

    type: Literal["redis.delete_pattern"] = "redis.delete_pattern"
    pattern: Annotated[str, AfterValidator(_check_pattern), SlotMarker(Slot.REDIS_KEY)]
    max_keys: int = Field(default=1000, ge=1, le=100_000)
    scan_count: int = Field(default=500, ge=10, le=10_000)

    @override
    def target(self) -> str:
        return f"redis:{self.target_name} {self.pattern}"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "SCAN+UNLINK",
            "redis": self.target_name,
            "pattern": self.pattern,
            "max_keys": self.max_keys,
            "action": f"SCAN MATCH {self.pattern} COUNT {self.scan_count} and UNLINK "
            f"at most {self.max_keys} keys on redis {self.target_name}",
        }


class RedisResetCircuitBreaker(_Redis, Remediation):
    """Delete ``circuit:<name>:state`` and ``circuit:<name>:failure``."""

    type: Literal["redis.reset_circuit_breaker"] = "redis.reset_circuit_breaker"
    breaker: RedisKeyPart = Field(description="Breaker name, e.g. {labels.siem}.")

    def keys(self) -> list[str]:
        """The two keys the runbook deletes."""
        return [f"circuit:{self.breaker}:state", f"circuit:{self.breaker}:failure"]

    @override
    def target(self) -> str:
        return f"redis:{self.target_name} circuit:{self.breaker}:*"

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": "UNLINK",
            "redis": self.target_name,
            "keys": self.keys(),
            "action": f"reset circuit breaker {self.breaker!r}: UNLINK "
            f"{' '.join(self.keys())} on redis {self.target_name}",
        }


STEPS: tuple[type[StepModel], ...] = (
    RedisGet,
    RedisInfo,
    RedisDeleteKeys,
    RedisDeletePattern,
    RedisResetCircuitBreaker,
)
