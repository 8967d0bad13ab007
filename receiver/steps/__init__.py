"""Step executors: the only code that touches the systems alerts are about.

Each family (``k8s``, ``redis``, ``http``, ``prometheus``, ``changes``) is a
package of step modules, one per step type (its model and the code that runs
it), and an executor that holds the family's clients and dispatches to them.
``catalog`` finds the step modules and builds the registry rules load against;
``build_executors`` builds one executor per configured family, handed to
``create_app``. The engine never imports these modules.
"""

from __future__ import annotations

from typing import Protocol

import httpx

from receiver.settings import (
    HttpSettings,
    KubeSettings,
    PrometheusSettings,
    RedisSettings,
)
from receiver.steps.catalog import StepCatalog, builtin_catalog
from receiver.steps.http import HttpExecutor
from receiver.steps.k8s import KubernetesExecutor
from receiver.steps.prometheus import PrometheusExecutor
from receiver.steps.redis import RedisExecutor

Built = HttpExecutor | PrometheusExecutor | RedisExecutor | KubernetesExecutor


class StepGroups(Protocol):
    """The settings groups the executors are built from (``Settings`` has them)."""

    @property
    def http(self) -> HttpSettings:
        """``http_allowlist``."""
        ...

    @property
    def prometheus(self) -> PrometheusSettings:
        """The Prometheus servers by name."""
        ...

    @property
    def redis(self) -> RedisSettings:
        """The Redis targets by name, and their timeout."""
        ...

    @property
    def kube(self) -> KubeSettings:
        """How to reach the Kubernetes API (``kube_mode`` off: not at all)."""
        ...


def build_executors(
    groups: StepGroups, catalog: StepCatalog | None = None
) -> dict[str, Built]:
    """One executor per family ``groups`` configure, each given its group.

    Each runs the step types ``catalog`` holds for its family (default: the
    receiver's own, ``builtin_catalog``).
    """
    steps = catalog or builtin_catalog()
    timeout = httpx.Timeout(10.0, connect=3.0)
    executors: dict[str, Built] = {
        "http": HttpExecutor(
            httpx.AsyncClient(timeout=timeout, follow_redirects=False),
            groups.http.allowlist,
            steps.of("http"),
        )
    }
    prometheus = groups.prometheus.servers()
    if prometheus:
        executors["prometheus"] = PrometheusExecutor(
            httpx.AsyncClient(timeout=timeout), prometheus, steps.of("prometheus")
        )
    redis = groups.redis
    if redis.targets:
        executors["redis"] = RedisExecutor(
            {n: u.get_secret_value() for n, u in redis.targets.items()},
            timeout=redis.timeout.total_seconds(),
            steps=steps.of("redis"),
        )
    if groups.kube.mode != "off":
        executors["k8s"] = KubernetesExecutor.from_settings(
            groups.kube, steps=steps.of("k8s")
        )
    return executors
