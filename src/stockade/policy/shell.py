"""Shell text as the policy sees it: every program a script would start, found by parsing.

``parse_script`` runs ``bashlex`` over the text and walks the syntax tree, so quoting
(``r'm'``, ``"rm"``, ``\\rm``, ``$'\\x72m'``), brace expansion (``{rm,-rf,/}``), lists
(``;``, ``&&``, ``||``, newlines), pipelines, subshells, ``{ …; }`` groups,
``if``/``for``/``while`` bodies, ``$( … )`` and backtick substitutions, process substitutions
and redirections cannot hide a command from the rules. Nothing here knows what ``rm`` does;
``commands.py`` judges what this module finds.

Each program becomes an ``Invocation`` that remembers where its input comes from, because a
harmless-looking ``sh`` is only as safe as what is piped or substituted into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bashlex  # type: ignore[import-untyped]
import bashlex.errors  # type: ignore[import-untyped]
import bashlex.state  # type: ignore[import-untyped]
import bashlex.tokenizer  # type: ignore[import-untyped]

from stockade.policy.words import MAX_FIELDS, Field, expand_word

Argv = tuple[str, ...]

# Word parts that the shell replaces at run time. A tilde is not among them: the rules read
# "~" literally, as the home directory it stands for.
_EXPANSIONS = frozenset({"parameter", "commandsubstitution", "processsubstitution"})
# What bashlex raises on text it cannot parse or does not support (``case``, ``[[ ]]``,
# ``$(( ))``, ``coproc``), plus RecursionError for absurdly deep nesting.
_PARSE_ERRORS = (bashlex.errors.ParsingError, NotImplementedError, RecursionError)
_WRITES = frozenset({">", ">>", ">|", "&>", "&>>", "<>", ">&"})


class ShellSyntaxError(ValueError):
    """The text is not shell syntax that the parser understands."""


@dataclass(frozen=True)
class Redirect:
    """One redirection: ``op`` as written (``>``, ``>>``, ``<``, ``<<<``…) and its target.

    ``target`` is ``None`` for a file-descriptor duplication such as ``2>&1``.
    """

    op: str
    target: str | None
    expanded: bool = False

    @property
    def writes(self) -> bool:
        """Whether the redirection writes to (or truncates) its target."""
        return self.op in _WRITES and self.target is not None


@dataclass(frozen=True)
class Invocation:
    """One program the script starts, with everything that can feed it.

    ``expanded[i]`` is true when the shell substitutes something into ``argv[i]`` at run time
    (``$VAR``, ``$( … )``, ``<( … )``). ``upstream`` holds the commands of earlier pipeline
    stages, whose output reaches this one's input; ``substituted`` the commands whose output
    is spliced into its words; ``stdin_text`` a here-document or here-string. ``argv`` is empty
    for a bare assignment or a redirection of a ``{ …; }`` group.
    """

    argv: Argv
    expanded: tuple[bool, ...] = ()
    redirects: tuple[Redirect, ...] = ()
    upstream: tuple[Argv, ...] = ()
    substituted: tuple[Argv, ...] = ()
    stdin_text: str | None = None


@dataclass(frozen=True)
class Script:
    """What ``parse_script`` found: the programs, and the names of self-forking functions."""

    invocations: tuple[Invocation, ...]
    fork_bombs: tuple[str, ...] = ()


def parse_script(text: str) -> Script:
    """Return every program ``text`` would start, in source order.

    Raises ``ShellSyntaxError`` when the text cannot be parsed; the caller must then treat it
    as dangerous, never as harmless.
    """
    try:
        if not _tokens(text):
            return Script(())
        parsed, trees = _parse(text)
    except _PARSE_ERRORS as exc:
        raise ShellSyntaxError(str(exc) or type(exc).__name__) from exc
    walker = _Walker(parsed)
    for tree in trees:
        walker.walk(tree, ())
    return Script(tuple(walker.found), tuple(walker.fork_bombs))


def _tokens(text: str) -> list[Any]:
    state = bashlex.state.parserstate()
    return list(bashlex.tokenizer.tokenizer(text, parserstate=state))


def _parse(text: str) -> tuple[str, list[Any]]:
    """``bashlex.parse``, except that the ``time`` keyword is read as the plain word ``time``.

    bashlex refuses the keyword outright; quoting it (``\\time``) gives the same program run
    by the ``time`` wrapper, which the rules unwrap like ``nice`` or ``nohup``. Returns the
    text actually parsed, which the tree's positions index.
    """
    try:
        return text, list(bashlex.parse(text))
    except NotImplementedError as exc:
        if "time command" not in str(exc):
            raise
    starts = [t.lexpos for t in _tokens(text) if t.ttype == bashlex.tokenizer.tokentype.TIME]
    for start in reversed(starts):
        text = text[:start] + "\\" + text[start:]
    return text, list(bashlex.parse(text))


@dataclass
class _Walker:
    source: str
    found: list[Invocation] = field(default_factory=list)
    fork_bombs: list[str] = field(default_factory=list)
    # Words that brace expansion may still make in this script, so that it stays cheap.
    fields_left: int = 4 * MAX_FIELDS

    def walk(self, node: Any, upstream: tuple[Argv, ...]) -> None:
        kind = node.kind
        if kind == "command":
            self._command(node, upstream)
        elif kind == "pipeline":
            self._pipeline(node, upstream)
        elif kind == "function":
            self._function(node, upstream)
        elif kind == "compound":
            for child in node.list:
                self.walk(child, upstream)
            redirects = [d for r in node.redirects for d in self._redirect(r, upstream, ())]
            if redirects:
                self.found.append(Invocation((), redirects=tuple(redirects), upstream=upstream))
        elif kind in ("list", "if", "for", "while", "until"):
            for child in node.parts:
                self.walk(child, upstream)
        elif kind == "word":
            self._word(node, upstream, ())
        # operators, pipes and reserved words run nothing

    def _pipeline(self, node: Any, upstream: tuple[Argv, ...]) -> None:
        feeding = list(upstream)
        for stage in node.parts:
            if stage.kind in ("pipe", "reservedword"):
                continue
            before = len(self.found)
            self.walk(stage, tuple(feeding))
            feeding.extend(inv.argv for inv in self.found[before:] if inv.argv)

    def _function(self, node: Any, upstream: tuple[Argv, ...]) -> None:
        name = node.name.word
        before = len(self.found)
        self.walk(node.body, upstream)
        calls = sum(1 for inv in self.found[before:] if inv.argv[:1] == (name,))
        # Calling itself twice per call doubles the processes each round: ":(){ :|:& };:".
        if calls >= 2:
            self.fork_bombs.append(name)

    def _command(self, node: Any, upstream: tuple[Argv, ...]) -> None:
        fields = [f for p in node.parts if p.kind == "word" for f in self._fields(p)]
        argv = tuple(text for text, _ in fields)
        before = len(self.found)
        for part in node.parts:
            if part.kind in ("word", "assignment"):
                self._word(part, upstream, argv)
        redirects: list[Redirect] = []
        stdin_text: str | None = None
        for part in node.parts:
            if part.kind == "redirect":
                redirects += self._redirect(part, upstream, argv)
                text = self._stdin_text(part)
                stdin_text = text if text is not None else stdin_text
        substituted = tuple(inv.argv for inv in self.found[before:] if inv.argv)
        expanded = tuple(dynamic for _, dynamic in fields)
        invocation = Invocation(argv, expanded, tuple(redirects), upstream, substituted, stdin_text)
        if argv or redirects:
            self.found.append(invocation)

    def _word(self, node: Any, upstream: tuple[Argv, ...], argv: Argv) -> None:
        for part in getattr(node, "parts", None) or ():
            if part.kind == "commandsubstitution":
                self.walk(part.command, upstream)
            elif part.kind == "processsubstitution":
                # ">( … )" receives what the command around it writes; "<( … )" does not.
                writes_into = self.source[part.pos[0] : part.pos[0] + 1] == ">"
                feeding = (*upstream, argv) if writes_into and argv else upstream
                self.walk(part.command, feeding)
            else:
                self._word(part, upstream, argv)

    def _redirect(self, node: Any, upstream: tuple[Argv, ...], argv: Argv) -> list[Redirect]:
        """The redirection ``node``, once per word its target expands to (bash refuses a
        target of several words, but judging each is the safe reading)."""
        output = node.output
        if getattr(output, "kind", None) != "word":
            return [Redirect(node.type, None)]
        self._word(output, upstream, argv)
        return [Redirect(node.type, text, dynamic) for text, dynamic in self._fields(output)]

    def _stdin_text(self, node: Any) -> str | None:
        if node.type == "<<<":
            return " ".join(text for text, _ in self._fields(node.output))
        heredoc = getattr(node, "heredoc", None)
        if heredoc is None:
            return None
        body, _, _delimiter = str(heredoc.value).rpartition("\n")
        return body

    def _fields(self, node: Any) -> list[Field]:
        """The words ``node`` becomes when the shell expands it, each with whether it holds a
        run-time expansion. bashlex's own reading serves unless the word has ``$'…'``,
        ``$"…"`` or braces, which ``words.expand_word`` reads from the source text."""
        parts = getattr(node, "parts", None) or ()
        start, end = node.pos
        source = self.source[start:end]
        if not any(_is_dollar_quote(p) for p in parts) and "{" not in source:
            return [(node.word, _is_expanded(node))]
        spans = [
            (p.pos[0] - start, p.pos[1] - start)
            for p in parts
            if p.kind in _EXPANSIONS and not _is_dollar_quote(p)
        ]
        fields = expand_word(source, spans) if self.fields_left > 0 else None
        if fields is None:
            return [(node.word, True)]  # too many words, or unreadable: known only at run time
        self.fields_left -= len(fields)
        return fields


def _is_dollar_quote(part: Any) -> bool:
    """bashlex reads ``$'…'`` and ``$"…"`` as a parameter with no name."""
    return part.kind == "parameter" and not getattr(part, "value", "")


def _is_expanded(node: Any) -> bool:
    return any(
        (part.kind in _EXPANSIONS and not _is_dollar_quote(part)) or _is_expanded(part)
        for part in getattr(node, "parts", None) or ()
    )
