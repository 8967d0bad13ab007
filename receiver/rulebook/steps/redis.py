"""``redis.*`` step models: reads, and deletes capped by key count."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field
from typing_extensions import override

from receiver.rulebook.steps.base import RedisKey, RedisKeyPart, StepModel
from receiver.rulebook.steps.verify import Remediation
from receiver.rulebook.templates import Slot, SlotMarker


class _Redis(StepModel):
    """A step on one of the configured Redis targets.

    ``verb`` is the Redis command, ``subject`` what it acts on (keys, a
    pattern), ``details`` the request fields dry-run shows; the target and the
    description are the same shape for every Redis step.
    """

    family: ClassVar[str] = "redis"
    verb: ClassVar[str] = ""
    target_name: str = Field(
        default="default",
        alias="redis",
        description="Name of a redis_targets entry in settings.",
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def subject(self) -> str:
        """What the command acts on ("" for the whole server)."""
        return ""

    def details(self) -> dict[str, Any]:
        """The request's own fields, as dry-run shows them."""
        return {}

    def action(self) -> str:
        """One line saying what the step does."""
        return f"{self.verb} {self.subject()} on redis {self.target_name}"

    @override
    def target(self) -> str:
        subject = self.subject()
        return f"redis:{self.target_name}" + (f" {subject}" if subject else "")

    @override
    def describe(self) -> dict[str, Any]:
        return {
            "verb": self.verb,
            "redis": self.target_name,
            **self.details(),
            "action": self.action(),
        }


class _Keys(_Redis):
    """A command on explicitly named keys."""

    keys: list[RedisKey] = Field(min_length=1, max_length=100)

    @override
    def subject(self) -> str:
        return " ".join(self.keys)

    @override
    def details(self) -> dict[str, Any]:
        return {"keys": list(self.keys)}


class RedisGet(_Keys):
    """Read keys (e.g. circuit-breaker state)."""

    verb: ClassVar[str] = "GET"
    type: Literal["redis.get"] = "redis.get"


class RedisInfo(_Redis):
    """INFO stats with the cache hit rate, as the runbook computes it."""

    verb: ClassVar[str] = "INFO"
    type: Literal["redis.info"] = "redis.info"
    section: Literal["stats", "memory", "clients", "server", "keyspace"] = "stats"

    @override
    def details(self) -> dict[str, Any]:
        return {"section": self.section}

    @override
    def action(self) -> str:
        rate = " (hit rate = hits / (hits + misses))" if self.section == "stats" else ""
        return f"INFO {self.section} on redis {self.target_name}{rate}"


class RedisDeleteKeys(_Keys, Remediation):
    """Delete explicitly named keys."""

    verb: ClassVar[str] = "UNLINK"
    type: Literal["redis.delete_keys"] = "redis.delete_keys"


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

    verb: ClassVar[str] = "SCAN+UNLINK"
    type: Literal["redis.delete_pattern"] = "redis.delete_pattern"
    pattern: Annotated[str, AfterValidator(_check_pattern), SlotMarker(Slot.REDIS_KEY)]
    max_keys: int = Field(default=1000, ge=1, le=100_000)
    scan_count: int = Field(default=500, ge=10, le=10_000)

    @override
    def subject(self) -> str:
        return self.pattern

    @override
    def details(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "max_keys": self.max_keys}

    @override
    def action(self) -> str:
        return (
            f"SCAN MATCH {self.pattern} COUNT {self.scan_count} and UNLINK "
            f"at most {self.max_keys} keys on redis {self.target_name}"
        )


class RedisResetCircuitBreaker(_Redis, Remediation):
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
    def details(self) -> dict[str, Any]:
        return {"keys": self.keys()}

    @override
    def action(self) -> str:
        return (
            f"reset circuit breaker {self.breaker!r}: UNLINK "
            f"{' '.join(self.keys())} on redis {self.target_name}"
        )


STEPS: tuple[type[StepModel], ...] = (
    RedisGet,
    RedisInfo,
    RedisDeleteKeys,
    RedisDeletePattern,
    RedisResetCircuitBreaker,
)
