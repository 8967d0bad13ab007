"""Alertmanager matcher semantics, table-driven, and checked against amtool itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from peers import require_binary

from receiver.rulebook.matchers import (
    Matcher,
    MatcherError,
    MatchType,
    _unquote,
    matches_all,
)

EQ, NE, RE, NRE = (
    MatchType.EQUAL,
    MatchType.NOT_EQUAL,
    MatchType.REGEX,
    MatchType.NOT_REGEX,
)

# ---------------------------------------------------------------- parsing

PARSE_CASES = [
    ('alertname="X"', "alertname", EQ, "X"),
    ('team!="a"', "team", NE, "a"),
    ('ns=~"prod.*"', "ns", RE, "prod.*"),
    ('ns!~"dev|test"', "ns", NRE, "dev|test"),
    ("a=b", "a", EQ, "b"),
    ("a!=b", "a", NE, "b"),
    ("a=~b.*", "a", RE, "b.*"),
    ("a!~b.*", "a", NRE, "b.*"),
    ('a=""', "a", EQ, ""),
    ("a=", "a", EQ, ""),
    ('  a  =  "b"  ', "a", EQ, "b"),
    ("\ta\n=~\r\fb ", "a", RE, "b"),
    ("a = b c", "a", EQ, "b c"),
    ('a=" b "', "a", EQ, " b "),
    ("a==b", "a", EQ, "=b"),
    ("a=~~b", "a", RE, "~b"),
    ("a:b_c=d", "a:b_c", EQ, "d"),
    ("_x=y", "_x", EQ, "y"),
    ('a="x\\"y"', "a", EQ, 'x"y'),
    ('a="x\\\\y"', "a", EQ, "x\\y"),
    ('a="x\\ny"', "a", EQ, "x\ny"),
    ('a="x\\ty"', "a", EQ, "x\\ty"),
    ('a="x\\qy"', "a", EQ, "x\\qy"),
    ('a=~"1\\.2"', "a", RE, "1\\.2"),
    ('a=~"1\\\\.2"', "a", RE, "1\\.2"),
    ("a=x\\", "a", EQ, "x\\"),
    ("a=\\n", "a", EQ, "\n"),
    ('a="héllo wörld"', "a", EQ, "héllo wörld"),
    ('a="b,c"', "a", EQ, "b,c"),
    ('{a="b"}', "a", EQ, "b"),
    ("a=b\u00a0", "a", EQ, "b"),  # Go's TrimSpace is Unicode-aware...
    ("a=\u00a0b", "a", EQ, "\u00a0b"),  # ...its regexp \s is ASCII only
    ("a=b\x1c", "a", EQ, "b\x1c"),  # not a space to Go, unlike str.strip()
]


@pytest.mark.parametrize(("text", "name", "op", "value"), PARSE_CASES)
def test_parse(text, name, op, value):
    """Matcher.parse splits name, operator and value as Alertmanager does."""
    m = Matcher.parse(text)
    assert (m.name, m.type, m.value) == (name, op, value)


@pytest.mark.parametrize(("text", "name", "op", "value"), PARSE_CASES)
def test_str_round_trips(text, name, op, value):
    """str(matcher) is a quoted form that parses back to an equal matcher."""
    m = Matcher.parse(text)
    again = Matcher.parse(str(m))
    assert again == m
    assert (again.name, again.type, again.value) == (name, op, value)


UNQUOTE_CASES = [
    ('"abc"', "abc"),
    ("abc", "abc"),
    ('""', ""),
    ("", ""),
    ('"a\\"b"', 'a"b'),
    ('"a\\\\b"', "a\\b"),
    ('"a\\nb"', "a\nb"),
    ('"a\\tb"', "a\\tb"),  # spurious escapes stay literal, backslash included
    ('"a\\.b"', "a\\.b"),
    ("a\\", "a\\"),  # a trailing backslash is literal
    ('"a\\\\"', "a\\"),
    ("a\\\\b", "a\\b"),  # escapes work unquoted too
    ('"\\\\\\""', '\\"'),
    ('"ünï\\"cödé"', 'ünï"cödé'),
]


@pytest.mark.parametrize(("raw", "value"), UNQUOTE_CASES)
def test_unquote(raw, value):
    r"""_unquote handles \", \\ and \n and keeps spurious escapes literal."""
    assert _unquote(raw) == value


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('"abc', "close the quoted value"),
        ('"', "close the quoted value"),
        ('"a\\"', "close the quoted value"),
        ('a"b', "unescaped double quote"),
        ('"a"b"', "unescaped double quote"),
        ('"a"b', "unescaped double quote"),
        ('abc"', "unescaped double quote"),
    ],
)
def test_unquote_rejects_stray_quotes(raw, fragment):
    """An unescaped or unclosed double quote is an error that says how to fix it."""
    with pytest.raises(MatcherError) as info:
        _unquote(raw)
    assert fragment in str(info.value)
    assert raw in str(info.value)


