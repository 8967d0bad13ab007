"""Step executors: the only code that touches the systems alerts are about.

Each family (``http``, ``prometheus``, ``redis``, ``k8s``) has an
executor built from settings with injected clients and handed to ``create_app``;
the engine never imports these modules.
"""

from __future__ import annotations

import httpx

from receiver.settings import Settings
from receiver.steps.http import HttpExecutor
from receiver.steps.k8s import KubernetesExecutor
from receiver.steps.prometheus import PrometheusExecutor
from receiver.steps.redis import RedisExecutor

Built = HttpExecutor | PrometheusExecutor | RedisExecutor | KubernetesExecutor


def build_executors(settings: Settings) -> dict[str, Built]:
    """One executor per family that settings configure, each given its group."""
    timeout = httpx.Timeout(10.0, connect=3.0)
    executors: dict[str, Built] = {
        "http": HttpExecutor(
            httpx.AsyncClient(timeout=timeout, follow_redirects=False),
            settings.http.allowlist,
        )
    }
    prometheus = settings.prometheus.servers()
    if prometheus:
        executors["prometheus"] = PrometheusExecutor(
            httpx.AsyncClient(timeout=timeout), prometheus
        )
    redis = settings.redis
    if redis.targets:
        executors["redis"] = RedisExecutor(
            {n: u.get_secret_value() for n, u in redis.targets.items()},
            timeout=redis.timeout.total_seconds(),
        )
    if settings.kube.mode != "off":
        executors["k8s"] = KubernetesExecutor.from_settings(settings.kube)
    return executors
