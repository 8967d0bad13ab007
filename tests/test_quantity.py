"""Kubernetes quantities: the whole apimachinery grammar, exact values, typed errors."""

from __future__ import annotations

from fractions import Fraction

import pytest
from pydantic import ValidationError

from receiver.errors import PermanentStepError, QuantityError
from receiver.rulebook.steps import parse_quantity
from receiver.steps.k8s.set_memory_limit import K8sSetMemoryLimit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e9", Fraction(10**9)),
        ("1E3", Fraction(1000)),
        ("1e-3", Fraction(1, 1000)),
        ("1e+3", Fraction(1000)),
        ("1E", Fraction(10**18)),  # a suffix before an exponent: exa
        ("500m", Fraction(1, 2)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("5.", Fraction(5)),
        ("+1", Fraction(1)),
        ("-2Mi", Fraction(-2 * 2**20)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("100Ki", Fraction(102400)),
        ("1Ti", Fraction(2**40)),
        ("1Pi", Fraction(2**50)),
        ("1Ei", Fraction(2**60)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("3n", Fraction(3, 10**9)),
        ("3u", Fraction(3, 10**6)),
        ("0", Fraction(0)),
        ("18446744073709551616", Fraction(2**64)),
    ],
)
def test_the_kubernetes_quantity_grammar_parses_exactly(text, expected):
    """Every suffix, exponent and number form of resource.Quantity, exactly."""
    assert parse_quantity(text) == expected


def test_milli_units_compare_exactly():
    """500m equals 0.5 and 1.5Gi equals 1536Mi: no float rounding."""
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1.5Gi") == parse_quantity("1536Mi")
    assert parse_quantity("100m") * 3 == parse_quantity("300m")


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "+",
        "e3",
        "1e",
        "1K",
        "1Ki5",
        "1 Gi",
        "1Gi\n",
        " 1Gi",
        "1.5.5",
        "\u0665",
        "1mi",
        "1e3.5",
        "1e999",
        "9" * 100,
        "0x10",
    ],
)
def test_what_is_not_a_quantity_is_a_typed_step_error(text):
    """Garbage, out-of-range exponents and non-ASCII digits: QuantityError."""
    with pytest.raises(QuantityError) as info:
        parse_quantity(text)
    assert isinstance(info.value, PermanentStepError)
    assert isinstance(info.value, ValueError)


def test_a_rule_with_a_bad_or_non_positive_quantity_fails_to_load():
    """memory/cap are checked when the rules load, and must be above zero."""
    with pytest.raises(ValidationError, match="invalid quantity '1K'"):
        K8sSetMemoryLimit(
            namespace="p", workload="w", container="c", memory="1K", cap="2Gi"
        )
    with pytest.raises(ValidationError, match="must be above zero"):
        K8sSetMemoryLimit(
            namespace="p", workload="w", container="c", memory="-1Gi", cap="2Gi"
        )
    with pytest.raises(ValidationError, match="memory 3e9 is above cap 2Gi"):
        K8sSetMemoryLimit(
            namespace="p", workload="w", container="c", memory="3e9", cap="2Gi"
        )
