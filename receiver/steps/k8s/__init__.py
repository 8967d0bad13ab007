"""``k8s.*`` steps: one module per step type, behind ``KubernetesExecutor``.

Each step module (``pods``, ``events``, ``logs``, ``rollout_history``,
``describe``, ``rollout_restart``, ``rollout_undo``, ``scale``, ``patch_hpa``,
``set_memory_limit``, ``delete_pod``) holds a step's model and the code that
runs it, declared in its ``STEPS``; ``base`` holds the models' shared base,
``access`` what the running code shares (``Kube``, the write loop),
``verification`` the verify checks and ``executor`` the ``KubernetesExecutor``
that dispatches to them.
"""

from __future__ import annotations

from receiver.steps.k8s.executor import KubernetesExecutor, handlers

# The order the step reference, the chart's table and the rule schema list the
# step modules in (diagnostics, then remediations); a module not named here
# comes after them.
ORDER = (
    "pods",
    "events",
    "logs",
    "rollout_history",
    "describe",
    "rollout_restart",
    "rollout_undo",
    "scale",
    "patch_hpa",
    "delete_pod",
    "set_memory_limit",
)

__all__ = ["ORDER", "KubernetesExecutor", "handlers"]
