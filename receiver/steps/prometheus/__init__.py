"""``prometheus.*`` steps: one module per step type, behind ``PrometheusExecutor``.

``query`` holds ``prometheus.query`` (model and run); ``executor`` the
executor that holds the HTTP client and the server names, and polls the
``prometheus.query`` verify.
"""

from __future__ import annotations

from receiver.steps.prometheus.executor import PrometheusExecutor

__all__ = ["PrometheusExecutor"]
