"""Render a decision trace for the person on call: a note, a Slack message, details.

Pure functions over ``AlertTrace`` (no I/O), called by the sinks in this package.
What a responder wants at 3 a.m., in this order: severity and the runbook's
response targets, what matched, what the receiver found (query values, keys, log
lines, pod states), what it did or would do, whether that was verified, and links.

Every note starts with ``OWN_NOTE_MARKER`` so the ``incident.annotated`` webhook our
own note triggers can be recognised (``is_own_note``) and never answered.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from receiver.model import AlertTrace, Decision, MatchTrace, StepKind, StepTrace, iso

if TYPE_CHECKING:
    from receiver.model import JSONObject

OWN_NOTE_MARKER = "[alert-receiver]"
MAX_DETAIL_LINES = 6
MAX_LINE_CHARS = 200
SLACK_SECTION_CHARS = 2900  # Slack refuses section text over 3000 characters
EVENT_SUMMARY_CHARS = 1024  # Events API v2 payload.summary limit

_MARK = {
    Decision.EXECUTED: "+",
    Decision.DRY_RUN: "~",
    Decision.FAILED: "!",
    Decision.SKIPPED: "-",
    Decision.AWAITING_APPROVAL: "?",
}
_EVENT_SEVERITY = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}


def is_own_note(text: str) -> bool:
    """Whether a PagerDuty note's content is one this receiver posted."""
    return text.lstrip().startswith(OWN_NOTE_MARKER)


def _cut(text: str, limit: int = MAX_LINE_CHARS) -> str:
    text = " ".join(str(text).split()) if "\n" in str(text) else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _labels(labels: object) -> str:
    if not isinstance(labels, Mapping):
        return ""
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(shown.items())) + "}"


def _listed(value: object) -> list[object] | tuple[object, ...]:
    """A result's list (the empty list for anything else)."""
    return value if isinstance(value, list | tuple) else []


def _series_lines(result: Mapping[str, object]) -> list[str]:
    series = result.get("series")
    if not isinstance(series, list):
        return []
    out = [
        f"{_labels(s.get('labels')) or '(no labels)'} = {_num(s.get('value'))}"
        for s in series[:MAX_DETAIL_LINES]
        if isinstance(s, Mapping)
    ]
    total = result.get("total_series", len(series))
    if isinstance(total, int) and total > len(out):
        out.append(f"... {total - len(out)} more series")
    if not series:
        out.append("no data")
    return out


def _key_lines(result: Mapping[str, object]) -> list[str]:
    keys = result.get("keys")
    if not isinstance(keys, Mapping):
        return []
    out = []
    for key, entry in list(keys.items())[:MAX_DETAIL_LINES]:
        if not isinstance(entry, Mapping):
            continue
        kind = entry.get("type")
        if kind == "none":
            out.append(f"{key}: (missing)")
        elif "value" in entry:
            ttl = entry.get("ttl_ms")
            suffix = f" (ttl {ttl / 1000:g}s)" if isinstance(ttl, int) else ""
            out.append(f"{key} = {_cut(repr(entry['value']), 120)}{suffix}")
        else:
            out.append(f"{key}: {kind}")
    return out


