"""``KubernetesExecutor``: runs ``k8s.*`` steps and verifications, via the API.

Built by ``build_executors`` when ``kube_mode`` is not ``off``; the runner calls
``run`` and ``verify`` (and, for remediations, ``prepare``, ``apply`` and
``recheck``) with rendered step models (the planner has already applied the
namespace allowlist). Every request goes through kubernetes-asyncio's typed API
methods on one ``ApiClient`` per application, built lazily inside the event loop
from an explicit ``Configuration`` (never the library's global default) and
closed by ``aclose``. Responses are read as raw JSON, not the client's models, so
a pod template copied back by a rollback keeps every field the server sent.

Errors: 404/403/422 (and every other 4xx) are permanent; 429, 5xx, timeouts and
connection errors are transient and reads are retried with bounded, jittered
backoff. Writes are never retried blindly (see ``access.Kube.write_loop``).

Which function runs which step is the table ``handlers()`` assembles from the
step definitions it is given (``build_executors`` passes the catalog's ``k8s``
ones; by default, those of the step modules of this package); the
verifications are ``verification``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from receiver.errors import PermanentStepError
from receiver.model import Alert, Intent, RecheckResult, StepResult
from receiver.rulebook.steps import (
    PodsReadyVerify,
    RolloutStatusVerify,
    StepModel,
    Templated,
)
from receiver.settings import KubeSettings
from receiver.steps.catalog import StepDef, family_steps
from receiver.steps.k8s.access import (
    Action,
    Diagnostic,
    Kube,
    RunsAction,
    RunsDiagnostic,
)
from receiver.steps.k8s.verification import verify_pods_ready, verify_rollout
from receiver.steps.kube_client import (
    ClientFactory,
    KubeApi,
    KubeConnection,
    new_api_client,
)


@dataclass(frozen=True)
class Handlers:
    """Which function runs each ``k8s.*`` step type, by model class."""

    diagnostics: Mapping[type[StepModel], RunsDiagnostic]
    actions: Mapping[type[StepModel], RunsAction]

    @property
    def models(self) -> frozenset[type[StepModel]]:
        """Every step model some handler runs."""
        return frozenset(self.diagnostics) | frozenset(self.actions)


def handlers(steps: Sequence[StepDef] | None = None) -> Handlers:
    """The ``k8s.*`` handlers of ``steps`` (default: this package's step modules).

    Raises:
        TypeError: a definition is neither a ``Diagnostic`` nor an ``Action``.
    """
    diagnostics: dict[type[StepModel], RunsDiagnostic] = {}
    actions: dict[type[StepModel], RunsAction] = {}
    for step in family_steps(__package__, steps):
        if isinstance(step, Diagnostic):
            diagnostics[step.model] = step
        elif isinstance(step, Action):
            actions[step.model] = step
        else:
            msg = f"{step!r} is neither a k8s Diagnostic nor an Action"
            raise TypeError(msg)
    return Handlers(diagnostics=diagnostics, actions=actions)


class KubernetesExecutor:
    """Runs ``k8s.*`` steps and verifications through one lazily built ApiClient."""

    def __init__(
        self,
        client_factory: ClientFactory,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        allowed_kinds: Iterable[str] | None = None,
        request_timeout: float = 10.0,
        poll_interval: float = 2.0,
        attempts: int = 3,
        backoff: float = 0.2,
        steps: Sequence[StepDef] | None = None,
    ) -> None:
        api = KubeApi(
            client_factory,
            request_timeout=request_timeout,
            attempts=attempts,
            backoff=backoff,
        )
        self._kube = Kube(
            api=api,
            clock=clock,
            kinds=Kube.allowed(allowed_kinds),
            poll_interval=poll_interval,
        )
        self._handlers = handlers(steps)

    @classmethod
    def from_settings(
        cls,
        kube: KubeSettings,
        clock: Callable[[], datetime] | None = None,
        steps: Sequence[StepDef] | None = None,
    ) -> KubernetesExecutor:
        """The executor the ``kube`` settings describe (client built on first use).

        Raises:
            ConfigError: the Kubernetes settings are incomplete.
        """
        conn = KubeConnection.from_settings(kube)

        return cls(
            functools.partial(new_api_client, conn),
            clock=clock or (lambda: datetime.now(UTC)),
            allowed_kinds=kube.allowed_kinds,
            request_timeout=kube.request_timeout.total_seconds(),
            poll_interval=kube.poll_interval.total_seconds(),
            steps=steps,
        )

    async def aclose(self) -> None:
        """Close the ApiClient (and its connection pool) if it was built."""
        await self._kube.api.aclose()

    def _action(self, step: StepModel, what: str) -> RunsAction:
        found = self._handlers.actions.get(type(step))
        if found is None:
            raise PermanentStepError(f"k8s executor cannot {what} {step.type_name()}")
        return found

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run one ``k8s.*`` step (a remediation: ``prepare``, then ``apply``)."""
        diagnostic = self._handlers.diagnostics.get(type(step))
        if diagnostic is not None:
            return await diagnostic.diagnose(self._kube, step)
        prepared = await self._action(step, "run").state(self._kube, step)
        if isinstance(prepared, StepResult):
            return prepared
        return await self.apply(step, alert, prepared)

    async def prepare(
        self, step: StepModel, alert: Alert
    ) -> Intent | StepResult | None:
        """Read the target of a remediation and state it in absolute terms.

        A ``StepResult`` means there is nothing to do (a rollback not needed);
        None: not a remediation this executor prepares.
        """
        del alert
        action = self._handlers.actions.get(type(step))
        return None if action is None else await action.state(self._kube, step)

    async def apply(self, step: StepModel, alert: Alert, intent: Intent) -> StepResult:
        """Do exactly what ``prepare`` said (every write still fenced)."""
        del alert
        return await self._action(step, "apply").act(self._kube, step, intent)

    async def recheck(
        self, step: StepModel, alert: Alert, intent: Intent
    ) -> RecheckResult:
        """Whether an interrupted ``apply`` of ``intent`` shows on the target now."""
        del alert
        return await self._action(step, "re-check").check(self._kube, step, intent)

    async def verify(
        self, check: Templated, step: StepModel, alert: Alert
    ) -> StepResult:
        """Poll ``k8s.rollout_status`` or ``k8s.pods_ready`` until it holds."""
        del alert
        action = self._action(step, "verify")
        if isinstance(check, RolloutStatusVerify):
            return await verify_rollout(self._kube, check, action, step)
        if isinstance(check, PodsReadyVerify):
            return await verify_pods_ready(self._kube, check, action, step)
        raise PermanentStepError(f"k8s executor cannot verify {check.type_name()}")