# ---------------------------------------------------------------- matching

MATCH_CASES = [
    # (matcher, labels, expected)
    ('a="b"', {"a": "b"}, True),
    ('a="b"', {"a": "B"}, False),
    ('a="b"', {}, False),
    ('a!="b"', {"a": "c"}, True),
    ('a!="b"', {"a": "b"}, False),
    ('a!="b"', {}, True),
    ('team=""', {}, True),
    ('team=""', {"team": ""}, True),
    ('team=""', {"team": "x"}, False),
    ('team!=""', {}, False),
    ('team!=""', {"team": "x"}, True),
    ('x=~".*"', {}, True),
    ('x=~".+"', {}, False),
    ('x!~".+"', {}, True),
    ('x!~".*"', {"x": "anything"}, False),
    ('a=~"b"', {"a": "abc"}, False),
    ('a=~"b"', {"a": "b"}, True),
    ('a=~"c"', {"a": "abc"}, False),
    ('a=~"a.*"', {"a": "abc"}, True),
    ('a=~"x|y"', {"a": "xy"}, False),
    ('a=~"x|y"', {"a": "y"}, True),
    ('a=~"foo|bar"', {"a": "foobar"}, False),
    ('a=~"foo|bar"', {"a": "xbar"}, False),
    ('a=~"foo|bar"', {"a": "foox"}, False),
    ('a!~"x|y"', {"a": "xy"}, True),
    ('a!~"x|y"', {"a": "x"}, False),
    ('a=~""', {}, True),
    ('a=~""', {"a": "x"}, False),
    ('a=~"(?i)prod"', {"a": "PROD"}, True),
    ('a!~"(?i)prod"', {"a": "Prod"}, False),
    ('a=~".*"', {"a": "x\ny"}, False),  # . does not cross newlines
    ('a=~"(?s).*"', {"a": "x\ny"}, True),
    ('a=~"\\\\d+"', {"a": "42"}, True),
    ('a=~"\\\\d+"', {"a": "\u0663"}, False),  # \d is ASCII, as in Go
    ('a=~"."', {"a": "\U0001f600"}, True),  # one code point, not one byte
    ('a=~"\\\\p{Greek}+"', {"a": "αβγ"}, True),
    ('a=~"1\\.2"', {"a": "1x2"}, False),
    ('a=~"1\\.2"', {"a": "1.2"}, True),
    ('a="x\\"y"', {"a": 'x"y'}, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCH_CASES)
def test_matches(text, labels, expected):
    """matches() is fully anchored and treats a missing label as ""."""
    assert Matcher.parse(text).matches(labels) is expected


def test_matches_all_is_and():
    """matches_all is the AND of every matcher; no matchers match everything."""
    ms = (Matcher.parse('a="1"'), Matcher.parse('b=~"2|3"'))
    assert matches_all(ms, {"a": "1", "b": "3"})
    assert not matches_all(ms, {"a": "1"})
    assert not matches_all(ms, {"a": "2", "b": "2"})
    assert matches_all((), {})


def test_equality_ignores_compiled_regex():
    """Two matchers parsed from the same text compare equal and hash alike."""
    a, b = Matcher.parse('x=~"a.*"'), Matcher.parse('x =~ "a.*"')
    assert a == b
    assert hash(a) == hash(b)


def test_new_compiles_regex_anchored():
    """Matcher.new builds the same anchored matcher as parse()."""
    m = Matcher.new("a", RE, "b|c")
    assert m.matches({"a": "c"})
    assert not m.matches({"a": "bc"})


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["holds 0 matchers"]),
        ("   ", ["holds 0 matchers"]),
        ("{}", ["holds 0 matchers"]),
        ("alertname", ["bad matcher format", "'alertname'", "=, !=, =~, !~"]),
        ('="x"', ["bad matcher format"]),
        ('1a="x"', ["bad matcher format", "[a-zA-Z_:]"]),
        ('a-b="x"', ["bad matcher format"]),
        ('a<"x"', ["bad matcher format"]),
        ('a~="x"', ["bad matcher format"]),
        ('a =! "x"', ["unescaped double quote"]),
        ("a\u00a0=b", ["bad matcher format"]),
        ('a="b', ["unescaped double quote", "close the quoted value"]),
        ('a="b"c', ["unescaped double quote"]),
        ('a="b" x', ["unescaped double quote"]),
        ('a=b"', ["unescaped double quote"]),
        ('a="b",c="d"', ["holds 2 matchers", "one matcher"]),
        ("a=b,c", ["holds 2 matchers"]),
        (',a="b"', ["holds 2 matchers"]),
    ],
)
def test_bad_format(text, fragments):
    """Malformed matchers raise MatcherError naming the text and what to fix."""
    with pytest.raises(MatcherError) as info:
        Matcher.parse(text)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('a=~"["', "missing ]"),
        ('a=~"(abc"', "missing )"),
        ('a=~"*"', "no argument for repetition operator"),
        ('a=~"a{2,1}"', "invalid repetition size"),
        ('a=~"x{1001}"', "invalid repetition size"),
        ('a!~"\\\\p{Nope}"', "invalid character class range"),
        # What Go's regexp (and so Alertmanager) rejects too: no lookarounds,
        # no backreferences, no atomic groups or possessive quantifiers.
        ('a=~"(?=x)"', "invalid perl operator"),
        ('a=~"(?!x)"', "invalid perl operator"),
        ('a=~"(?<=x)y"', "invalid perl operator"),
        ('a=~"(?<!x)y"', "invalid perl operator"),
        ('a=~"(?>x)"', "invalid perl operator"),
        ('a=~"(a)\\\\1"', "invalid escape sequence"),
        ('a!~"(?P<n>a)(?P=n)"', "invalid perl operator"),
        ('a=~"a*+"', "bad repetition operator"),
        ('a=~"\\\\C"', "invalid escape sequence \\C"),
        ('a=~"[\\\\C]"', "invalid escape sequence \\C"),
    ],
)
def test_bad_regex(text, fragment):
    """Regexes RE2/Go cannot compile raise MatcherError with the engine's reason."""
    with pytest.raises(MatcherError) as info:
        Matcher.parse(text)
    message = str(info.value)
    assert message.startswith("invalid regex ")
    assert fragment in message


