"""Shell words as the program receives them: quotes removed, ``$'…'`` escapes decoded and
unquoted braces expanded, so ``$'\\x72m'`` is ``rm`` and ``{rm,-rf,/}`` is three words.

bashlex removes ordinary quotes itself, but reads ``$'…'`` and ``$"…"`` as a parameter and
does no brace expansion, so ``shell.py`` hands the source text of such a word to
``expand_word``. What only the running shell knows (``$X``, ``$( … )``) is kept as written
and marks its word as expanded. Nothing here runs anything.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

Span = tuple[int, int]
# One word after expansion: its text, and whether it holds a run-time expansion.
Field = tuple[str, bool]

MAX_FIELDS = 256
# Bounds on the work brace expansion may cost: the word's length, the steps, a sequence.
_MAX_WORD = 4096
_MAX_STEPS = 4 * MAX_FIELDS
_MAX_SEQUENCE_TEXT = 48

# An atom is one piece of a word: a character the shell may still treat as syntax (only
# those take part in brace expansion), quoted text, or an expansion kept as written.
_RAW, _QUOTED, _EXPANSION = 0, 1, 2
_Atom = tuple[str, int]

_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "?": "?",
}
_NUMERIC_ESCAPES = (
    (re.compile(r"[0-7]{1,3}"), 8),
    (re.compile(r"x([0-9A-Fa-f]{1,2})"), 16),
    (re.compile(r"u([0-9A-Fa-f]{1,4})"), 16),
    (re.compile(r"U([0-9A-Fa-f]{1,8})"), 16),
)
_INT_SEQUENCE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")
_CHAR_SEQUENCE = re.compile(r"([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?")


class _TooMany(Exception):
    """The word expands to more than ``MAX_FIELDS`` words."""


def expand_word(source: str, expansions: Sequence[Span] = ()) -> list[Field] | None:
    """The words the shell makes of ``source``, the text of one word as written.

    ``expansions`` are the ``(start, end)`` offsets in ``source`` of its run-time expansions
    (``$X``, ``$( … )``, ``<( … )``), which are kept as written. Returns ``None`` when the
    text cannot be read (an unterminated quote), or has braces to expand but is too long for
    that or makes more than ``MAX_FIELDS`` words: what it means is then only known when it
    runs.
    """
    atoms = _atoms(source, dict(expansions))
    if atoms is None:
        return None
    if not any(atom == ("{", _RAW) for atom in atoms):
        return [_field(atoms)]
    if len(atoms) > _MAX_WORD:
        return None
    try:
        return [_field(word) for word in _braces(atoms)]
    except _TooMany:
        return None


def _field(atoms: list[_Atom]) -> Field:
    return "".join(text for text, _ in atoms), any(kind == _EXPANSION for _, kind in atoms)


def _atoms(text: str, spans: dict[int, int]) -> list[_Atom] | None:
    atoms: list[_Atom] = []
    i = 0
    while i < len(text):
        char, after = text[i], text[i + 1 : i + 2]
        if i in spans:
            atoms.append((text[i : spans[i]], _EXPANSION))
            i = spans[i]
        elif char == "\\":
            if after and after != "\n":
                atoms.append((after, _QUOTED))
            i += 2
        elif char == "'":
            close = text.find("'", i + 1)
            if close < 0:
                return None
            atoms.append((text[i + 1 : close], _QUOTED))
            i = close + 1
        elif char == '"' or (char == "$" and after == '"'):
            i = _double_quoted(text, i + (1 if char == '"' else 2), spans, atoms)
        elif char == "$" and after == "'":
            i = _ansi_c(text, i + 2, atoms)
        else:
            atoms.append((char, _RAW))
            i += 1
        if i < 0:
            return None
    return atoms


def _double_quoted(text: str, i: int, spans: dict[int, int], atoms: list[_Atom]) -> int:
    """Read ``"…"`` from just after its opening quote; return the index after it, or -1."""
    atoms.append(("", _QUOTED))  # '""' is an empty word, not no word
    while i < len(text):
        char, after = text[i], text[i + 1 : i + 2]
        if i in spans:
            atoms.append((text[i : spans[i]], _EXPANSION))
            i = spans[i]
        elif char == "\\" and after and after in '$`"\\\n':
            if after != "\n":
                atoms.append((after, _QUOTED))
            i += 2
        elif char == '"':
            return i + 1
        else:
            atoms.append((char, _QUOTED))
            i += 1
    return -1


def _ansi_c(text: str, i: int, atoms: list[_Atom]) -> int:
    """Decode ``$'…'`` from just after its opening quote; return the index after it, or -1."""
    decoded: list[str] = []
    while i < len(text):
        char = text[i]
        if char == "'":
            atoms.append(("".join(decoded), _QUOTED))
            return i + 1
        if char != "\\" or i + 1 >= len(text):
            decoded.append(char)
            i += 1
            continue
        escape = text[i + 1]
        if escape in _ESCAPES:
            decoded.append(_ESCAPES[escape])
            i += 2
        elif escape == "c" and i + 2 < len(text):
            decoded.append(chr(ord(text[i + 2]) & 0x1F))
            i += 3
        else:
            char, i = _numeric_escape(text, i)
            decoded.append(char)
    return -1


def _numeric_escape(text: str, i: int) -> tuple[str, int]:
    """``\\101``, ``\\x41``, ``\\u0041``, ``\\U00000041``; anything else keeps its backslash."""
    for pattern, base in _NUMERIC_ESCAPES:
        found = pattern.match(text, i + 1)
        if found:
            digits = found.group(found.lastindex or 0)
            code = int(digits, base)
            return (chr(code) if code <= 0x10FFFF else "\ufffd"), found.end()
    return text[i : i + 2], i + 2


def _braces(atoms: list[_Atom]) -> list[list[_Atom]]:
    """Brace expansion, in bash's order: ``a{b,c}d`` is ``abd acd``."""
    done: list[list[_Atom]] = []
    todo = [atoms]
    for _step in range(_MAX_STEPS):
        if not todo:
            return done
        current = todo.pop()
        alternatives = _first_brace(current)
        if alternatives is None:
            done.append(current)
        else:
            todo.extend(reversed(alternatives))
        if len(done) + len(todo) > MAX_FIELDS:
            raise _TooMany
    raise _TooMany


