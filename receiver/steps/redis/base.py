"""What every ``redis.*`` step model shares: the target, the command, the keys.

``RedisStep`` names the configured Redis target a step acts on and how it is
described; ``KeysStep`` a command on explicitly named keys. The step modules
beside this one hold the models and the code that runs them. No I/O.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict, Field
from typing_extensions import override

from receiver.model import JSONObject
from receiver.rulebook.steps.base import RedisKey, StepModel


class RedisStep(StepModel):
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
        description="Name of a redis.targets entry in settings.",
    )
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def subject(self) -> str:
        """What the command acts on ("" for the whole server)."""
        return ""

    def details(self) -> JSONObject:
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
    def describe(self) -> JSONObject:
        return {
            "verb": self.verb,
            "redis": self.target_name,
            **self.details(),
            "action": self.action(),
        }


class KeysStep(RedisStep):
    """A command on explicitly named keys."""

    keys: list[RedisKey] = Field(min_length=1, max_length=100)

    @override
    def subject(self) -> str:
        return " ".join(self.keys)

    @override
    def details(self) -> JSONObject:
        return {"keys": list(self.keys)}
