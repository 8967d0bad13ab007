"""The two shapes a step definition takes, for every family but ``k8s``.

A step module declares its model and, in ``STEPS``, a ``Probe`` (a
diagnostic: ``run``) or a ``Change`` (a remediation: ``prepare`` states the
intent, ``apply`` acts on it, ``recheck`` tells after a crash whether it did).
Each function takes the family's executor first (its clients and shared
helpers: the port the step runs against), then the rendered step. ``Table``
is how an executor finds a step's definition by its model. (``k8s`` steps
take a ``Kube`` instead and say which workload a verify polls:
``receiver.steps.k8s.access``.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from receiver.errors import PermanentStepError
from receiver.model import Alert, Intent, RecheckResult, StepResult
from receiver.rulebook.steps import StepModel

C = TypeVar("C")
C_contra = TypeVar("C_contra", contravariant=True)
S = TypeVar("S", bound=StepModel)


def _own(model: type[S], step: StepModel, what: str) -> S:
    """``step`` as an instance of ``model`` (the definition's own model)."""
    if not isinstance(step, model):
        raise PermanentStepError(
            f"the {model.type_name()} definition cannot {what} {step.type_name()}"
        )
    return step


@dataclass(frozen=True)
class Probe(Generic[C, S]):
    """A diagnostic: its model and the function that runs it."""

    model: type[S]
    run: Callable[[C, S, Alert], Awaitable[StepResult]]

    async def diagnose(self, context: C, step: StepModel, alert: Alert) -> StepResult:
        """Run ``step`` (which must be of this definition's model)."""
        return await self.run(context, _own(self.model, step, "run"), alert)


@dataclass(frozen=True)
class Change(Generic[C, S]):
    """A remediation: its model, and how it states, makes and re-checks a change."""

    model: type[S]
    prepare: Callable[[C, S, Alert], Awaitable[Intent]]
    apply: Callable[[C, S, Alert, Intent], Awaitable[StepResult]]
    recheck: Callable[[C, S, Intent], Awaitable[RecheckResult]]

    async def state(self, context: C, step: StepModel, alert: Alert) -> Intent:
        """``prepare`` for ``step``."""
        return await self.prepare(context, _own(self.model, step, "prepare"), alert)

    async def act(
        self, context: C, step: StepModel, alert: Alert, intent: Intent
    ) -> StepResult:
        """``apply`` for ``step``."""
        own = _own(self.model, step, "apply")
        return await self.apply(context, own, alert, intent)

    async def check(self, context: C, step: StepModel, intent: Intent) -> RecheckResult:
        """``recheck`` for ``step``."""
        return await self.recheck(context, _own(self.model, step, "re-check"), intent)


class RunsProbe(Protocol[C_contra]):
    """A diagnostic definition, whatever its model."""

    async def diagnose(
        self, context: C_contra, step: StepModel, alert: Alert
    ) -> StepResult:
        """Run ``step``."""
        ...


class RunsChange(Protocol[C_contra]):
    """A remediation definition, whatever its model."""

    async def state(self, context: C_contra, step: StepModel, alert: Alert) -> Intent:
        """State the change."""
        ...

    async def act(
        self, context: C_contra, step: StepModel, alert: Alert, intent: Intent
    ) -> StepResult:
        """Make the change stated."""
        ...

    async def check(
        self, context: C_contra, step: StepModel, intent: Intent
    ) -> RecheckResult:
        """Whether an interrupted change shows on the target."""
        ...


class Table(Generic[C]):
    """A family's step definitions by model, and the calls that dispatch to them."""

    def __init__(self, family: str, steps: Iterable[object]) -> None:
        self._family = family
        self._probes: dict[type[StepModel], RunsProbe[C]] = {}
        self._changes: dict[type[StepModel], RunsChange[C]] = {}
        for step in steps:
            if isinstance(step, Probe):
                self._probes[step.model] = step
            elif isinstance(step, Change):
                self._changes[step.model] = step
            else:
                msg = f"{step!r} is neither a Probe nor a Change"
                raise TypeError(msg)

    def change(self, step: StepModel, what: str) -> RunsChange[C]:
        """The remediation definition of ``step``.

        Raises:
            PermanentStepError: ``step`` is no remediation of this family.
        """
        found = self._changes.get(type(step))
        if found is None:
            raise PermanentStepError(
                f"{self._family} executor cannot {what} {step.type_name()}"
            )
        return found

    async def run(self, context: C, step: StepModel, alert: Alert) -> StepResult:
        """Run a diagnostic, or a remediation (``prepare``, then ``apply``)."""
        probe = self._probes.get(type(step))
        if probe is not None:
            return await probe.diagnose(context, step, alert)
        change = self.change(step, "run")
        intent = await change.state(context, step, alert)
        return await change.act(context, step, alert, intent)

    async def prepare(self, context: C, step: StepModel, alert: Alert) -> Intent | None:
        """State what a remediation is about to do (None: not a remediation)."""
        change = self._changes.get(type(step))
        return None if change is None else await change.state(context, step, alert)

    async def apply(
        self, context: C, step: StepModel, alert: Alert, intent: Intent
    ) -> StepResult:
        """Do what ``prepare`` stated."""
        return await self.change(step, "apply").act(context, step, alert, intent)

    async def recheck(
        self, context: C, step: StepModel, intent: Intent
    ) -> RecheckResult:
        """Whether an interrupted ``apply`` of ``intent`` shows on the target."""
        return await self.change(step, "re-check").check(context, step, intent)
