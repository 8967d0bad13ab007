"""The step registry: the step and verify types one set of rules may use.

``build_registry`` takes the step models (each step module in
``receiver.steps`` declares its model next to the code that runs it;
``receiver.steps.catalog`` finds them) and the verify models, refusing a type
named twice. The rule schema's step union (``union``, which
``receiver.rulebook.schema.playbook_model`` puts into the playbook model), the
loader's error locations, the chart's RBAC (``scripts/rbac-steps.py``) and the
step reference (``docs/steps.md``) all come from one registry. It is built at
the composition root and handed to ``load_rulebook``; this module imports no
step type and nothing registers itself at import time.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Annotated

from pydantic import Field

from receiver.rulebook.steps.base import Rbac, StepModel, Templated
from receiver.rulebook.steps.verify import VERIFIES

D = typing.TypeVar("D")


# eq=False: a registry is compared (and cached against) by identity.
@dataclass(frozen=True, eq=False)
class StepRegistry:
    """Step and verify models by their ``type``, in the order they were given."""

    steps: Mapping[str, type[StepModel]]
    verifies: Mapping[str, type[Templated]]
    # What is built once from the registry (the playbook model), by name.
    _derived: dict[str, type] = field(default_factory=dict, repr=False)

    def derived(
        self, name: str, build: Callable[[], type[D]], base: type[D]
    ) -> type[D]:
        """``build()`` the first time ``name`` is asked for, the same class after."""
        found = self._derived.get(name)
        if found is None:
            found = self._derived[name] = build()
        if not issubclass(found, base):
            raise TypeError(f"{name} was built as {found}, not a {base}")
        return found

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

    @cached_property
    def union(self) -> object:
        """The step union rules validate against, discriminated on ``type``.

        An annotated type for pydantic (``list[registry.union]``); with no step
        types, a union nothing validates against.
        """
        models = tuple(self.steps.values())
        if len(models) < 2:
            return models[0] if models else StepModel
        return Annotated[
            typing.Union[models],  # noqa: UP007
            Field(discriminator="type"),
        ]


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


def build_registry(
    steps: Iterable[type[StepModel]],
    verifies: Iterable[type[Templated]] = VERIFIES,
) -> StepRegistry:
    """A registry of ``steps`` and ``verifies``.

    Raises:
        ValueError: two models declare the same ``type``.
    """
    return StepRegistry(_by_type(steps), _by_type(verifies))


# A rulebook built by hand (no rule files) knows no step types.
NO_STEPS = build_registry((), ())
