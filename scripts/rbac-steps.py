#!/usr/bin/env python3
"""Print the chart's RBAC values for the playbooks in rule files or directories.

    .venv/bin/python scripts/rbac-steps.py rules/ > rbac-values.yaml
    helm install receiver helm/receiver -f rbac-values.yaml ...
    .venv/bin/python scripts/rbac-steps.py --check rbac-values.yaml rules/   # in CI

The output sets ``rbac.rules``: the exact PolicyRules the playbooks' Kubernetes
steps (and their ``verify:`` checks) need, request by request. Where a step names
a fixed object (``deployment: sark``, ``hpa: sark-hpa``, ``pod: openldap-0``) the
rule carries ``resourceNames``; where the name comes from the alert
(``{labels.deployment}``) the verb is granted without them. Verbs, resources and
workload kinds no playbook uses are not granted. ``list`` is never restricted by
name (the API server only honours ``resourceNames`` on ``list`` with a
``metadata.name`` field selector, which the steps do not send).

It also prints ``rbac.steps``, the step types used, for the chart's summary. Every
request comes from the step's model (``needs`` and ``verify_needs``, in the
step's module under receiver/steps/) and stays within what the model declares
in its ``rbac`` ClassVar; the script fails loudly if it ever would not.

    .venv/bin/python scripts/rbac-steps.py --chart    # after changing a step's rbac

rewrites the chart's per-step-type table (``receiver.stepRbac`` and
``receiver.stepFamilies`` in helm/receiver/templates/_rbac.tpl) from the step
registry; tests/test_helm.py fails while the two differ.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from receiver.errors import RuleError
from receiver.rulebook.loader import load_rulebook
from receiver.rulebook.steps import RbacNeed, StepModel
from receiver.steps.catalog import builtin_registry

REGISTRY = builtin_registry()


@dataclass(frozen=True, order=True)
class Need:
    """One API request a step makes: verb on resource, for one name or any."""

    group: str
    resource: str
    verb: str
    name: str | None  # None: any object (the name comes from the alert, or a list)


class RbacMismatchError(Exception):
    """A computed grant falls outside what the step model declares."""


def _needs(found: list[RbacNeed]) -> list[Need]:
    return [Need(group, resource, verb, name) for group, resource, verb, name in found]


def step_needs(step: StepModel) -> list[Need]:
    """The requests one step makes: what its model's ``needs`` says."""
    return _needs(step.needs())


def verify_needs(step: StepModel) -> list[Need]:
    """The requests a step's Kubernetes ``verify:`` check makes."""
    check = getattr(step, "verify", None)
    return [] if check is None else _needs(step.verify_needs(check))


def declared(
    rbac: Iterable[tuple[str, str, tuple[str, ...]]],
) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) a model's ``rbac`` ClassVar declares."""
    return {(g, r, v) for g, r, verbs in rbac for v in verbs}


def needs_of(step: StepModel) -> list[Need]:
    """A step's and its verification's needs, checked against their models."""
    own = step_needs(step)
    allowed = declared(type(step).rbac)
    check = getattr(step, "verify", None)
    verify = verify_needs(step)
    checked = declared(REGISTRY.verify_rbac().get(getattr(check, "type", ""), ()))
    for need, scope, what in [
        *((n, allowed, step.type_name()) for n in own),
        *((n, checked, f"{step.type_name()} verify") for n in verify),
    ]:
        if (need.group, need.resource, need.verb) not in scope:
            raise RbacMismatchError(
                f"{what} would need {need.verb} {need.resource} "
                f"(apiGroup {need.group!r}), which its model's rbac does not declare"
            )
    return [*own, *verify]


def policy_rules(needs: Iterable[Need]) -> list[dict[str, Any]]:
    """PolicyRules granting exactly ``needs``.

    A verb needed for any object is granted without resourceNames; otherwise it is
    granted for the names needed. Verbs sharing a resource and the same names are
    one rule. Sorted, so the output is stable.
    """
    names: dict[tuple[str, str, str], set[str] | None] = {}
    for need in needs:
        key = (need.group, need.resource, need.verb)
        if need.name is None or names.get(key, set()) is None:
            names[key] = None
        else:
            current = names.setdefault(key, set())
            assert current is not None  # noqa: S101 (narrowed above)
            current.add(need.name)
    grouped: dict[tuple[str, str, tuple[str, ...]], list[str]] = defaultdict(list)
    for (group, resource, verb), restricted in names.items():
        grouped[group, resource, tuple(sorted(restricted or ()))].append(verb)
    rules = []
    for (group, resource, restricted), verbs in sorted(grouped.items()):
        rule: dict[str, Any] = {
            "apiGroups": [group],
            "resources": [resource],
            "verbs": sorted(verbs),
        }
        if restricted:
            rule["resourceNames"] = list(restricted)
        rules.append(rule)
    return rules


