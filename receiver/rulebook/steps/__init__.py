"""Typed step models: one pydantic model per step ``type``, validated when rules load.

The public surface of the step models; ``base`` holds templating and the model
base, the family modules (``k8s``, ``redis``, ``http``, ``prometheus``,
``changes``) the models, ``verify`` the verify checks, and ``registry`` puts them
together. Executors in ``receiver.steps`` run the rendered models; nothing here
does I/O.
"""

from __future__ import annotations

from receiver.rulebook.steps.base import (
    Duration,
    Rbac,
    StepModel,
    Templated,
    render_model,
    template_fields,
)
from receiver.rulebook.steps.changes import ChangesRecent
from receiver.rulebook.steps.http import HttpGet, HttpRequest
from receiver.rulebook.steps.k8s import (
    K8sDeletePod,
    K8sDescribe,
    K8sEvents,
    K8sLogs,
    K8sPatchHpa,
    K8sPods,
    K8sRolloutHistory,
    K8sRolloutRestart,
    K8sRolloutUndo,
    K8sScale,
    K8sSetMemoryLimit,
)
from receiver.rulebook.steps.prometheus import PrometheusQuery
from receiver.rulebook.steps.quantities import apply_relative, parse_quantity
from receiver.rulebook.steps.redis import (
    RedisDeleteKeys,
    RedisDeletePattern,
    RedisGet,
    RedisInfo,
    RedisResetCircuitBreaker,
)
from receiver.rulebook.steps.registry import (
    REGISTRY,
    STEP_TYPES,
    VERIFY_RBAC,
    VERIFY_TYPES,
    Step,
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
    "REGISTRY",
    "STEP_TYPES",
    "VERIFY_RBAC",
    "VERIFY_TYPES",
    "ChangesRecent",
    "Duration",
    "HttpGet",
    "HttpRequest",
    "HttpVerify",
    "K8sDeletePod",
    "K8sDescribe",
    "K8sEvents",
    "K8sLogs",
    "K8sPatchHpa",
    "K8sPods",
    "K8sRolloutHistory",
    "K8sRolloutRestart",
    "K8sRolloutUndo",
    "K8sScale",
    "K8sSetMemoryLimit",
    "PodsReadyVerify",
    "PrometheusQuery",
    "PrometheusVerify",
    "Rbac",
    "RedisDeleteKeys",
    "RedisDeletePattern",
    "RedisGet",
    "RedisInfo",
    "RedisResetCircuitBreaker",
    "Remediation",
    "RenderError",
    "RolloutStatusVerify",
    "Step",
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
