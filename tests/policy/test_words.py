"""Words as the shell hands them to a program: ``$'…'`` decoded, braces expanded. The strings
are data for the policy's reader; none is given to a shell."""

from __future__ import annotations

import pytest

from stockade.policy.words import MAX_FIELDS, expand_word

EXPANSIONS = [
    # braces
    ("a{b,c}d", ["abd", "acd"]),
    ("{a,b}{1,2}", ["a1", "a2", "b1", "b2"]),
    ("{x{a,b}y,z}", ["xay", "xby", "z"]),
    ("{a,}", ["a", ""]),
    ("{1..3}", ["1", "2", "3"]),
    ("{3..1}", ["3", "2", "1"]),
    ("{01..03}", ["01", "02", "03"]),
    ("{1..7..3}", ["1", "4", "7"]),
    ("{a..e..2}", ["a", "c", "e"]),
    # braces that are not an expansion
    ("{}", ["{}"]),
    ("{x}", ["{x}"]),
    ("{{.Name}}", ["{{.Name}}"]),
    ("{a,b", ["{a,b"]),
    ("'{a,b}'", ["{a,b}"]),
    ('"{a,b}"', ["{a,b}"]),
    ("\\{a,b}", ["{a,b}"]),
    ("{a\\,b}", ["{a,b}"]),
    ("{1..x}", ["{1..x}"]),
    # $'…' and $"…"
    ("$'a\\tb'", ["a\tb"]),
    ("$'\\x41\\101\\u0041'", ["AAA"]),
    ("$'it\\'s'", ["it's"]),
    ("$'\\q'", ["\\q"]),
    ('$"x y"', ["x y"]),
    ("a$'b'c", ["abc"]),
    ("\"$'x'\"", ["$'x'"]),
    ("$'{'a,b}", ["{a,b}"]),
    ('"a\\"b\\c"', ['a"b\\c']),
]


@pytest.mark.parametrize(("source", "words"), EXPANSIONS)
def test_a_word_expands_as_the_shell_expands_it(source: str, words: list[str]) -> None:
    assert expand_word(source) == [(word, False) for word in words]


def test_run_time_expansions_are_kept_as_written_and_marked() -> None:
    assert expand_word("{$X,b}", [(1, 3)]) == [("$X", True), ("b", False)]
    assert expand_word('"$(date)"x', [(1, 8)]) == [("$(date)x", True)]


@pytest.mark.parametrize(
    "source",
    ["'open", '"open', "$'open", "{1..100000}", "{a,b}" * 9, "{a..z}{a..z}", "{a,b}" + "x" * 5000],
)
def test_what_cannot_be_expanded_here_is_left_to_run_time(source: str) -> None:
    assert expand_word(source) is None
    assert MAX_FIELDS < 2**9  # "{a,b}" * 9 is over the limit


def test_a_long_word_without_braces_to_expand_is_read_whatever_its_length() -> None:
    script = "'f() { echo " + "x" * 5000 + "; }'"
    assert expand_word(script) == [(script[1:-1], False)]
