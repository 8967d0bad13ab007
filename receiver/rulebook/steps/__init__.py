"""What every step model builds on, validated when rules load; no step types.

``base`` holds templating and the model base (``StepModel``, ``Templated``, the
slot-annotated field types), ``quantities`` the count and memory arithmetic,
``verify`` the verify models a remediation's ``verify:`` takes and
``Remediation``, and ``registry`` the ``StepRegistry`` the loader validates
steps against. The step types themselves (model and run, one module each) live
with their executors in ``receiver.steps``; ``receiver.steps.catalog`` builds
the registry from them. Nothing here does I/O.
"""

from __future__ import annotations

from receiver.rulebook.steps.base import (
    Duration,
    Rbac,
    RbacNeed,
    StepModel,
    Templated,
    render_model,
    template_fields,
)
from receiver.rulebook.steps.quantities import apply_relative, parse_quantity
from receiver.rulebook.steps.registry import (
    NO_STEPS,
    StepRegistry,
    build_registry,
)
from receiver.rulebook.steps.verify import (
    HttpVerify,
    PodsReadyVerify,
    PrometheusVerify,
    Remediation,
    RolloutStatusVerify,
    Verify,
)
from receiver.rulebook.templates import RenderError

__all__ = [
    "NO_STEPS",
    "Duration",
    "HttpVerify",
    "PodsReadyVerify",
    "PrometheusVerify",
    "Rbac",
    "RbacNeed",
    "Remediation",
    "RenderError",
    "RolloutStatusVerify",
    "StepModel",
    "StepRegistry",
    "Templated",
    "Verify",
    "apply_relative",
    "build_registry",
    "parse_quantity",
    "render_model",
    "template_fields",
]