def _log_lines(result: Mapping[str, object]) -> list[str]:
    """The last few log lines: ``lines``, or each pod's ``lines`` (k8s.logs)."""
    lines: list[str] = []
    raw = result.get("lines")
    if isinstance(raw, list):
        lines = [str(x) for x in raw]
    pods = result.get("pods")
    if isinstance(pods, list):
        per_pod = max(MAX_DETAIL_LINES // max(len(pods), 1), 2)
        for entry in pods:
            if not isinstance(entry, Mapping) or "pod" not in entry:
                continue
            pod_lines = entry.get("lines")
            if isinstance(pod_lines, list):
                lines += [f"{entry['pod']}: {x}" for x in pod_lines[-per_pod:]]
    return [f"| {_cut(x)}" for x in lines[-MAX_DETAIL_LINES:] if str(x).strip()]


def _pod_lines(result: Mapping[str, object]) -> list[str]:
    """Pod states (k8s.pods summaries): the unready and restarting ones first."""
    pods = [
        p for p in _listed(result.get("pods")) if isinstance(p, Mapping) and "name" in p
    ]
    pods.sort(key=lambda p: (bool(p.get("is_ready", True)), -int(p.get("restarts", 0))))
    out = []
    for pod in pods[:MAX_DETAIL_LINES]:
        bits = [str(pod["name"])]
        bits += [
            f"{key}={_cut(str(pod[key]), 60)}"
            for key in ("phase", "ready", "restarts", "waiting", "reason")
            if pod.get(key) not in (None, "")
        ]
        last = pod.get("last_termination")
        if isinstance(last, Mapping):
            bits.append(
                f"last exit {last.get('reason', '?')} (code {last.get('exit_code')})"
            )
        out.append(" ".join(bits))
    if len(pods) > MAX_DETAIL_LINES:
        out.append(f"... {len(pods) - MAX_DETAIL_LINES} more pods")
    return out


def _event_lines(result: Mapping[str, object]) -> list[str]:
    """Warnings first, then other events (k8s.events)."""
    events = [e for e in _listed(result.get("events")) if isinstance(e, Mapping)]
    events.sort(key=lambda e: e.get("type") != "Warning")
    return [
        _cut(
            f"{e.get('type', '')} {e.get('reason', '')} {e.get('object', '')}: "
            f"{e.get('message', '')} (x{e.get('count', 1)}, {e.get('age') or '?'} ago)"
        )
        for e in events[: MAX_DETAIL_LINES // 2]
    ]


def _said(line: str, reason: str) -> bool:
    """Whether ``reason`` already says what ``line`` does (``a = b`` or ``a b``)."""
    return line in reason or line.replace(" = ", " ") in reason


def step_details(step: StepTrace, *, new_only: bool = False) -> list[str]:
    """Lines that summarise what a step saw; ``new_only`` drops what the reason says."""
    result = step.result
    if not result:
        return []
    lines = [
        *_series_lines(result),
        *_key_lines(result),
        *_pod_lines(result),
        *_event_lines(result),
        *_log_lines(result),
    ]
    rate = result.get("hit_rate")
    if isinstance(rate, float) and "hit rate" not in step.reason:
        lines.append(f"cache hit rate {rate:.1%} (runbook threshold < 70%)")
    if new_only:
        lines = [line for line in lines if not _said(line, step.reason)]
    return lines[: MAX_DETAIL_LINES * 2]


def verification(step: StepTrace) -> str:
    """The verification outcome of a remediation, or ``""``."""
    check = step.result.get("verification")
    if not isinstance(check, Mapping):
        return ""
    reason = str(check.get("reason", ""))
    for prefix in ("verified: ", "not verified: "):
        reason = reason.removeprefix(prefix)
    return ("verified: " if check.get("ok") else "NOT verified: ") + _cut(reason, 300)


def _action(step: StepTrace) -> str:
    """The step's reason without the verification the runner appended to it."""
    check = step.result.get("verification")
    reason = step.reason
    if isinstance(check, Mapping):
        reason = reason.removesuffix(f"; {check.get('reason', '')}")
    return reason


def _label(step: StepTrace) -> str:
    return f"{step.name} ({step.type})" if step.name else step.type


def outcome(trace: AlertTrace) -> str:
    """What happened to the remediations, in a few words."""
    steps = [
        s for m in trace.matches for s in m.steps if s.kind is StepKind.REMEDIATION
    ]
    if not trace.matches:
        return "no rule matched"
    if not steps:
        return "diagnostics only"
    counts: dict[Decision, int] = {}
    for step in steps:
        counts[step.decision] = counts.get(step.decision, 0) + 1
    words = {
        Decision.EXECUTED: "done",
        Decision.FAILED: "FAILED",
        Decision.AWAITING_APPROVAL: "awaiting approval",
        Decision.DRY_RUN: "would run (dry-run)",
        Decision.SKIPPED: "skipped",
    }
    checks = [s.result.get("verification") for s in steps]
    verified = [c for c in checks if isinstance(c, Mapping)]
    if verified:
        ok = sum(1 for c in verified if c.get("ok"))
        words[Decision.EXECUTED] = "done, verified" if ok == len(verified) else "done"
    return ", ".join(
        f"{counts[d]} {words[d]}"
        for d in (
            Decision.FAILED,
            Decision.EXECUTED,
            Decision.AWAITING_APPROVAL,
            Decision.DRY_RUN,
            Decision.SKIPPED,
        )
        if d in counts
    )


def alertname(trace: AlertTrace) -> str:
    """The alert's name, or what stands for it."""
    return trace.alert.labels.get("alertname") or trace.alert.fingerprint


def _worst(trace: AlertTrace) -> MatchTrace | None:
    if not trace.matches:
        return None
    return min(trace.matches, key=lambda m: m.severity.value)


def headline(trace: AlertTrace) -> str:
    """``P1 High (SEV-2) | SarkSiemForwardingDown | firing | 1 done``."""
    match = _worst(trace)
    severity = f"{match.severity} {match.severity.info.name}" if match else "unmatched"
    return f"{severity} | {alertname(trace)} | {trace.alert.status} | {outcome(trace)}"


def targets_line(match: MatchTrace) -> str:
    """The runbook's response targets for the match's severity."""
    info = match.severity.info
    return (
        f"{match.severity} {info.name}: {info.definition}. Acknowledge within "
        f"{info.acknowledge_within}, mitigate within {info.mitigate_within}, "
        f"resolve within {info.resolve_within}; updates every {info.update_every}; "
        f"{info.escalation(match.escalate_to)}."
    )


def links(trace: AlertTrace) -> list[tuple[str, str]]:
    """(text, url) pairs: the alert's source, the incident, runbooks."""
    alert = trace.alert
    found: list[tuple[str, str]] = []
    if alert.generator_url:
        text = "incident" if alert.source == "pagerduty" else "alert source"
        found.append((text, alert.generator_url))
    incident = alert.refs.get("incident_url", "")
    if incident and incident != alert.generator_url:
        found.append(("incident", alert.refs["incident_url"]))
    if alert.refs.get("alertmanager_url"):
        found.append(("alertmanager", alert.refs["alertmanager_url"]))
    for match in trace.matches:
        if match.runbook_url and ("runbook", match.runbook_url) not in found:
            found.append(("runbook", match.runbook_url))
    return found


def _alert_line(trace: AlertTrace) -> str:
    alert = trace.alert
    shown = " ".join(
        f"{k}={_cut(v, 80)}"
        for k, v in sorted(alert.labels.items())
        if k != "alertname"
    )
    since = f", since {iso(alert.starts_at)}" if alert.starts_at else ""
    return _cut(f"{alertname(trace)} [{alert.status}] {shown}{since}", 600)


def _steps(steps: Iterable[StepTrace], *, details: bool) -> list[str]:
    out = []
    for step in steps:
        out.append(
            f"{_MARK[step.decision]} {_label(step)}: {step.decision.value}: "
            f"{_cut(_action(step), 400)}"
        )
        if details:
            out += [f"    {line}" for line in step_details(step, new_only=True)]
        check = verification(step)
        if check:
            out.append(f"    => {check}")
    return out


def _match_section(trace: AlertTrace, match: MatchTrace) -> list[str]:
    diagnostics = [s for s in match.steps if s.kind is StepKind.DIAGNOSTIC]
    remediations = [s for s in match.steps if s.kind is StepKind.REMEDIATION]
    how = next((n for n in match.notes if n.startswith("severity: ")), "")
    lines = [
        f"Matched rule {match.rule} -> playbook {match.playbook}"
        + (f" ({how})" if how else ""),
        targets_line(match),
    ]
    if match.description:
        lines.append(_cut(match.description, 500))
    lines += [_cut(n, 300) for n in match.notes if n != how]
    if diagnostics:
        lines += ["", "What we found:", *_steps(diagnostics, details=True)]
    if remediations:
        dry = trace.mode != "execute" or all(
            s.decision is Decision.DRY_RUN for s in remediations
        )
        title = f"What would be done ({_mode(trace)}):" if dry else "What was done:"
        lines += ["", title, *_steps(remediations, details=True)]
    return lines


def _mode(trace: AlertTrace) -> str:
    """How a described-only remediation came about, for the section title."""
    return "diagnose mode" if trace.mode == "diagnose" else "dry-run"


def render_note(trace: AlertTrace, max_chars: int) -> str:
    """A PagerDuty note: plain text, marked as ours, at most ``max_chars``."""
    lines = [
        f"{OWN_NOTE_MARKER} {headline(trace)}",
        _alert_line(trace),
    ]
    for match in trace.matches:
        lines += ["", *_match_section(trace, match)]
    for note in trace.notes:
        lines.append(f"note: {_cut(note, 300)}")
    found = links(trace)
    if found:
        lines += ["", "Links:", *(f"- {text}: {url}" for text, url in found)]
    lines += [
        "",
        (
            f"mode {trace.mode}, decided {iso(trace.decided_at)}, payload "
            f"{trace.payload_id or '-'}, fingerprint {trace.alert.fingerprint}"
        ),
    ]
    return cap("\n".join(lines), max_chars, trace.payload_id)


def cap(text: str, max_chars: int, payload_id: str = "") -> str:
    """Cut ``text`` to ``max_chars``, saying where the full trace is."""
    if len(text) <= max_chars:
        return text
    tail = (
        "\n... (truncated; full trace: GET /api/v1/decisions?payload_id="
        f"{payload_id or '<id>'})"
    )
    return text[: max(max_chars - len(tail), 0)] + tail


# ------------------------------------------------------------------ Slack


def _mrkdwn(text: str) -> JSONObject:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def slack_escape(text: str) -> str:
    """``text`` with Slack's control characters escaped (no mention, no link)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(trace: AlertTrace) -> JSONObject:
    """An incoming-webhook message: text fallback plus Block Kit sections."""
    head = headline(trace)
    blocks: list[JSONObject] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(head, 150)},
        },
        _mrkdwn(slack_escape(_alert_line(trace))),
    ]
    for match in trace.matches:
        diagnostics = [s for s in match.steps if s.kind is StepKind.DIAGNOSTIC]
        remediations = [s for s in match.steps if s.kind is StepKind.REMEDIATION]
        blocks.append(
            _mrkdwn(
                slack_escape(
                    f"*rule {match.rule} -> playbook {match.playbook}*\n"
                    + targets_line(match)
                )
            )
        )
        if diagnostics:
            text = "*What we found*\n" + "\n".join(_steps(diagnostics, details=True))
            blocks.append(_mrkdwn(_cut_block(slack_escape(text))))
        if remediations:
            dry = trace.mode != "execute" or all(
                s.decision is Decision.DRY_RUN for s in remediations
            )
            title = (
                f"*What would be done ({_mode(trace)})*" if dry else "*What was done*"
            )
            text = title + "\n" + "\n".join(_steps(remediations, details=False))
            blocks.append(_mrkdwn(_cut_block(slack_escape(text))))
    found = links(trace)
    if found:
        blocks.append(
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": _slack_links(found)}],
            }
        )
    actions = approval_actions(trace)
    # The fallback is mrkdwn as well (and what notifications show).
    text = slack_escape(_cut(head, 3000))
    return {"text": text, "blocks": blocks[: 50 - len(actions)] + actions}


_LINKABLE = re.compile(r"https?://", re.IGNORECASE)


def _slack_link(text: str, url: str) -> str:
    """``<url|text>`` for an http(s) URL; any other value as escaped plain text.

    In Slack's syntax ``<!channel|...>``, ``<@U123|...>`` and ``<#C1|...>`` are
    mentions, and a ``|`` or ``>`` in the URL ends the link early: an alert's
    URL is linked only when it is one, with those characters encoded.
    """
    if not _LINKABLE.match(url):
        return slack_escape(f"{text}: {_cut(url, 200)}")
    safe = "".join(
        "&amp;"
        if c == "&"
        else quote(c, safe="")
        if c in "|<>" or c.isspace() or not c.isprintable()
        else c
        for c in url
    )
    return f"<{safe}|{slack_escape(text)}>"


def _slack_links(found: Sequence[tuple[str, str]]) -> str:
    """The links line, within a mrkdwn text's limit (links too long are left out)."""
    shown: list[str] = []
    left_out = 0
    for text, url in found:
        link = _slack_link(text, url)
        if len(" | ".join([*shown, link])) > SLACK_SECTION_CHARS - 60:
            left_out += 1
            continue
        shown.append(link)
    if left_out:
        shown.append(f"({left_out} more: too long to show; see the decision record)")
    return " | ".join(shown)


_AWAITING = re.compile(r"^awaiting approval ([A-Za-z0-9_.:-]+):")


def approval_id(step: StepTrace) -> str:
    """The id of the approval a step awaits, or ``""``."""
    if step.decision is not Decision.AWAITING_APPROVAL:
        return ""
    found = _AWAITING.match(step.reason)
    return found.group(1) if found else ""


def approval_actions(trace: AlertTrace) -> list[JSONObject]:
    """Approve / Reject buttons for each step awaiting approval (Block Kit)."""
    blocks: list[JSONObject] = []
    for match in trace.matches:
        for step in match.steps:
            wanted = approval_id(step)
            if not wanted:
                continue
            label = _cut(f"{_label(step)} on {step.target}", 70)
            blocks.append(
                {
                    "type": "actions",
                    "block_id": f"approval:{wanted}",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": "approve",
                            "style": "primary",
                            "text": {"type": "plain_text", "text": "Approve"},
                            "value": wanted,
                        },
                        {
                            "type": "button",
                            "action_id": "reject",
                            "style": "danger",
                            "text": {"type": "plain_text", "text": "Reject"},
                            "value": wanted,
                        },
                    ],
                }
            )
            blocks.append(
                {
                    "type": "context",
                    "elements": [
                        {
                            "type": "mrkdwn",
                            "text": slack_escape(f"approval {wanted}: {label}"),
                        }
                    ],
                }
            )
    return blocks


