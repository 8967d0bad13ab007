"""Counts and quantities in step parameters: ``+2``, ``x2``, ``512Mi``, exactly.

Used by the Kubernetes step models (``k8s.scale``, ``k8s.patch_hpa``,
``k8s.set_memory_limit``) when rules load and by their executors when they run.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from receiver.errors import QuantityError

_RELATIVE = re.compile(r"(\+|x)?([0-9]+)")
# Kubernetes' quantity grammar (apimachinery resource.Quantity):
#   <quantity> ::= <sign>? <number> <suffix>
#   <number>   ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
#   <suffix>   ::= Ki | Mi | Gi | Ti | Pi | Ei | n | u | m | "" | k | M | G | T | P | E
#                | (e | E) <sign>? <digits>
# A suffix is tried before an exponent, so "1E" is an exa and "1E3" is 1000.
_QUANTITY = re.compile(
    r"([+-]?)([0-9]+)?(?:\.([0-9]*))?"
    r"(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?"
)
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15}
_QUANTITY_UNITS: dict[str | None, Fraction] = {
    None: Fraction(1),
    "E": Fraction(10) ** 18,
    **{s: Fraction(2) ** e for s, e in _BINARY_SI.items()},
    **{s: Fraction(10) ** e for s, e in _DECIMAL_SI.items()},
}
_MAX_QUANTITY_CHARS = 64
_MAX_QUANTITY_EXPONENT = 64


def parse_quantity(text: str) -> Fraction:
    """The exact value of a Kubernetes quantity (``512Mi``, ``1e9``, ``500m``, ``.5``).

    A ``Fraction``, so milli- and nano-units compare exactly (``0.5`` ==
    ``500m``); memory in bytes is the value itself.

    Raises:
        QuantityError: not a quantity (a ``StepError`` and a ``ValueError``).
    """
    raw = str(text)
    found = _QUANTITY.fullmatch(raw) if len(raw) <= _MAX_QUANTITY_CHARS else None
    if found is None or (found.group(2) is None and not found.group(3)):
        raise QuantityError(
            f"invalid quantity {raw[:_MAX_QUANTITY_CHARS]!r}; use a Kubernetes "
            "quantity such as 512Mi, 4Gi, 1G, 1e9 or 500m"
        )
    sign, whole, fraction, suffix, exponent = found.groups()
    fraction = fraction or ""
    value = Fraction(int((whole or "0") + fraction), 10 ** len(fraction))
    if exponent is not None:
        power = int(exponent)
        if abs(power) > _MAX_QUANTITY_EXPONENT:
            raise QuantityError(
                f"quantity {raw!r} is out of range (exponent beyond "
                f"±{_MAX_QUANTITY_EXPONENT})"
            )
        value *= Fraction(10) ** power
    else:
        value *= _QUANTITY_UNITS[suffix]
    return -value if sign == "-" else value


def _check_quantity(text: str) -> str:
    if parse_quantity(text) <= 0:
        raise ValueError(f"quantity {text!r} must be above zero")
    return text


Quantity = Annotated[str, AfterValidator(_check_quantity)]


def _check_relative(text: str) -> str:
    if not _RELATIVE.fullmatch(str(text)):
        raise ValueError(
            f"invalid count {text!r}; use an absolute number (10), an increment "
            "(+2) or a factor (x2)"
        )
    return str(text)


RelativeCount = Annotated[str, BeforeValidator(str), AfterValidator(_check_relative)]


def describe_change(spec: str) -> str:
    """``+2``, ``x2`` or ``10`` in words, for dry-run descriptions."""
    if spec.startswith("+"):
        return f"up by {spec[1:]}"
    if spec.startswith("x"):
        return f"by a factor of {spec[1:]}"
    return f"to {spec}"


def apply_relative(spec: str, current: int) -> int:
    """Apply ``10``, ``+2`` or ``x2`` to a current count."""
    found = _RELATIVE.fullmatch(spec)
    if found is None:  # validated at load time
        raise ValueError(spec)
    op, number = found.group(1), int(found.group(2))
    if op == "+":
        return current + number
    if op == "x":
        return current * number
    return number


# (apiGroup, resource, verbs): what a step needs from the Kubernetes API; the