def _first_brace(atoms: list[_Atom]) -> list[list[_Atom]] | None:
    """The words the leftmost brace expression of ``atoms`` makes, or ``None`` if it has none.

    One pass pairs the unquoted braces; a pair is an expression when an unquoted comma lies
    directly inside it (``{a,b}``) or it holds a sequence (``{1..3}``).
    """
    open_braces: list[tuple[int, list[int]]] = []
    best: tuple[int, int, list[int]] | None = None
    for index, (text, kind) in enumerate(atoms):
        if kind != _RAW:
            continue
        if text == "{":
            open_braces.append((index, []))
        elif text == "," and open_braces:
            open_braces[-1][1].append(index)
        elif text == "}" and open_braces:
            start, commas = open_braces.pop()
            if best is not None and start > best[0]:
                continue
            if commas or _is_sequence(atoms[start + 1 : index]):
                best = (start, index, commas)
    if best is None:
        return None
    start, close, commas = best
    prefix, suffix = atoms[:start], atoms[close + 1 :]
    if commas:
        bounds = [start, *commas, close]
        return [prefix + atoms[a + 1 : b] + suffix for a, b in itertools.pairwise(bounds)]
    items = _sequence("".join(text for text, _ in atoms[start + 1 : close]))
    return [[*prefix, (item, _QUOTED), *suffix] for item in items]


def _is_sequence(inner: list[_Atom]) -> bool:
    if len(inner) > _MAX_SEQUENCE_TEXT or any(kind != _RAW for _, kind in inner):
        return False
    text = "".join(t for t, _ in inner)
    return bool(_INT_SEQUENCE.fullmatch(text) or _CHAR_SEQUENCE.fullmatch(text))


def _sequence(text: str) -> list[str]:
    """``1..3``, ``01..10..3``, ``a..e``: the items of a sequence expression."""
    numbers = _INT_SEQUENCE.fullmatch(text)
    letters = _CHAR_SEQUENCE.fullmatch(text)
    found = numbers or letters
    if found is None:
        return [text]
    first, last, step_text = found.groups()
    step = abs(int(step_text or "1")) or 1
    if numbers:
        low, high = int(first), int(last)
        padded = any(re.match(r"-?0\d", end) for end in (first, last))
        width = max(len(first), len(last)) if padded else 0
    else:
        low, high, width = ord(first), ord(last), 0
    if abs(high - low) // step >= MAX_FIELDS:
        raise _TooMany
    values = range(low, high + 1, step) if low <= high else range(low, high - 1, -step)
    if letters:
        return [chr(value) for value in values]
    return [f"{value:0{width}d}" if width else str(value) for value in values]
