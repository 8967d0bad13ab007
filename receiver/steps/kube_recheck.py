"""Whether an interrupted ``k8s.*`` remediation took effect, from what the API shows.

Pure functions ``KubernetesExecutor.recheck`` calls with the live object and the
``Intent`` recorded before the write left. Each answers strictly: "took effect"
only when the target shows exactly the intended state, "did not" only when it
still shows exactly the state the intent was computed from (so running the step
once now is not a second run), and "cannot tell" for anything else (someone
else changed the target since). No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from receiver.errors import QuantityError
from receiver.model import Intent, RecheckResult
from receiver.rulebook.steps import parse_quantity
from receiver.steps.kube_objects import (
    RESTARTED_AT,
    Json,
    revision_of,
    template_digest,
)
from receiver.steps.kube_views import Revision, Workload, parse_object


def recheck_restart(target: str, obj: Json, intent: Intent) -> RecheckResult:
    """The restartedAt annotation equals the stamp the restart was to write."""
    annotations = parse_object(Workload, obj, target).spec.template.metadata.annotations
    live = annotations.get(RESTARTED_AT)
    stamp = intent.data.get("restarted_at")
    if live == stamp:
        return RecheckResult(
            took_effect=True, reason=f"{target} has restartedAt {stamp}"
        )
    if live == intent.data.get("previous"):
        return RecheckResult(
            took_effect=False,
            reason=f"{target} still has restartedAt {live or '(unset)'}, not {stamp}",
        )
    return RecheckResult(
        None,
        f"{target} has restartedAt {live}, neither the intended {stamp} nor the "
        "value before: restarted by someone else since",
    )


def recheck_undo(target: str, obj: Json, intent: Intent) -> RecheckResult:
    """The deployment's template is the intended revision's (or still the old one)."""
    live = template_digest(parse_object(Revision, obj, target).template)
    data = intent.data
    revision = revision_of(obj)
    to_revision, from_revision = data.get("to_revision"), data.get("from_revision")
    if live == data.get("to_template"):
        return RecheckResult(
            took_effect=True,
            reason=f"{target} runs the template of revision {to_revision} "
            f"(now revision {revision})",
        )
    if live == data.get("from_template"):
        return RecheckResult(
            took_effect=False,
            reason=f"{target} still runs the template of revision {from_revision}",
        )
    return RecheckResult(
        None,
        f"{target} runs neither the template of revision {from_revision} nor that "
        f"of revision {to_revision} (now revision {revision}): changed by someone "
        "else since",
    )


def recheck_count(
    what: str, live: int, intent: Intent, *, at_least: bool = False
) -> RecheckResult:
    """A count equals the intended absolute value (or, ``at_least``, exceeds it)."""
    start, wanted = intent.number("from"), intent.number("to")
    if live == wanted or (at_least and live > wanted):
        return RecheckResult(
            took_effect=True, reason=f"{what} is {live} (intended {wanted})"
        )
    if live == start:
        return RecheckResult(
            took_effect=False,
            reason=f"{what} is still {live}, the value it was read at (intended "
            f"{wanted})",
        )
    return RecheckResult(
        None,
        f"{what} is {live}: neither the intended {wanted} nor the {start} it was "
        "read at (changed by something else since)",
    )


def _quantity(value: object) -> Fraction | None:
    if value is None:
        return None
    try:
        return parse_quantity(str(value))
    except QuantityError:
        return None


def recheck_limit(target: str, live: str | None, intent: Intent) -> RecheckResult:
    """A container's limit equals the intended quantity (compared exactly)."""
    wanted, before = intent.data.get("to"), intent.data.get("from")
    container = intent.data.get("container")
    said = f"the memory limit of {container} in {target} is {live or '(unset)'}"
    if live is not None and _quantity(live) == _quantity(wanted):
        return RecheckResult(took_effect=True, reason=f"{said} (intended {wanted})")
    if live == before or (
        live is not None and before is not None and _quantity(live) == _quantity(before)
    ):
        return RecheckResult(
            took_effect=False, reason=f"{said}, as before (intended {wanted})"
        )
    return RecheckResult(
        None, f"{said}: neither the intended {wanted} nor {before or '(unset)'} before"
    )


def recheck_pods(seen: Sequence[tuple[str, str]]) -> RecheckResult:
    """Every pod the delete named is gone, replaced or terminating (or none is)."""
    said = ", ".join(f"{name}: {state}" for name, state in seen)
    kept = [name for name, state in seen if state.startswith("still")]
    if not kept:
        return RecheckResult(took_effect=True, reason=f"pods deleted ({said})")
    if len(kept) == len(seen):
        return RecheckResult(
            took_effect=False, reason=f"no pod of the delete is gone ({said})"
        )
    return RecheckResult(
        None, f"only some pods of the delete are gone ({said}); not re-run in part"
    )