def _cut_block(text: str) -> str:
    if len(text) <= SLACK_SECTION_CHARS:
        return text
    return text[: SLACK_SECTION_CHARS - 20] + "\n... (truncated)"


# ------------------------------------------------------------------ Events v2


def event_severity(trace: AlertTrace) -> str:
    """Events API v2 severity for the worst matched severity."""
    match = _worst(trace)
    return _EVENT_SEVERITY[match.severity.value] if match else "warning"


def event_summary(trace: AlertTrace) -> str:
    """``payload.summary`` (at most 1024 characters)."""
    return _cut(f"{OWN_NOTE_MARKER} {headline(trace)}", EVENT_SUMMARY_CHARS)


def alertmanager_dedup_key(group_key: str) -> str:
    """The dedup_key Alertmanager's pagerduty_configs send for a group key."""
    return hashlib.sha256(group_key.encode()).hexdigest()


def _step_json(step: StepTrace) -> JSONObject:
    out: JSONObject = {
        "step": _label(step),
        "target": step.target,
        "decision": step.decision.value,
        "reason": _cut(step.reason, 500),
    }
    details = step_details(step)
    if details:
        out["details"] = details
    check = verification(step)
    if check:
        out["verification"] = check
    return out


def custom_details(trace: AlertTrace, max_chars: int = 16_000) -> JSONObject:
    """Diagnostics and actions as Events v2 ``custom_details``, capped in size."""
    matches: list[JSONObject] = [
        {
            "rule": m.rule,
            "playbook": m.playbook,
            "severity": f"{m.severity} {m.severity.info.name}",
            "response_targets": targets_line(m),
            "found": [_step_json(s) for s in m.steps if s.kind is StepKind.DIAGNOSTIC],
            "done": [_step_json(s) for s in m.steps if s.kind is StepKind.REMEDIATION],
            "runbook": m.runbook_url,
        }
        for m in trace.matches
    ]
    details: JSONObject = {
        "summary": headline(trace),
        "mode": trace.mode,
        "fingerprint": trace.alert.fingerprint,
        "payload_id": trace.payload_id,
        "decided_at": iso(trace.decided_at),
        "labels": dict(trace.alert.labels),
        "matches": matches,
    }
    # Drop the least useful parts first: diagnostics of later matches, then
    # details, until the JSON fits.
    while len(json.dumps(details)) > max_chars:
        if not _shrink(matches):
            details["matches"] = [
                {
                    "rule": m["rule"],
                    "playbook": m["playbook"],
                    "severity": m["severity"],
                }
                for m in matches
            ]
            details["truncated"] = True
            _fit_alert(details, max_chars)
            break
        details["truncated"] = True
    return details


def _fit_alert(details: JSONObject, max_chars: int) -> None:
    """Cut the alert's own values (summary, labels), then matches, to the cap."""

    def fits() -> bool:
        return len(json.dumps(details)) <= max_chars

    if fits():
        return
    details["summary"] = _cut(str(details["summary"]), EVENT_SUMMARY_CHARS)
    labels = details["labels"]
    if isinstance(labels, dict):
        for limit in (1024, 256, 64):
            if fits():
                return
            details["labels"] = {
                _cut(k, limit): _cut(str(v), limit) for k, v in labels.items()
            }
        if not fits():
            details["labels"] = {"(truncated)": f"{len(labels)} labels"}
    matches = details["matches"]
    while not fits() and isinstance(matches, list) and matches:
        matches.pop()


def _shrink(matches: Sequence[JSONObject]) -> bool:
    for match in reversed(matches):
        for key in ("found", "done"):
            items = match[key]
            if not isinstance(items, list):
                continue
            for item in reversed(items):
                if isinstance(item, dict) and "details" in item:
                    del item["details"]
                    return True
            if key == "found" and items:
                items.pop()
                return True
    return False
