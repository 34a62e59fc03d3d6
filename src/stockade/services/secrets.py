"""Files only the daemon's user may read: the JWT secret and the first admin's password."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 and write ``text``; an existing file is an error."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def load_or_create_secret(path: Path) -> str:
    """The secret kept in ``path``, generated (mode 0600) on first use."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(48)
        write_private(path, secret + "\n")
        return secret
