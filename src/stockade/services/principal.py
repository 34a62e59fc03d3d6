"""Who is asking: the identity every service call is made on behalf of."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"


class Permission(StrEnum):
    """An API key's level on one sandbox, each including the ones before it."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Permission).index(self)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``permissions`` is None for a login (JWT or Basic) or an unrestricted key; for a key
    limited to named sandboxes it maps each sandbox id to the level granted there.
    """

    user_id: str
    username: str
    role: Role
    method: str
    key_id: str | None = None
    permissions: dict[str, Permission] | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def is_restricted(self) -> bool:
        return self.permissions is not None

    @property
    def rate_key(self) -> str:
        """What rate limits count against: the key when one is used, else the user."""
        return f"key:{self.key_id}" if self.key_id else f"user:{self.user_id}"

    def can(self, sandbox_id: str, needed: Permission) -> bool:
        """Whether a restricted key reaches ``sandbox_id`` at ``needed`` or above.

        Ownership is the sandbox service's question; this answers only the key's limit.
        """
        if self.permissions is None:
            return True
        granted = self.permissions.get(sandbox_id)
        return granted is not None and granted.rank >= needed.rank


def acting_for(user_id: str) -> Principal:
    """The principal a task or a job acts as: its owner, on its own sandboxes."""
    return Principal(user_id=user_id, username="owner", role=Role.USER, method="internal")
