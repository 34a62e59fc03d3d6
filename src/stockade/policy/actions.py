"""The actions an agent can ask for, as plain data for the policy to judge.

None of them has a risk field: risk comes from ``classify``, never from the caller or the
model, so text such as "this is safe" inside a command changes nothing.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A command for the sandbox: shell text (``"ls -l | wc -l"``), or an exact argv that
    runs without a shell (``["ls", "-l"]``, stored as a tuple)."""

    command: str | Sequence[str]

    def __post_init__(self) -> None:
        if not isinstance(self.command, str):
            argv = tuple(self.command)
            if not all(isinstance(word, str) for word in argv):
                raise TypeError("an argv must hold only strings")
            object.__setattr__(self, "command", argv)

    @property
    def text(self) -> str:
        """The command as one line of shell, as a person would read it on an approval card."""
        if isinstance(self.command, str):
            return self.command
        return shlex.join(self.command)


@dataclass(frozen=True)
class FileCreate:
    """The agent's file tool writes a new file at ``path``."""

    path: str
    content: str | bytes = ""

    @property
    def size_bytes(self) -> int:
        """The size of the new file."""
        return _size(self.content)


@dataclass(frozen=True)
class FileEdit:
    """The agent's file tool replaces the content of the existing file at ``path``."""

    path: str
    content: str | bytes = ""

    @property
    def size_bytes(self) -> int:
        """The size of the file after the edit."""
        return _size(self.content)


@dataclass(frozen=True)
class FileDelete:
    """The agent's file tool deletes ``path``; ``size_bytes`` when known, for the card."""

    path: str
    size_bytes: int | None = None


@dataclass(frozen=True)
class NetworkCall:
    """The agent's HTTP tool sends ``method`` to ``url``."""

    method: str
    url: str


@dataclass(frozen=True)
class UnknownAction:
    """A tool the policy has no rules for (an MCP server's tool, say), named ``tool``."""

    tool: str
    detail: str = ""


Action = Command | FileCreate | FileEdit | FileDelete | NetworkCall | UnknownAction


def _size(content: str | bytes) -> int:
    return len(content.encode() if isinstance(content, str) else content)
