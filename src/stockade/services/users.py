"""Accounts: creating users, and the first admin on first start."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from stockade.errors import Conflict, InvalidInput, PermissionDenied
from stockade.events import EventBus
from stockade.services.passwords import Passwords
from stockade.services.principal import Principal, Role
from stockade.services.secrets import write_private
from stockade.store import Store
from stockade.store.records import User

ADMIN_USERNAME = "admin"
MIN_PASSWORD_LENGTH = 8


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    """What the first start did: the admin's generated password, if it made one."""

    created: bool
    generated_password: str | None = None
    credentials_file: Path | None = None


class UserService:
    def __init__(self, store: Store, passwords: Passwords, events: EventBus) -> None:
        self._store = store
        self._passwords = passwords
        self._events = events

    async def create(
        self,
        username: str,
        password: str,
        *,
        role: Role = Role.USER,
        email: str | None = None,
        actor: Principal | None = None,
    ) -> User:
        """Create an account. Only an admin may do it over the API (``actor`` given);
        the CLI and the first start pass no actor."""
        if actor is not None and not actor.is_admin:
            raise PermissionDenied("Only an admin may create users")
        if actor is not None and actor.is_restricted:
            raise PermissionDenied("An API key limited to sandboxes cannot create users")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise InvalidInput(f"Password must be at least {MIN_PASSWORD_LENGTH} characters")
        user = User(
            id=f"user-{secrets.token_hex(6)}",
            username=username,
            email=email,
            role=role.value,
            password_hash=await self._passwords.hash(password),
            created_at=datetime.now(UTC),
        )
        await self._store.users.create(user)
        await self._store.audit.append(
            "user.create",
            actor=actor.user_id if actor else None,
            target=user.id,
            detail={"username": username, "role": role.value},
        )
        self._events.publish("user.created", {"id": user.id, "username": username}, owner=user.id)
        return user

    async def bootstrap_admin(self, home: Path, password: str | None) -> BootstrapResult:
        """On the very first start, create ``admin``. Its password is ``password`` or a
        generated one, saved mode 0600 in ``home/admin-credentials.json``."""
        if await self._store.users.count() > 0:
            return BootstrapResult(created=False)
        generated = None if password else secrets.token_urlsafe(18)
        try:
            await self.create(ADMIN_USERNAME, password or str(generated), role=Role.ADMIN)
        except Conflict:  # another replica sharing the database got there first
            return BootstrapResult(created=False)
        if generated is None:
            return BootstrapResult(created=True)
        path = home / "admin-credentials.json"
        path.unlink(missing_ok=True)
        body = {"username": ADMIN_USERNAME, "password": generated}
        write_private(path, json.dumps(body, indent=2) + "\n")
        return BootstrapResult(created=True, generated_password=generated, credentials_file=path)
