"""The step registry: every step and verify type, assembled in one function.

Each family module (``k8s``, ``redis``, ``http``, ``prometheus``, ``changes``)
lists its models in a ``STEPS`` tuple, and ``verify`` lists the verify models in
``VERIFIES``; ``build_registry`` assembles them (refusing a type named twice).
The rule schema's ``Step`` union, the loader's list of verify types, the chart's
RBAC (``scripts/rbac-steps.py``) and the step reference (``docs/steps.md``) are
all generated from the result; the executors in ``receiver.steps`` dispatch on
the same types. Nothing registers itself at import time.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from receiver.rulebook.steps import changes, http, k8s, prometheus, redis
from receiver.rulebook.steps.base import Rbac, StepModel, Templated
from receiver.rulebook.steps.verify import VERIFIES


@dataclass(frozen=True)
class StepRegistry:
    """Step and verify models by their ``type``, in the order families list them."""

    steps: Mapping[str, type[StepModel]]
    verifies: Mapping[str, type[Templated]]

    @property
    def families(self) -> tuple[str, ...]:
        """The executor families that run steps, sorted."""
        return tuple(sorted({cls.family for cls in self.steps.values()}))

    def verify_family(self, type_name: str) -> str:
        """The family whose executor polls verify ``type_name`` ("" if unknown)."""
        found = self.verifies.get(type_name)
        return "" if found is None else found.family

    def verify_rbac(self) -> Mapping[str, Rbac]:
        """Verify types that read Kubernetes, with what they read."""
        return {name: cls.rbac for name, cls in self.verifies.items() if cls.rbac}


T = typing.TypeVar("T", bound=Templated)


def _by_type(models: Iterable[type[T]]) -> Mapping[str, type[T]]:
    out: dict[str, type[T]] = {}
    for cls in models:
        name = cls.type_name()
        if name in out:
            msg = f"step type {name} is registered twice ({out[name]}, {cls})"
            raise ValueError(msg)
        out[name] = cls
    return MappingProxyType(out)


def build_registry() -> StepRegistry:
    """Every step type of every family, and every verify type."""
    families = (k8s.STEPS, redis.STEPS, http.STEPS, prometheus.STEPS, changes.STEPS)
    return StepRegistry(
        steps=_by_type(cls for family in families for cls in family),
        verifies=_by_type(VERIFIES),
    )


REGISTRY = build_registry()
STEP_TYPES = REGISTRY.steps
VERIFY_TYPES = REGISTRY.verifies
VERIFY_RBAC = REGISTRY.verify_rbac()

if TYPE_CHECKING:
    Step = StepModel
else:
    Step = Annotated[
        typing.Union[tuple(STEP_TYPES.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]