@pytest.mark.parametrize(
    "text",
    ['a=~"\\\\\\\\C"', 'a=~"\\\\QC\\\\C\\\\E"', 'a=~"C"', 'a="\\\\C"'],
)
def test_literal_backslash_c_is_fine(text):
    r"""Only a real \C is refused, not an escaped backslash, \Q..\E or a plain =."""
    Matcher.parse(text)


def test_matcher_error_is_a_value_error():
    """MatcherError is a ValueError, so pydantic reports it at the rule's field."""
    assert issubclass(MatcherError, ValueError)


# ---------------------------------------------------------------- amtool

HIT, MISS, ERROR = "hit", "miss", "error"

# (id, matchers as written in a rule's match: list, labels, expected)
CONFORMANCE = [
    ("eq", ['alertname="X"'], {"alertname": "X"}, HIT),
    ("eq-other", ['alertname="X"'], {"alertname": "Y"}, MISS),
    ("eq-case", ['alertname="X"'], {"alertname": "x"}, MISS),
    ("neq", ['team!="a"'], {"team": "b"}, HIT),
    ("neq-missing", ['team!="a"'], {}, HIT),
    ("empty-eq-missing", ['team=""'], {"alertname": "X"}, HIT),
    ("empty-eq-present", ['team=""'], {"team": "x"}, MISS),
    ("empty-neq-missing", ['team!=""'], {"alertname": "X"}, MISS),
    ("empty-neq-present", ['team!=""'], {"team": "x"}, HIT),
    ("dotstar-missing", ['x=~".*"'], {}, HIT),
    ("dotplus-missing", ['x=~".+"'], {}, MISS),
    ("not-dotplus-missing", ['x!~".+"'], {}, HIT),
    ("anchor-prefix", ['a=~"b"'], {"a": "abc"}, MISS),
    ("anchor-suffix", ['a=~"c"'], {"a": "abc"}, MISS),
    ("alt-both", ['a=~"x|y"'], {"a": "xy"}, MISS),
    ("alt-one", ['a=~"x|y"'], {"a": "y"}, HIT),
    ("alt-suffix-trap", ['a=~"foo|bar"'], {"a": "xbar"}, MISS),
    ("alt-prefix-trap", ['a=~"foo|bar"'], {"a": "foox"}, MISS),
    ("not-alt", ['a!~"x|y"'], {"a": "xy"}, HIT),
    ("prefix", ['namespace=~"prod.*"'], {"namespace": "prod-eu"}, HIT),
    ("prefix-not", ['namespace=~"prod.*"'], {"namespace": "preprod"}, MISS),
    ("and", ['a="1"', 'b=~"2|3"'], {"a": "1", "b": "3"}, HIT),
    ("and-one-missing", ['a="1"', 'b=~"2|3"'], {"a": "1"}, MISS),
    ("no-matchers", [], {"a": "x"}, HIT),
    ("empty-regex", ['a=~""'], {"a": "x"}, MISS),
    ("case-flag", ['a=~"(?i)prod"'], {"a": "PROD"}, HIT),
    ("dot-newline", ['a=~".*"'], {"a": "x\ny"}, MISS),
    ("s-flag-newline", ['a=~"(?s).*"'], {"a": "x\ny"}, HIT),
    ("digit-ascii", ['a=~"\\\\d+"'], {"a": "\u0663"}, MISS),
    ("escaped-quote", ['a="x\\"y"'], {"a": 'x"y'}, HIT),
    ("escaped-backslash", ['a="x\\\\y"'], {"a": "x\\y"}, HIT),
    ("escaped-newline", ['a="x\\ny"'], {"a": "x\ny"}, HIT),
    ("spurious-escape", ['a="x\\qy"'], {"a": "x\\qy"}, HIT),
    ("spurious-escape-regex", ['a=~"1\\.2"'], {"a": "1x2"}, MISS),
    ("escaped-dot-regex", ['a=~"1\\\\.2"'], {"a": "1.2"}, HIT),
    ("trailing-backslash", ["a=x\\"], {"a": "x\\"}, HIT),
    ("unquoted", ["a=b"], {"a": "b"}, HIT),
    ("unquoted-spaces", ["  a  =  b c  "], {"a": "b c"}, HIT),
    ("quoted-spaces", ['a=" b "'], {"a": " b "}, HIT),
    ("double-equals", ["a==b"], {"a": "=b"}, HIT),
    ("quoted-comma", ['a="b,c"'], {"a": "b,c"}, HIT),
    ("braces", ['{a="b"}'], {"a": "b"}, HIT),
    ("colon-name", ['a:b="c"'], {"a:b": "c"}, HIT),
    ("unicode-eq", ['a="héllo wörld"'], {"a": "héllo wörld"}, HIT),
    ("emoji-one-rune", ['a=~"."'], {"a": "\U0001f600"}, HIT),
    ("greek-class", ['a=~"\\\\p{Greek}+"'], {"a": "αβγ"}, HIT),
    ("kelvin-folds-to-k", ['a=~"(?i)k"'], {"a": "\u212a"}, HIT),
    ("nbsp-kept-inside", ["a=\u00a0b"], {"a": "\u00a0b"}, HIT),
    ("vtab-trimmed-at-end", ["a=b\x0b"], {"a": "b"}, HIT),
    ("fs-kept-at-end", ["a=b\x1c"], {"a": "b\x1c"}, HIT),
    ("literal-backslash-c", ['a=~"\\\\\\\\C"'], {"a": "\\C"}, HIT),
    ("quoted-backslash-c", ['a=~"\\\\QC\\\\C\\\\E"'], {"a": "C\\C"}, HIT),
    # Rejected by Alertmanager's config loader and by our rule loader alike.
    ("nbsp-before-op", ["a\u00a0=b"], {}, ERROR),
    ("unquoted-comma", ["a=b,c"], {}, ERROR),
    ("stray-quote", ['a="b"c'], {}, ERROR),
    ("unclosed-quote", ['a="b'], {}, ERROR),
    ("digit-name", ["1a=b"], {}, ERROR),
    ("lookahead", ['a=~"(?=x)"'], {}, ERROR),
    ("lookbehind", ['a=~"(?<=x)y"'], {}, ERROR),
    ("backreference", ['a=~"(a)\\\\1"'], {}, ERROR),
    ("any-byte", ['a=~"\\\\C"'], {}, ERROR),
    ("unclosed-class", ['a=~"["'], {}, ERROR),
    ("possessive", ['a=~"a*+"'], {}, ERROR),
]


