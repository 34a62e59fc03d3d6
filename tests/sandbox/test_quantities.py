"""Kubernetes quantities as AgentBox writes them: exact values, clear refusals, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockade.errors import InvalidInput
from stockade.sandbox.quantities import (
    MAX_BYTES,
    MAX_MILLICORES,
    format_bytes,
    format_cpu,
    parse_bytes,
    parse_cpu,
)

KI, MI, GI, TI, PI, EI = (1024**power for power in range(1, 7))


@pytest.mark.parametrize(
    ("text", "millicores"),
    [
        ("500m", 500),
        ("1", 1000),
        ("2", 2000),
        ("0.5", 500),
        ("1.5", 1500),
        (".5", 500),
        ("2.", 2000),
        ("+1", 1000),
        ("  250m\n", 250),
        ("100u", 1),
        ("100n", 1),
        ("1500000n", 2),
        ("0.0001", 1),
        ("1.0001", 1001),
        ("5e-1", 500),
        ("1e-999", 1),
        ("1k", 1_000_000),
        ("1000000", MAX_MILLICORES),
    ],
)
def test_parse_cpu(text: str, millicores: int) -> None:
    assert parse_cpu(text) == millicores


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512Mi", 512 * MI),
        ("1Gi", GI),
        ("1G", 10**9),
        ("128974848", 128974848),
        ("129e6", 129_000_000),
        ("129E6", 129_000_000),
        ("123Mi", 123 * MI),
        ("5Gi", 5 * GI),
        ("1Ki", KI),
        ("1k", 1000),
        ("1M", 10**6),
        ("1T", 10**12),
        ("1Ti", TI),
        ("1P", 10**15),
        ("1Pi", PI),
        ("1E", 10**18),
        ("1Ei", EI),
        ("7Ei", 7 * EI),
        ("1.5Gi", 3 * GI // 2),
        ("0.1", 1),
        ("1m", 1),
        ("1001m", 2),
        ("1.0000000000000000000000000000000001Ki", KI + 1),
        (" 1Gi ", GI),
        (str(MAX_BYTES), MAX_BYTES),
    ],
)
def test_parse_bytes(text: str, size: int) -> None:
    assert parse_bytes(text, field="resources.memory") == size


BAD_QUANTITIES = [
    "",
    "   ",
    "Gi",
    "12XB",
    "1K",
    "1 Gi",
    "1MiGi",
    "1e3Mi",
    "1e3m",
    "1e",
    "1.2.3",
    ".",
    "0x10",
    "NaN",
    "nan",
    "inf",
    "Infinity",
    "1_000",
    "\u0661",
    "1Gi\n1Gi",
    "9" * 100,
]


@pytest.mark.parametrize("text", BAD_QUANTITIES)
def test_cpu_refuses_what_is_not_a_quantity(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_cpu(text)
    assert caught.value.message.startswith("resources.cpu: ")
    assert "is not a quantity such as '500m' or '2'" in caught.value.message


@pytest.mark.parametrize("text", BAD_QUANTITIES)
def test_bytes_refuses_what_is_not_a_quantity(text: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_bytes(text, field="resources.storage")
    assert caught.value.message.startswith("resources.storage: ")
    assert "is not a quantity such as '512Mi' or '1Gi'" in caught.value.message


def test_the_message_quotes_the_value() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_bytes("12XB", field="resources.memory")
    assert caught.value.message == (
        "resources.memory: '12XB' is not a quantity such as '512Mi' or '1Gi'"
    )


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_bytes("1" * 10_000, field="resources.memory")
    assert len(caught.value.message) < 200


@pytest.mark.parametrize("text", ["0", "0m", "0.0", "-1", "-500m", "-0", "0e5"])
def test_cpu_must_be_above_zero(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^resources\.cpu: .* must be greater than zero"):
        parse_cpu(text)


@pytest.mark.parametrize("text", ["0", "0Gi", "-1Gi", "-1", "-0.5Ki"])
def test_memory_must_be_above_zero(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^resources\.memory: .* must be greater than zero"):
        parse_bytes(text, field="resources.memory")


def test_zero_bytes_only_when_allowed() -> None:
    assert parse_bytes("0", field="resources.storage", allow_zero=True) == 0
    assert parse_bytes("0Gi", field="resources.storage", allow_zero=True) == 0
    with pytest.raises(InvalidInput, match="greater than zero"):
        parse_bytes("-1Gi", field="resources.storage", allow_zero=True)


@pytest.mark.parametrize("text", ["1000001", "1000000.0001", "2M", "1e7", "1e999", "1Ei"])
def test_cpu_refuses_absurd_amounts(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^resources\.cpu: .* is more than the maximum"):
        parse_cpu(text)


@pytest.mark.parametrize(
    "text", ["8Ei", "8192Pi", "9223372036854775808", "9.3E", "10E", "1e19", "1e99999999999"]
)
def test_bytes_refuse_absurd_amounts(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"^resources\.memory: .* is more than the maximum"):
        parse_bytes(text, field="resources.memory")


def test_cpu_field_is_named_when_given() -> None:
    with pytest.raises(InvalidInput, match=r"^limits\.cpu: 'lots'"):
        parse_cpu("lots", field="limits.cpu")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0"),
        (1, "1"),
        (1000, "1000"),
        (KI, "1Ki"),
        (512 * MI, "512Mi"),
        (GI, "1Gi"),
        (3 * GI // 2, "1536Mi"),
        (GI + 1, str(GI + 1)),
        (5 * TI, "5Ti"),
        (EI, "1Ei"),
        (2048 * EI, "2048Ei"),
    ],
)
def test_format_bytes(size: int, text: str) -> None:
    assert format_bytes(size) == text


@pytest.mark.parametrize(
    ("millicores", "text"),
    [(0, "0"), (1, "1m"), (500, "500m"), (1000, "1"), (2000, "2"), (2500, "2500m")],
)
def test_format_cpu(millicores: int, text: str) -> None:
    assert format_cpu(millicores) == text


def test_formatting_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_bytes(-1)
    with pytest.raises(ValueError, match="negative"):
        format_cpu(-1)


@given(st.integers(min_value=1, max_value=MAX_BYTES))
def test_bytes_round_trip(size: int) -> None:
    assert parse_bytes(format_bytes(size), field="resources.memory") == size


@given(st.integers(min_value=1, max_value=MAX_BYTES // MI).map(lambda k: k * MI))
def test_whole_mebibytes_round_trip(size: int) -> None:
    assert parse_bytes(format_bytes(size), field="resources.memory") == size


@given(st.integers(min_value=1, max_value=MAX_MILLICORES))
def test_cpu_round_trip(millicores: int) -> None:
    assert parse_cpu(format_cpu(millicores)) == millicores


@given(st.integers(min_value=0, max_value=MAX_BYTES // MI))
def test_mebibytes(k: int) -> None:
    assert parse_bytes(f"{k}Mi", field="resources.memory", allow_zero=True) == k * MI
