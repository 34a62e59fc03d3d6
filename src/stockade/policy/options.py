"""Command-line options read the way getopt reads them, so flag spelling cannot hide intent.

``-rf``, ``-fr``, ``-r -f``, ``-R -f``, ``--recursive --force`` and ``--rec --f`` all give the
same ``Options``: the rules ask ``"r" in opts.flags`` or ``opts.has("recursive")`` and never
look at how the user spelled it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Options:
    """The parsed options of one command line.

    ``flags`` holds short letters (``"r"``) and long names (``"recursive"``), both without
    dashes. ``values`` maps an option that takes a value to every value it was given.
    ``operands`` are the remaining words; ``first_operand`` is the index, in the scanned
    arguments, where the operands begin (for wrappers, where the wrapped command starts).
    """

    flags: frozenset[str] = frozenset()
    values: dict[str, tuple[str, ...]] = field(default_factory=dict)
    operands: tuple[str, ...] = ()
    first_operand: int = 0

    def has(self, *names: str) -> bool:
        """Whether any of ``names`` (short letters or long names) was given, with or without
        a value."""
        return any(name in self.flags or name in self.values for name in names)

    def value(self, *names: str) -> str | None:
        """The last value given to any of ``names``, or ``None``."""
        found = [v for name in names for v in self.values.get(name, ())]
        return found[-1] if found else None


def scan(
    args: Sequence[str],
    *,
    short_values: str = "",
    long_values: Iterable[str] = (),
    long_names: Iterable[str] = (),
    permute: bool = True,
) -> Options:
    """Split ``args`` (the words after the program name) into options and operands.

    ``short_values`` lists the letters whose option takes a value (``-u root``, ``-uroot``);
    ``long_values`` the long names that do (``--user root``, ``--user=root``). A unique prefix
    of a name in ``long_names`` or ``long_values`` stands for it, as in GNU getopt. With
    ``permute`` (GNU style) options may follow operands; without it (POSIX style, and every
    wrapper) the first operand ends the options. ``--`` always ends them.
    """
    takes_value = frozenset(long_values)
    known = sorted(takes_value | frozenset(long_names))
    flags: set[str] = set()
    values: dict[str, list[str]] = {}
    operands: list[str] = []
    first_operand: int | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            first_operand = i + 1 if first_operand is None else first_operand
            operands.extend(args[i + 1 :])
            break
        if not arg.startswith("-") or arg == "-":
            if first_operand is None:
                first_operand = i
            if not permute:
                operands.extend(args[i:])
                break
            operands.append(arg)
        elif arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            name = _resolve(name, known)
            if eq:
                values.setdefault(name, []).append(value)
            elif name in takes_value and i + 1 < len(args):
                i += 1
                values.setdefault(name, []).append(args[i])
            else:
                flags.add(name)
        else:
            i = _short(args, i, short_values, flags, values)
        i += 1
    return Options(
        frozenset(flags),
        {k: tuple(v) for k, v in values.items()},
        tuple(operands),
        len(args) if first_operand is None else first_operand,
    )


def _short(
    args: Sequence[str], i: int, short_values: str, flags: set[str], values: dict[str, list[str]]
) -> int:
    """Read the cluster ``args[i]`` (``-rf``, ``-uroot``, ``-u root``); return the last index
    it used."""
    cluster = args[i][1:]
    for j, letter in enumerate(cluster):
        if letter in short_values:
            rest = cluster[j + 1 :]
            if rest:
                values.setdefault(letter, []).append(rest)
            elif i + 1 < len(args):
                i += 1
                values.setdefault(letter, []).append(args[i])
            else:
                flags.add(letter)
            return i
        flags.add(letter)
    return i


def _resolve(name: str, known: Sequence[str]) -> str:
    if name in known:
        return name
    matches = [k for k in known if k.startswith(name)] if name else []
    return matches[0] if len(matches) == 1 else name
