"""``k8s.*`` steps, one module per family, behind ``KubernetesExecutor``.

``reads`` (diagnostics), ``writes``, ``rollback`` and ``pod_delete``
(remediations), ``verification``; ``access`` holds what they share and
``executor`` the ``KubernetesExecutor`` that dispatches to them.
"""

from __future__ import annotations

from receiver.steps.k8s.executor import KubernetesExecutor, handlers

__all__ = ["KubernetesExecutor", "handlers"]
