"""Property tests: slots, matchers, durations and quantities hold for any input.

Hypothesis generates label text (every Unicode category, lone surrogates
included) and grammar-shaped strings; each property says what must hold for
all of them, so a counterexample is a bug, shrunk to its smallest form.
"""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from decimal import Decimal
from fractions import Fraction
from urllib.parse import parse_qs, unquote, urlsplit

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from receiver.errors import QuantityError, RenderError, SlotError
from receiver.model import Alert, freeze
from receiver.rulebook.matchers import Matcher, MatcherError, MatchType
from receiver.rulebook.steps import parse_quantity
from receiver.rulebook.templates import (
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    Slot,
    TemplateError,
    check_slot_template,
    parse_duration,
    quote_meta,
    render,
)

# Wall-clock deadlines would make these depend on the machine's load.
PROPERTY = settings(
    deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow]
)

# Any code point, lone surrogates and control characters included.
ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=80)
HOSTILE = st.one_of(
    ANY_TEXT,
    st.sampled_from(
        [
            "../../admin/shutdown?all=true#",
            ".*|kube-.*",
            'x"} or vector(1) # ',
            "x:y",
            "*",
            "production\n",
            "127.0.0.1:99999",
            "a\r\nHost: evil",
            "%2e%2e",
            ".",
            "..",
            "\ud800",
            "\u0665",
        ]
    ),
)


def alert(value: str) -> Alert:
    return Alert(
        source="alertmanager",
        fingerprint="f",
        status="firing",
        labels=freeze({"v": value}),
    )


def fill(template: str, value: str, slot: Slot) -> str | None:
    """The rendered text, or None when the slot refused the value."""
    try:
        return render(template, alert(value), slot)
    except SlotError:
        return None
    except RenderError:
        assert value == ""  # only a missing or empty label cannot be rendered
        return None


# ----------------------------------------------------------------- slots


@PROPERTY
@given(HOSTILE)
def test_a_kubernetes_name_is_always_a_full_dns1123_match(value):
    """Whatever the label, a rendered name or namespace is valid DNS-1123."""
    name = fill("{labels.v}-canary", value, Slot.K8S_NAME)
    if name is not None:
        assert DNS1123_SUBDOMAIN.fullmatch(name)
        assert len(name) <= 253
        assert name == f"{value}-canary"
    namespace = fill("{labels.v}", value, Slot.NAMESPACE)
    if namespace is not None:
        assert DNS1123_LABEL.fullmatch(namespace)
        assert len(namespace) <= 63


@PROPERTY
@given(HOSTILE)
def test_a_selector_value_stays_one_label_value(value):
    """app={v},tier=web keeps two terms; the value is a Kubernetes label value."""
    selector = fill("app={labels.v},tier=web", value, Slot.LABEL_SELECTOR)
    if selector is None:
        return
    assert selector.split(",") == [f"app={value}", "tier=web"]
    assert re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value)
    assert len(value) <= 63


@PROPERTY
@given(HOSTILE)
def test_a_url_path_value_stays_one_segment(value):
    """Host, path shape, query and fragment never change; the segment decodes back."""
    url = fill("https://h.test/api/breakers/{labels.v}/reset", value, Slot.URL)
    if url is None:
        return
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == (
        "https",
        "h.test",
        "",
        "",
    )
    segments = parts.path.split("/")
    assert segments[:3] == ["", "api", "breakers"]
    assert segments[4:] == ["reset"]
    assert unquote(segments[3]) == value
    assert value not in (".", "..")
    assert not any(ch.isspace() or not ch.isprintable() for ch in url)


@PROPERTY
@given(HOSTILE)
def test_a_url_query_value_stays_one_value(value):
    """A query value is percent-encoded: the other parameters are untouched."""
    url = fill("https://h.test/run?who={labels.v}&n=1", value, Slot.URL)
    if url is None:
        return
    parts = urlsplit(url)
    assert (parts.netloc, parts.path, parts.fragment) == ("h.test", "/run", "")
    assert parse_qs(parts.query, keep_blank_values=True) == {"who": [value], "n": ["1"]}


@PROPERTY
@given(HOSTILE)
def test_a_url_host_value_is_only_a_host(value):
    """A host value never adds a port, user info, path or another host."""
    url = fill("http://{labels.v}/health", value, Slot.URL)
    if url is None:
        return
    parts = urlsplit(url)
    assert parts.hostname == value.lower()
    assert parts.port is None
    assert parts.username is None
    assert (parts.path, parts.query, parts.fragment) == ("/health", "", "")