def playbook_steps(paths: list[Path]) -> list[StepModel]:
    """Every diagnostic and remediation step of the rule files' playbooks."""
    book = load_rulebook(paths, steps=REGISTRY)
    return [
        step
        for playbook in book.playbooks.values()
        for step in (*playbook.diagnostics, *playbook.remediation)
    ]


def values_for(paths: list[Path]) -> dict[str, Any]:
    """The chart values: ``rbac.steps`` (types used) and ``rbac.rules`` (grants)."""
    steps = playbook_steps(paths)
    used = {step.type_name() for step in steps}
    used |= {
        check.type
        for step in steps
        if (check := getattr(step, "verify", None)) is not None
        and check.type in REGISTRY.verify_rbac()
    }
    needs = [need for step in steps for need in needs_of(step)]
    assert used <= set(REGISTRY.steps) | set(REGISTRY.verify_rbac())  # noqa: S101
    return {"rbac": {"steps": sorted(used), "rules": policy_rules(needs)}}


def render(paths: list[Path]) -> str:
    """The values file text, with a header naming its source."""
    header = (
        "# generated by scripts/rbac-steps.py from "
        + " ".join(map(str, paths))
        + "\n# rbac.rules: exactly the requests these playbooks make "
        "(resourceNames where they name a fixed object)\n"
    )
    return header + yaml.safe_dump(
        values_for(paths), sort_keys=False, default_flow_style=None, width=100
    )


CHART_RBAC = Path(__file__).parent.parent / "helm/receiver/templates/_rbac.tpl"


def chart_defines() -> dict[str, str]:
    """The bodies of the chart's ``stepRbac`` and ``stepFamilies`` defines.

    ``stepRbac``: what each step type (then each verify type) needs from the
    Kubernetes API, ``[apiGroup, resource, [verbs]]``; types that need nothing
    are left out. ``stepFamilies``: every type per family, for ``rbac.steps:
    [k8s]``.
    """
    lines: list[str] = []
    typed = [*REGISTRY.steps.values(), *REGISTRY.verifies.values()]
    for cls in typed:
        if not cls.rbac:
            continue
        lines.append(f"{cls.type_name()}:")
        lines += [
            f'  - ["{group}", {resource}, [{", ".join(verbs)}]]'
            for group, resource, verbs in cls.rbac
        ]
    families: dict[str, list[str]] = {}
    for cls in typed:
        names = families.setdefault(cls.family, [])
        if cls.type_name() not in names:
            names.append(cls.type_name())
    return {
        "receiver.stepRbac": "\n".join(lines),
        "receiver.stepFamilies": "\n".join(
            f"{family}: [{', '.join(names)}]" for family, names in families.items()
        ),
    }


def chart_with_defines(text: str) -> str:
    """``_rbac.tpl``'s text with the generated defines put in."""
    for name, body in chart_defines().items():
        start = f'{{{{- define "{name}" -}}}}\n'
        head, found, rest = text.partition(start)
        if not found:
            raise ValueError(f"no define {name!r} in the chart")
        _old, end, tail = rest.partition("\n{{- end -}}")
        text = head + start + body + end + tail
    return text


def main(argv: list[str]) -> int:
    """Print the values (or, with --check FILE, compare FILE with them)."""
    parser = argparse.ArgumentParser(
        prog="rbac-steps.py",
        description="Print the chart's exact RBAC values for these rule files.",
    )
    parser.add_argument(
        "--check",
        metavar="VALUES",
        type=Path,
        help="exit 1 when this values file's rbac is not what the rules need "
        "(for CI, after changing rules)",
    )
    parser.add_argument(
        "--chart",
        action="store_true",
        help=f"rewrite the per-step-type tables in {CHART_RBAC.name} from the "
        "step registry, and print nothing else",
    )
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("rules")])
    args = parser.parse_args(argv)
    if args.chart:
        CHART_RBAC.write_text(chart_with_defines(CHART_RBAC.read_text()))
        return 0
    try:
        if args.check is None:
            print(render(args.paths), end="")
            return 0
        wanted = values_for(args.paths)["rbac"]
    except RuleError as exc:
        for detail in exc.details:
            print(f"error: {detail}", file=sys.stderr)
        return 1
    have = (yaml.safe_load(args.check.read_text()) or {}).get("rbac", {})
    stale = [key for key in ("steps", "rules") if have.get(key) != wanted[key]]
    if stale:
        print(
            f"{args.check}: rbac.{' and rbac.'.join(stale)} differ from what "
            f"{' '.join(map(str, args.paths))} need; regenerate it with "
            f"scripts/rbac-steps.py {' '.join(map(str, args.paths))}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
