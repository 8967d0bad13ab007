"""The step catalog: every step type, found in the step modules of each family.

A step type is one module in its family's package (``receiver.steps.k8s``,
``receiver.steps.redis``, ...): its pydantic model (what a rule writes, with
its ``rbac``, ``needs`` and ``describe``) next to the code that runs it, both
named in the module's ``STEPS`` tuple of definitions (a ``Diagnostic`` or an
``Action`` of the family, each naming its ``model``). ``build_catalog`` imports
every module of every family package and collects them, in package order,
then in the order a package's ``ORDER`` gives (modules it does not list come
after, by name); then those of any ``extra`` modules (a step type outside the
receiver's own packages, e.g. in a test); ``StepCatalog.registry`` is what
``load_rulebook`` validates rules against and ``StepCatalog.of`` what each
family's executor runs. Nothing registers itself at import time: the
composition root (``build_runtime``, the CLI, tests) calls
``builtin_catalog``, which builds the catalog once.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Protocol

from receiver.rulebook.steps import StepModel, StepRegistry, build_registry

# The family packages, in the order the registry (and the docs) list them.
FAMILIES = (
    "receiver.steps.k8s",
    "receiver.steps.redis",
    "receiver.steps.http",
    "receiver.steps.prometheus",
    "receiver.steps.changes",
)


class StepDef(Protocol):
    """What a step module's ``STEPS`` holds: a definition naming its model."""

    @property
    def model(self) -> type[StepModel]:
        """The step's model (its ``type``, ``family`` and parameters)."""
        ...


def step_modules(package: str) -> list[ModuleType]:
    """Every module of ``package`` (not its subpackages).

    In the order the package's ``ORDER`` lists them (the order the reference
    and the schema show), then any it does not list, by name: a new step
    module needs no entry there.
    """
    found = importlib.import_module(package)
    order: tuple[str, ...] = tuple(getattr(found, "ORDER", ()))
    names = sorted(
        (info.name for info in pkgutil.iter_modules(found.__path__) if not info.ispkg),
        key=lambda name: (order.index(name) if name in order else len(order), name),
    )
    return [importlib.import_module(f"{package}.{name}") for name in names]


def declared(module: ModuleType) -> tuple[StepDef, ...]:
    """The step definitions ``module`` declares in ``STEPS`` (none: no step)."""
    steps: tuple[StepDef, ...] = tuple(getattr(module, "STEPS", ()))
    for step in steps:
        model: object = getattr(step, "model", None)
        if not (isinstance(model, type) and issubclass(model, StepModel)):
            msg = f"{module.__name__}.STEPS holds {step!r}, which names no step model"
            raise TypeError(msg)
    return steps


@dataclass(frozen=True)
class StepCatalog:
    """The step registry and, per family, the definitions its executor runs."""

    registry: StepRegistry
    by_family: Mapping[str, tuple[StepDef, ...]]

    def of(self, family: str) -> tuple[StepDef, ...]:
        """The definitions of ``family``'s step types."""
        return self.by_family.get(family, ())


def build_catalog(extra: Iterable[ModuleType] = ()) -> StepCatalog:
    """Every step type of every family package, then those of ``extra`` modules.

    Raises:
        ValueError: two step modules declare the same ``type``.
        TypeError: a module's ``STEPS`` holds something that names no model.
    """
    modules = [m for package in FAMILIES for m in step_modules(package)]
    defs = [d for module in (*modules, *extra) for d in declared(module)]
    registry = build_registry(d.model for d in defs)
    by_family: dict[str, tuple[StepDef, ...]] = {}
    for d in defs:
        by_family[d.model.family] = (*by_family.get(d.model.family, ()), d)
    return StepCatalog(registry, MappingProxyType(by_family))


@functools.cache
def builtin_catalog() -> StepCatalog:
    """The receiver's own step types (built on first use, then the same)."""
    return build_catalog()


def builtin_registry() -> StepRegistry:
    """The registry of the receiver's own step types, for ``load_rulebook``."""
    return builtin_catalog().registry


def family_steps(
    package: str | None, steps: Sequence[StepDef] | None
) -> Sequence[StepDef]:
    """``steps``, or (None) those of the step modules of ``package``."""
    if steps is not None:
        return steps
    return [d for m in step_modules(package or "") for d in declared(m)]