def promql_unquote(text: str, start: int, quote: str = '"') -> tuple[str, int]:
    """Decode the PromQL string opening at ``start``; (value, index of its end).

    Accepts only the escapes the renderer emits, so an unexpected one fails.
    """
    assert text[start] == quote
    out = []
    i = start + 1
    simple = {"\\": "\\", quote: quote, "n": "\n", "r": "\r", "t": "\t"}
    while text[i] != quote:
        ch = text[i]
        assert ch not in "\n\r"  # PromQL strings cannot hold a raw newline
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
        else:
            assert nxt == "x", text
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            i += 4
    return "".join(out), i


@PROPERTY
@given(HOSTILE)
@example('a"b\\')
@example("'")
def test_a_promql_string_value_never_leaves_its_string(value):
    """The string closes exactly where the template's did and decodes to the value."""
    for quote in ('"', "'"):
        query = fill(f"up{{job={quote}{{labels.v}}{quote}}} > 0", value, Slot.PROMQL)
        if query is None:
            # Only a missing value or text that cannot be encoded is refused.
            assert value == "" or any("\ud800" <= ch <= "\udfff" for ch in value)
            continue
        decoded, end = promql_unquote(query, len("up{job="), quote)
        assert decoded == value
        assert query[end:] == f"{quote}}} > 0"


@PROPERTY
@given(HOSTILE, ANY_TEXT)
def test_a_promql_regex_value_matches_only_itself(value, other):
    """After =~ a value is regex-escaped: it matches itself and nothing else."""
    query = fill('up{pod=~"{labels.v}"}', value, Slot.PROMQL)
    if query is None:
        return
    regex, end = promql_unquote(query, len("up{pod=~"))
    assert query[end:] == '"}'
    assert regex == quote_meta(value)
    assert re.fullmatch(regex, value, re.DOTALL)
    if other != value:
        assert not re.fullmatch(regex, other, re.DOTALL)


@PROPERTY
@given(HOSTILE)
def test_a_redis_key_part_keeps_the_key_structure(value):
    """circuit:<v>:state always has three parts and no glob characters from v."""
    for slot, template in (
        (Slot.REDIS_KEY, "circuit:{labels.v}:state"),
        (Slot.REDIS_KEY_PART, "{labels.v}"),
    ):
        key = fill(template, value, slot)
        if key is None:
            continue
        assert key == template.replace("{labels.v}", value)
        assert not set("*?[]\\") & set(value)
        assert ":" not in value
        assert 0 < len(value) <= 128


@PROPERTY
@given(HOSTILE, st.lists(st.sampled_from(["splunk", "datadog", "x"]), min_size=1))
def test_one_of_accepts_exactly_the_listed_values(value, choices):
    """A label narrowed by one_of renders only as one of its listed values."""
    try:
        out = render("{labels.v}", alert(value), Slot.REDIS_KEY_PART, {"v": choices})
    except RenderError:
        assert value not in choices
    else:
        assert out in choices


# ----------------------------------------------------------------- matchers

LABEL_NAME = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
SAFE_VALUE = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
REGEX_VALUE = st.sampled_from(["", ".*", "prod-.*", "a|b", "[0-9]+", "x\\.y"])


@PROPERTY
@given(
    LABEL_NAME,
    st.sampled_from([MatchType.EQUAL, MatchType.NOT_EQUAL]),
    SAFE_VALUE,
)
def test_equality_matchers_round_trip(name, op, value):
    """str() of a matcher parses back to the same name, operator and value."""
    matcher = Matcher.new(name, op, value)
    parsed = Matcher.parse(str(matcher))
    assert (parsed.name, parsed.type, parsed.value) == (name, op, value)


@PROPERTY
@given(
    LABEL_NAME,
    st.sampled_from([MatchType.REGEX, MatchType.NOT_REGEX]),
    st.one_of(REGEX_VALUE, SAFE_VALUE.map(re.escape)),
)
def test_regex_matchers_round_trip(name, op, value):
    """A valid regex matcher round-trips through its text form."""
    try:
        matcher = Matcher.new(name, op, value)
    except MatcherError:
        return  # re.escape output RE2 does not take (e.g. escaped non-ASCII)
    parsed = Matcher.parse(str(matcher))
    assert (parsed.name, parsed.type, parsed.value) == (name, op, value)


@PROPERTY
@given(ANY_TEXT)
@example('a=~"(?!x)"')
@example('a="\\')
@example("{a=b,c=d}")
@example("a=~\\C")
def test_arbitrary_text_parses_or_raises_only_matcher_error(text):
    """No input makes the matcher parser raise anything but MatcherError."""
    with contextlib.suppress(MatcherError):
        Matcher.parse(text)


