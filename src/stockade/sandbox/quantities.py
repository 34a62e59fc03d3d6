"""Kubernetes resource quantities, as seed 004 (AgentBox) writes them in ``resources``.

``parse_cpu("500m")`` is 500 millicores and ``parse_bytes("1.5Gi", field=...)`` is 1610612736
bytes. Arithmetic is exact (``decimal``), and fractions round *up*, so a sandbox never gets less
than was asked for. ``format_cpu`` and ``format_bytes`` echo the numbers back in the same notation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, Context, Decimal

from stockade.errors import InvalidInput

MAX_MILLICORES = 1_000_000 * 1000
MAX_BYTES = 2**63 - 1

_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[eE](?P<exponent>[+-]?[0-9]+)|(?P<unit>[KMGTPE]i|[numkMGTPE]))?"
)
_BINARY_UNITS = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_DECIMAL_UNITS = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
# Longer text is refused, so a number has at most 64 digits. Any exponent past ±99 then gives the
# same answer as ±99 (far too large, or a sliver that rounds up to one unit), and 200 digits of
# precision hold every product below exactly.
_MAX_TEXT = 64
_MAX_EXPONENT = 99
_EXACT = Context(prec=200)


@dataclass(frozen=True)
class _Kind:
    """What a quantity measures: its result unit, its ceiling, and valid examples for messages."""

    per_unit: int
    maximum: int
    maximum_text: str
    examples: tuple[str, str]


_CPU = _Kind(1000, MAX_MILLICORES, "1000000 cores", ("500m", "2"))
_BYTES = _Kind(1, MAX_BYTES, f"{MAX_BYTES} bytes", ("512Mi", "1Gi"))


def parse_cpu(text: str, *, field: str = "resources.cpu") -> int:
    """Return the CPU quantity ``text`` in millicores, rounded up: ``"1"`` is 1000,
    ``"500m"`` and ``"0.5"`` are 500, ``"100u"`` is 1.

    Raises ``InvalidInput`` naming ``field`` if ``text`` is not a quantity, is not above zero,
    or asks for more than a million cores.
    """
    return _parse(text, field=field, kind=_CPU, allow_zero=False)


def parse_bytes(text: str, *, field: str, allow_zero: bool = False) -> int:
    """Return the memory or storage quantity ``text`` in bytes, rounded up: ``"1Ki"`` is 1024,
    ``"1k"`` is 1000, ``"129e6"`` is 129000000, ``"1.5Gi"`` is 1610612736.

    Raises ``InvalidInput`` naming ``field`` if ``text`` is not a quantity, is negative, is zero
    (unless ``allow_zero``), or is more than ``2**63 - 1`` bytes.
    """
    return _parse(text, field=field, kind=_BYTES, allow_zero=allow_zero)


def format_bytes(n: int) -> str:
    """Return ``n`` bytes in the shortest exact binary form.

    ``"512Mi"``, ``"1Gi"`` and ``"1536Mi"`` when a binary unit divides ``n``, else the plain number.
    """
    if n < 0:
        raise ValueError(f"a byte count cannot be negative: {n}")
    for power in range(len(_BINARY_UNITS), 0, -1):
        size = 1024**power
        if n and n % size == 0:
            return f"{n // size}{_BINARY_UNITS[power - 1]}"
    return str(n)


def format_cpu(millicores: int) -> str:
    """Return ``millicores`` as whole cores when exact (``"2"``), else as ``"2500m"``."""
    if millicores < 0:
        raise ValueError(f"a CPU quantity cannot be negative: {millicores}")
    if millicores % 1000 == 0:
        return str(millicores // 1000)
    return f"{millicores}m"


def _parse(text: str, *, field: str, kind: _Kind, allow_zero: bool) -> int:
    stripped = text.strip()
    match = _QUANTITY.fullmatch(stripped) if len(stripped) <= _MAX_TEXT else None
    if match is None:
        first, second = kind.examples
        raise _invalid(field, text, f"is not a quantity such as {first!r} or {second!r}")
    amount = _EXACT.multiply(_magnitude(match), Decimal(kind.per_unit))
    if amount == 0 and allow_zero:
        return 0
    if amount == 0 or match["sign"] == "-":
        raise _invalid(field, text, f"must be greater than zero, such as {kind.examples[0]!r}")
    whole = int(amount.to_integral_value(rounding=ROUND_CEILING))
    if whole > kind.maximum:
        limit = f"is more than the maximum of {kind.maximum_text}"
        raise _invalid(field, text, f"{limit}; ask for less, such as {kind.examples[1]!r}")
    return whole


def _magnitude(match: re.Match[str]) -> Decimal:
    """The unsigned value of a matched quantity, in base units (cores or bytes), exactly."""
    number = Decimal(match["number"])
    unit = match["unit"]
    if unit in _BINARY_UNITS:
        return _EXACT.multiply(number, Decimal(1024 ** (_BINARY_UNITS.index(unit) + 1)))
    if unit is not None:
        return number.scaleb(_DECIMAL_UNITS[unit], _EXACT)
    exponent = int(match["exponent"] or 0)
    return number.scaleb(max(-_MAX_EXPONENT, min(_MAX_EXPONENT, exponent)), _EXACT)


def _invalid(field: str, text: str, reason: str) -> InvalidInput:
    shown = text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
    return InvalidInput(f"{field}: {shown!r} {reason}")