def _ours(matchers: list[str], labels: dict[str, str]) -> str:
    try:
        parsed = tuple(Matcher.parse(m) for m in matchers)
    except MatcherError:
        return ERROR
    return HIT if matches_all(parsed, labels) else MISS


def _label_arg(name: str, value: str) -> str:
    # amtool parses each label argument with ParseMatcher, so quote and escape.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'{name}="{escaped}"'


def _amtool(binary: str, tmp: Path, matchers: list[str], labels: dict[str, str]):
    config = {
        "route": {
            "receiver": "miss",
            "routes": [{"receiver": "hit", "matchers": matchers}],
        },
        "receivers": [{"name": "hit"}, {"name": "miss"}],
    }
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    proc = subprocess.run(
        [
            binary,
            "config",
            "routes",
            "test",
            f"--config.file={path}",
            *(_label_arg(k, v) for k, v in labels.items()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Failed to parse labels" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        assert "amtool: error:" in proc.stderr, proc.stderr
        return ERROR, proc.stderr.strip()
    # amtool prints the matched receivers, comma-separated, on one line.
    return proc.stdout.strip(), proc.stderr.strip()


@pytest.mark.parametrize(
    ("matchers", "labels", "expected"),
    [pytest.param(m, lbl, exp, id=case) for case, m, lbl, exp in CONFORMANCE],
)
def test_conformance_table(matchers, labels, expected):
    """Our parser and matcher give the answer the table expects from Alertmanager."""
    assert _ours(matchers, labels) == expected


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("matchers", "labels", "expected"),
    [pytest.param(m, lbl, exp, id=case) for case, m, lbl, exp in CONFORMANCE],
)
def test_conformance_with_amtool(tmp_path, matchers, labels, expected):
    """Alertmanager's own routing code (amtool) agrees with matches_all per case."""
    binary = require_binary("amtool", package="prometheus-alertmanager")
    got, stderr = _amtool(binary, tmp_path, matchers, labels)
    assert got == expected, f"amtool said {got!r}: {stderr}"
    assert _ours(matchers, labels) == got
