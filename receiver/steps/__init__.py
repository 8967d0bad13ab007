"""Step executors: the only code that touches the systems alerts are about.

Each family (``http``, ``prometheus``, ``k8s``, later ``redis``) has an
executor built from settings with injected clients and handed to ``create_app``;
the engine never imports these modules.
"""

from __future__ import annotations

import httpx

from receiver.settings import Settings
from receiver.steps.http import HttpExecutor
from receiver.steps.kubernetes import KubernetesExecutor
from receiver.steps.prometheus import PrometheusExecutor

Built = HttpExecutor | PrometheusExecutor | KubernetesExecutor


def build_executors(settings: Settings) -> dict[str, Built]:
    """One executor per family that settings configure, each with its own client."""
    timeout = httpx.Timeout(10.0, connect=3.0)
    executors: dict[str, Built] = {
        "http": HttpExecutor(
            httpx.AsyncClient(timeout=timeout, follow_redirects=False),
            settings.http_allowlist,
        )
    }
    if settings.prometheus_url:
        executors["prometheus"] = PrometheusExecutor(
            httpx.AsyncClient(timeout=timeout), {"default": settings.prometheus_url}
        )
    if settings.kube_mode != "off":
        executors["k8s"] = KubernetesExecutor.from_settings(settings)
    return executors
