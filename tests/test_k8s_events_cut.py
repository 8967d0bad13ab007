"""k8s.events against kmock: what a misbehaving API server sends is cut.

An event's reason, type and object name go into the step's reason line and
result; an API server can send them a megabyte long.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest
from kube import Cluster, event, serve

from receiver.model import Alert
from receiver.steps.k8s import KubernetesExecutor
from receiver.steps.k8s.events import K8sEvents
from receiver.steps.kube_client import KubeConnection, new_api_client

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

NS = "production"
ALERT = Alert(
    source="alertmanager",
    fingerprint="0123456789abcdef",
    status="firing",
    labels={"alertname": "SarkApiDown", "namespace": NS, "deployment": "sark"},
)
HUGE = 1024 * 1024


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Cluster, KubernetesExecutor]]:
    """A cluster kmock serves, and an executor that talks to it over HTTP."""
    served = Cluster()
    async with serve(served) as url:

        async def factory() -> Any:
            return await new_api_client(KubeConnection(mode="host", host=url))

        executor = KubernetesExecutor(factory, poll_interval=0.02, backoff=0.001)
        try:
            yield served, executor
        finally:
            await executor.aclose()


async def test_a_megabyte_event_reason_is_cut_in_the_reason_and_result(cluster):
    """A 1 MB reason reaches neither the step's reason line nor its result whole."""
    served, executor = cluster
    reason = "Back" + "Off" * (HUGE // 3)
    served.put(event(NS, "Deployment", "sark", reason, "restarting", age=timedelta(0)))
    result = await executor.run(K8sEvents(namespace=NS, object_name="sark"), ALERT)
    assert result.ok
    assert "newest warning: BackOffOff" in result.reason
    assert len(result.reason) < 1000
    (shown,) = result.result["events"]
    assert shown["reason"].startswith("BackOffOff")
    assert len(shown["reason"]) <= 128


async def test_a_megabyte_event_type_and_object_name_are_cut(cluster):
    """A namespace's events with a 1 MB type and object name stay bounded."""
    served, executor = cluster
    name = "x" * HUGE
    served.put(
        event(NS, "Pod", name, "Killing", "stopping", age=timedelta(0), type_=name)
    )
    result = await executor.run(K8sEvents(namespace=NS), ALERT)
    assert result.ok
    assert len(result.reason) < 1000
    (shown,) = result.result["events"]
    assert len(shown["type"]) <= 32
    assert shown["object"].startswith("Pod/xxx")
    assert len(shown["object"]) <= 300