@PROPERTY
@given(
    st.sampled_from(['a=~".*"', 'a!~"x.*"', 'a="x"', 'a!="x"', 'a=~"\\\\p{L}+"']),
    ANY_TEXT,
)
@example('a=~".*"', "\ud800")
def test_matching_any_label_value_never_raises(text, value):
    """A label value with a lone surrogate (seen in PagerDuty titles) is matched."""
    assert Matcher.parse(text).matches({"a": value}) in (True, False)


# ----------------------------------------------------------------- durations

UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


@PROPERTY
@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(list(UNITS))),
        min_size=1,
        max_size=6,
    )
)
def test_durations_are_the_sum_of_their_parts(parts):
    """'1h30m5s'-style text is exactly the sum of its terms."""
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == sum((n * UNITS[u] for n, u in parts), timedelta())


@PROPERTY
@given(
    st.one_of(
        ANY_TEXT,
        st.from_regex(r"[0-9\u0660-\u0669]{1,30}(ms|s|m|h|d|w){1,2}", fullmatch=True),
    )
)
@example("99999999999999999999999d")
@example("\u0665m")
def test_durations_parse_or_raise_only_value_error(text):
    """Any text is a timedelta or a ValueError, never OverflowError or others."""
    try:
        parsed = parse_duration(text)
    except ValueError:
        return
    assert parsed >= timedelta(0)
    assert text.strip().isascii()


# ----------------------------------------------------------------- quantities

BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12}
DECIMAL |= {"P": 15, "E": 18}


@st.composite
def quantities(draw: st.DrawFn) -> tuple[str, Fraction]:
    """A quantity string from the apimachinery grammar and its exact value."""
    sign = draw(st.sampled_from(["", "+", "-"]))
    whole = draw(st.from_regex(r"[0-9]{0,12}", fullmatch=True))
    frac = draw(st.from_regex(r"[0-9]{0,9}", fullmatch=True))
    dot = draw(st.booleans()) or not whole
    if not whole and not frac:
        whole = "0"
    number = whole + ("." + frac if dot else "")
    mantissa = Fraction(Decimal(number if number[0] != "." else "0" + number))
    kind = draw(st.sampled_from(["binary", "decimal", "exponent"]))
    if kind == "binary":
        suffix = draw(st.sampled_from(list(BINARY)))
        value = mantissa * 2 ** BINARY[suffix]
    elif kind == "decimal":
        suffix = draw(st.sampled_from(list(DECIMAL)))
        value = mantissa * Fraction(10) ** DECIMAL[suffix]
    else:
        power = draw(st.integers(-30, 30))
        letter = draw(st.sampled_from(["e", "E"]))
        shown = draw(st.sampled_from([str(power), f"+{power}" if power >= 0 else ""]))
        suffix = f"{letter}{shown or power}"
        value = mantissa * Fraction(10) ** power
    return f"{sign}{number}{suffix}", -value if sign == "-" else value


@PROPERTY
@given(quantities())
def test_every_grammatical_quantity_parses_to_its_exact_value(case):
    """Signs, '.5', '5.', exponents and every suffix give the exact Fraction."""
    text, value = case
    assert parse_quantity(text) == value


@PROPERTY
@given(st.one_of(ANY_TEXT, st.from_regex(r"[-+0-9.eEKMGTPkmnuib ]{0,20}")))
@example("1e999999999")
@example("1K")
def test_quantities_parse_or_raise_only_quantity_error(text):
    """Any text is an exact value or a QuantityError (a typed StepError)."""
    try:
        parsed = parse_quantity(text)
    except QuantityError:
        return
    assert isinstance(parsed, Fraction)


# ----------------------------------------------------------------- load time

TEMPLATE_TEXT = st.lists(
    st.one_of(
        ANY_TEXT,
        st.sampled_from(
            [
                "{labels.v}",
                "{alert.fingerprint}",
                "{labels.}",
                "http://",
                "https://h.test",
                "[",
                "]",
                ":",
                "@",
                "/",
                "?",
                "#",
                '"',
                "'",
                "`",
                "\\",
                "=~",
                "{",
                "}",
                "\n",
            ]
        ),
    ),
    max_size=8,
).map("".join)


@PROPERTY
@given(st.sampled_from(list(Slot)), TEMPLATE_TEXT)
@example(Slot.URL, "http://[::1/{labels.v}")
@example(Slot.PROMQL, 'up{a="\\')
def test_any_template_loads_or_raises_only_template_error(slot, text):
    """A rule author's template is accepted or refused with TemplateError only."""
    try:
        assert check_slot_template(text, slot) == text
    except TemplateError:
        return
    # What loads can be rendered: a harmless value fills it or is refused typed.
    with contextlib.suppress(RenderError):
        render(text, alert("a"), slot)
