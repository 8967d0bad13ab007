"""Constants, styling and the HTML helpers every console page shares."""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta

import structlog
from aiohttp import web

from receiver.errors import AuthError, ClientGoneError, ReceiverError
from receiver.incidents.clocks import Clock
from receiver.model import JSONValue, json_object
from receiver.web.problems import DETAIL, error_response

log = structlog.get_logger("receiver.console")

MAX_RESULT = 600  # characters of a step's findings shown inline
# Backtests from the console: the candidate's size, what YAML anchors may
# expand it to, and the payloads and seconds one run may take (beyond them
# the report covers what was replayed and says so; the CLI has no limit).
MAX_CANDIDATE_BYTES = 256 * 1024
MAX_CANDIDATE_NODES = 200_000
MAX_FORM_BYTES = MAX_CANDIDATE_BYTES + 16 * 1024
BACKTEST_PAYLOADS = 2000
BACKTEST_SECONDS = 20.0
CANDIDATE = "candidate.yaml"
BACKTEST_TITLE = "Backtest a rules change"
FORM_TIMEOUT = 30.0  # seconds for the form's body to arrive
_CSS = """
body{font-family:system-ui,sans-serif;margin:0;padding:1rem;max-width:64rem;
line-height:1.4}
nav{display:flex;flex-wrap:wrap;gap:.5rem 1rem;margin-bottom:.5rem}
nav a{padding:.4rem 0}
table{border-collapse:collapse;width:100%}
td,th{border:1px solid #888;padding:.4rem;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
button,input,textarea{padding:.5rem;margin:.2rem 0;font-size:1rem;max-width:100%}
textarea,select{width:100%;box-sizing:border-box;font-size:1rem}
textarea{font-family:monospace}
button{padding:.5rem 1rem;min-height:2.75rem}
.state{font-weight:bold}
.nw{white-space:nowrap}
.w{overflow-wrap:break-word}
ul.clocks{list-style:none;padding:0;margin:0}
.breached{color:#b00020;font-weight:bold}
.breached::before{content:"\\26A0  "}
.ok::before{content:"\\2022  "}
.stopped::before{content:"\\2713  "}
[role=alert]{border:2px solid #b00020;padding:.5rem}
@media (max-width:40rem){table,thead,tbody,tr,td,th{display:block}
thead{display:none}td{border:none;padding:.2rem 0}
tr{border-bottom:1px solid #888;padding:.5rem 0}
td[data-label]::before{content:attr(data-label) ": ";font-weight:bold}}
"""
# The one script: running clocks count down every second from the server's
# view at render, and turn red and say BREACHED when their deadline passes.
# Without it the server-rendered text (correct at page load) stays.
_JS = """
"use strict";
const loaded = Date.now();
function fmt(s){s=Math.max(0,Math.floor(s));const h=Math.floor(s/3600),
m=Math.floor(s%3600/60),x=s%60;return (h?h+"h ":"")+(h||m?m+"m ":"")+x+"s";}
function tick(){const gone=(Date.now()-loaded)/1000;
document.querySelectorAll("[data-left]").forEach(function(e){
const left=parseFloat(e.dataset.left)-gone,n=e.dataset.name,due=e.dataset.due;
if(left>=0){e.textContent=n+": "+fmt(left)+" left (due "+due+")";
e.className="clock ok";}else{e.textContent=n+": BREACHED "+fmt(-left)+
" ago (was due "+due+")";e.className="clock breached";}});}
setInterval(tick,1000);
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _span(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _minute(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at else ""


def _page(title: str, body: str, *, status: int = 200) -> web.Response:
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)} - alert-receiver</title><style>{_CSS}</style>"
        '<script src="/ui/static/console.js" defer></script></head>'
        '<body><nav aria-label="Console"><a href="/ui/incidents">Incidents</a>'
        '<a href="/ui/approvals">Approvals</a>'
        '<a href="/ui/guards">Guards</a><a href="/ui/rules">Rules</a>'
        '<a href="/ui/backtest">Backtest</a></nav>'
        f"<main><h1>{_e(title)}</h1>{body}</main></body></html>"
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'self'; form-action 'self'; frame-ancestors 'none'",
        },
    )


def _table(head: Iterable[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f"<p>{_e(empty)}</p>"
    names = list(head)
    cells = "".join(f"<th>{_e(h)}</th>" for h in names)
    # On a phone the header row is hidden and each cell says what it is.
    labels = [f' data-label="{_e(h)}"' if h else "" for h in names]
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{labels[i] if i < len(labels) else ''}>{c}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def clock_item(clock: Clock, now: datetime) -> str:
    """One clock as a list item: its state in words, red when breached."""
    due = clock.deadline.strftime("%H:%M UTC")
    data = f'data-name="{_e(clock.name)}" data-due="{_e(due)}"'
    if clock.stopped is not None:
        late = clock.stopped > clock.deadline
        # Stopped by something else (an acknowledge clock by the mitigation or
        # the resolution): said, or "in time" read as if it was acknowledged.
        other = clock.stopped_by_another
        by = f" by the {other}" if other else ""
        text = f"{clock.name}: stopped at {_minute(clock.stopped)}{by}, " + (
            "LATE (BREACHED)" if late else "in time"
        )
        kind = "breached" if late else "stopped"
        return f'<li class="clock {kind}" {data}>{_e(text)}</li>'
    # Seconds left at render (negative: past due): the script counts from
    # there, so a browser whose clock is off still shows the server's view.
    left = (clock.deadline - now).total_seconds()
    running = f'{data} data-left="{left:.1f}"'
    if now > clock.deadline:
        text = (
            f"{clock.name}: BREACHED {_span(now - clock.deadline)} ago (was due {due})"
        )
        return f'<li class="clock breached" {running}>{_e(text)}</li>'
    text = f"{clock.name}: {_span(clock.deadline - now)} left (due {due})"
    return f'<li class="clock ok" {running}>{_e(text)}</li>'


def _step_row(step: Mapping[str, JSONValue]) -> list[str]:
    result = json_object(step.get("result"))
    shown = json.dumps(result, sort_keys=True, default=str)
    if len(shown) > MAX_RESULT:
        shown = shown[:MAX_RESULT] + " …"
    verify = result.get("verification") or result.get("verify") or ""
    return [
        _e(step.get("kind", "")),
        _e(f"{step.get('name') or step.get('type')} on {step.get('target')}"),
        f"<span class=state>{_e(str(step.get('decision', '')).upper())}</span>"
        + (f" ({_e(step['guard'])})" if step.get("guard") else ""),
        f"<pre>{_e(step.get('reason', ''))}</pre>",
        (f"<pre>{_e(shown)}</pre>" if result else "")
        + (f"<p>verification: {_e(verify)}</p>" if verify else ""),
    ]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Headers of a refusal that still mean something on a page.
_KEPT_HEADERS = ("Retry-After", "Allow")


def html_errors(handler: Handler) -> Handler:
    """A console route whose refusals are a page a person reads.

    The API answers problem+json; a person who pressed a button would see raw
    JSON. A version conflict, an empty comment, the store down: each is a page
    with the same status (and ``Retry-After``), what went wrong, and a way
    back; a bug of ours a 500 page naming the request id of its log line.
    Credentials refused stay as they are (the browser's sign-in prompt).
    """

    @functools.wraps(handler)
    async def page(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (AuthError, ClientGoneError):
            raise
        except ReceiverError as exc:
            answer = error_response(exc)
            status, detail = answer.status, answer.get(DETAIL, "") or answer.reason
            headers = {
                k: answer.headers[k] for k in _KEPT_HEADERS if k in answer.headers
            }
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            status = exc.status
            detail = (exc.text or exc.reason or "").replace("\n", " ")[:300]
            headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
        except Exception:  # a bug of ours: logged, and said as the API says it
            log.exception("request_failed", path=request.path)
            said = structlog.contextvars.get_contextvars().get("request_id", "")
            status, headers = 500, {}
            detail = (
                "internal error while handling the request; it was logged "
                f"with request id {said}"
            )
        return _refusal(request, status, detail, headers)

    return page


def _refusal(
    request: web.Request, status: int, detail: str, headers: Mapping[str, str]
) -> web.Response:
    """The page of a refused request: why, whether to try again, a way back."""
    back = request.path if request.method == "GET" else request.path.rsplit("/", 1)[0]
    if back in ("", "/ui"):
        back = request.path
    again = (
        f" Try again in {headers['Retry-After']} seconds."
        if "Retry-After" in headers
        else ""
    )
    body = (
        f"<p role=alert>{_e(detail.rstrip('. '))}.{_e(again)}</p>"
        f'<p><a href="{_e(back)}">Back</a></p>'
    )
    response = _page(f"Not done ({status})", body, status=status)
    response.headers.update(headers)
    return response
