"""``PrometheusExecutor``: instant PromQL against named servers, and its verify.

The step modules beside this one (``query``) run through ``query``; the
query is rendered from the alert (values escaped for PromQL strings) before it
gets here. A verification polls until every returned series meets the
condition; no data is "not verified", never a pass.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from receiver.errors import ConfigError, PermanentStepError, TransientStepError
from receiver.model import Alert, JSONObject, JSONValue, StepResult
from receiver.retrying import RetryPolicy, poll_until, retrying, transient_status
from receiver.rulebook.steps import PrometheusVerify, StepModel, Templated
from receiver.steps.catalog import StepDef, family_steps
from receiver.steps.defs import Table
from receiver.steps.http.executor import read_answer

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
# The most of a query's answer read: 500 series with their labels take ~100 KB;
# a larger answer is refused unread, never buffered whole.
MAX_ANSWER_BYTES = 8 << 20
_CONDITION = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(-?[0-9.eE+-]+)\s*$")


def parse_condition(text: str) -> tuple[str, float]:
    """``'< 0.2'`` -> ``('<', 0.2)``."""
    found = _CONDITION.match(text)
    if found is None:
        raise PermanentStepError(f"bad condition {text!r}; use e.g. '< 0.2'")
    return found.group(1), float(found.group(2))


def holds(value: float, condition: tuple[str, float]) -> bool:
    """Whether ``value`` meets ``condition`` (NaN never does)."""
    return not math.isnan(value) and _OPS[condition[0]](value, condition[1])


@dataclass(frozen=True)
class Series:
    """One series of an instant query's answer: its labels and its value."""

    labels: Mapping[str, str]
    value: float

    def as_json(self) -> JSONObject:
        """``{"labels": {...}, "value": float}``, as results show it."""
        return {"labels": dict(self.labels), "value": self.value}


def _sample(sample: JSONValue) -> float:
    """The value of a sample ``[time, "value"]``."""
    if isinstance(sample, list) and len(sample) == 2:
        value = sample[1]
        if isinstance(value, str | int | float):
            return float(value)
    raise PermanentStepError(f"malformed sample in the answer: {sample!r:.80}")


def _series(item: JSONValue) -> Series:
    """One series of a vector answer."""
    if not isinstance(item, dict):
        raise PermanentStepError(f"malformed series in the answer: {item!r:.80}")
    metric = item.get("metric") or {}
    labels = (
        {str(k): str(v) for k, v in metric.items()} if isinstance(metric, dict) else {}
    )
    return Series(labels, _sample(item.get("value")))


class PrometheusExecutor:
    """Runs PromQL through an injected ``httpx.AsyncClient`` against named servers."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        targets: dict[str, str],
        steps: Sequence[StepDef] | None = None,
    ) -> None:
        self._client = client
        self._targets = {k: v.rstrip("/") for k, v in targets.items()}
        for name, url in self._targets.items():
            try:
                httpx.URL(url)
            except (httpx.InvalidURL, ValueError):
                # Not chained: httpx's message quotes a piece of the URL
                # (``Invalid port: 'pass'``), often its password.
                raise ConfigError(
                    f"Prometheus {name!r}: its URL cannot be parsed (not shown: it "
                    "may hold a password; percent-encode a '/', '?', '#' or '@' "
                    "in the password)"
                ) from None
        self._table: Table[PrometheusExecutor] = Table(
            "prometheus", family_steps(__package__, steps)
        )

    async def query(self, target: str, promql: str) -> list[Series]:
        """Run an instant query: each series with its labels and value."""
        base = self._targets.get(target)
        if base is None:
            raise PermanentStepError(
                f"no Prometheus named {target!r} (configured: "
                f"{', '.join(sorted(self._targets)) or 'none'}; set prometheus_url)"
            )
        async for attempt in retrying(RetryPolicy()):
            with attempt:
                data = await self._get(f"{base}/api/v1/query", promql)
        result_type = data.get("resultType")
        result = data.get("result")
        if result_type == "scalar" and isinstance(result, list):
            return [Series({}, _sample(result))]
        if result_type == "vector" and isinstance(result, list):
            return [_series(item) for item in result]
        raise PermanentStepError(f"unsupported result type {result_type!r}")

    async def _get(self, url: str, promql: str) -> Mapping[str, JSONValue]:
        try:
            async with self._client.stream(
                "GET", url, params={"query": promql}
            ) as response:
                if transient_status(response.status_code):
                    raise TransientStepError(
                        f"Prometheus answered HTTP {response.status_code}"
                    )
                answer = await read_answer(response, MAX_ANSWER_BYTES)
        except httpx.TransportError as exc:
            raise TransientStepError(f"Prometheus unreachable: {exc}") from exc
        if not answer.complete:
            raise PermanentStepError(
                f"Prometheus answered with more than {MAX_ANSWER_BYTES >> 20} MiB; "
                "not read further (narrow the query, e.g. with topk or sum by)"
            )
        try:
            body: JSONValue = json.loads(answer.body)
        except (ValueError, RecursionError) as exc:
            raise PermanentStepError("Prometheus answered with non-JSON") from exc
        if not isinstance(body, dict):
            raise PermanentStepError("Prometheus answered with a JSON non-object")
        if body.get("status") != "success":
            raise PermanentStepError(
                f"query rejected: {body.get('errorType', '?')}: {body.get('error', '')}"
            )
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise PermanentStepError("Prometheus answered with a data non-object")
        return data

    async def run(self, step: StepModel, alert: Alert) -> StepResult:
        """Run a ``prometheus.*`` diagnostic through its step module."""
        return await self._table.run(self, step, alert)

    async def verify(
        self, check: Templated, step: StepModel, alert: Alert
    ) -> StepResult:
        """Poll until every series meets the condition, or time out."""
        del step, alert
        if not isinstance(check, PrometheusVerify):
            raise PermanentStepError(
                f"prometheus executor cannot verify {check.type_name()}"
            )
        cond = parse_condition(check.condition)

        async def probe() -> tuple[bool, str]:
            series = await self.query(check.target, check.query)
            last = ", ".join(f"{s.value:.6g}" for s in series[:5]) or "no data"
            return bool(series) and all(holds(s.value, cond) for s in series), last

        polled = await poll_until(
            probe, check.timeout, check.interval.total_seconds(), transient=str
        )
        if polled.done:
            return StepResult(
                ok=True,
                reason=f"verified: {check.query} = {polled.last} "
                f"({check.condition.strip()})",
            )
        return StepResult(
            ok=False,
            reason=f"not verified within {check.timeout.total_seconds():g}s: "
            f"{check.query} = {polled.last} (wanted {check.condition.strip()})",
        )

    async def aclose(self) -> None:
        """Close the client."""
        await self._client.aclose()


_LABELS_CHARS = 200  # of a series' labels in a reason (the result keeps them)


def fmt_labels(labels: Mapping[str, str]) -> str:
    """``{a="b"} `` for a series' labels (without ``__name__``); "" for none.

    Cut to a line's length: the labels are what the server answered.
    """
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    if not shown:
        return ""
    text = ",".join(f'{k}="{v}"' for k, v in sorted(shown.items()))
    if len(text) > _LABELS_CHARS:
        text = text[: _LABELS_CHARS - 1] + "…"
    return "{" + text + "} "
