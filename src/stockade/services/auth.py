"""Authentication: logins, the three credential forms, and API keys (seed 004)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cachetools import TTLCache

from stockade.errors import AuthenticationFailed, InvalidInput, NotFound, PermissionDenied
from stockade.events import EventBus
from stockade.services.cache import RecordCache
from stockade.services.passwords import Passwords
from stockade.services.principal import Permission, Principal, Role
from stockade.services.tokens import IssuedToken, Tokens
from stockade.store import Store
from stockade.store.records import ApiKey, User

KEY_PREFIX = "stk_"
# Writing last_used_at on every request would turn each read into a write; a minute's
# resolution is what a person looking at the key list needs.
LAST_USED_RESOLUTION = timedelta(seconds=60)
# HTTP Basic sends the password on every request, and argon2 costs tens of ms by design:
# remember a verified pair briefly, keyed by an HMAC so the memory holds no password.
BASIC_CACHE_SECONDS = 60.0
# Users and keys are read on every request. They are kept this long in memory: a change
# made through this daemon takes effect at once, one made through another replica
# sharing the database within this many seconds.
RECORD_CACHE_SECONDS = 5.0
CACHE_SIZE = 4096
_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True, slots=True)
class Login:
    token: IssuedToken
    user: User


@dataclass(frozen=True, slots=True)
class NewApiKey:
    record: ApiKey
    key: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthService:
    def __init__(
        self, store: Store, passwords: Passwords, tokens: Tokens, events: EventBus, secret: str
    ) -> None:
        self._store = store
        self._passwords = passwords
        self._tokens = tokens
        self._events = events
        self._cache_key = secret.encode()
        self._basic: TTLCache[bytes, str] = TTLCache(CACHE_SIZE, BASIC_CACHE_SECONDS)
        self._users: RecordCache[str, User | None] = RecordCache(CACHE_SIZE, RECORD_CACHE_SECONDS)
        self._keys: RecordCache[str, ApiKey | None] = RecordCache(CACHE_SIZE, RECORD_CACHE_SECONDS)
        self._principals: TTLCache[str, tuple[Principal, float]] = TTLCache(
            CACHE_SIZE, RECORD_CACHE_SECONDS
        )

    async def user(self, user_id: str) -> User | None:
        """The user with this id, from a short-lived cache in front of the store."""
        return await self._users.get(user_id, self._store.users.get)

    async def current_user(self, principal: Principal) -> User:
        """The caller's own account."""
        user = await self.user(principal.user_id)
        if user is None:
            raise NotFound(f"User {principal.user_id} does not exist")
        return user

    async def _key(self, key_hash: str) -> ApiKey | None:
        return await self._keys.get(key_hash, self._store.api_keys.get_by_hash)

    # -- logins ---------------------------------------------------------------------------

    async def login(self, username: str, password: str, *, client: str | None = None) -> Login:
        """Check a username and password and issue a token."""
        user = await self._check_password(username, password)
        if user is None:
            await self._store.audit.append(
                "auth.login_failed", actor=None, target=username[:128], detail={"client": client}
            )
            raise AuthenticationFailed("Invalid username or password")
        token = self._tokens.issue(user.id)
        await self._store.audit.append("auth.login", actor=user.id, detail={"client": client})
        self._events.publish("auth.login", {"user_id": user.id}, owner=user.id)
        return Login(token=token, user=user)

    async def _check_password(self, username: str, password: str) -> User | None:
        user = await self._store.users.get_by_username(username)
        ok = await self._passwords.verify(user.password_hash if user else None, password)
        return user if ok else None

    # -- credentials ----------------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header value: ``Bearer <jwt>``,
        ``Bearer stk_…`` or ``Basic …``.

        A bearer credential's principal is remembered for ``RECORD_CACHE_SECONDS`` (never
        past the token's or key's own expiry): checking a signature and reading the user
        on every request would cost more than the rest of the request.
        """
        if not authorization:
            raise AuthenticationFailed()
        cached = self._principals.get(authorization)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if not credential or _WHITESPACE.search(credential):
            raise AuthenticationFailed("Malformed Authorization header")
        match scheme.lower():
            case "bearer" if credential.startswith(KEY_PREFIX):
                principal, valid_until = await self._key_principal(credential)
            case "bearer":
                principal, valid_until = await self._token_principal(credential)
            case "basic":
                # Not remembered here: its own cache is keyed by an HMAC, so that no
                # password stays in memory.
                return await self._basic_principal(credential)
            case _:
                raise AuthenticationFailed(f"Unsupported authorization scheme {scheme[:16]!r}")
        self._principals[authorization] = (principal, valid_until)
        return principal

    async def _token_principal(self, token: str) -> tuple[Principal, float]:
        subject, expires = self._tokens.verify(token)
        user = await self.user(subject)
        if user is None:
            raise AuthenticationFailed("Invalid token")
        return Principal(user.id, user.username, Role(user.role), "jwt"), expires

    async def _basic_principal(self, encoded: str) -> Principal:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise AuthenticationFailed("Malformed Basic credentials") from exc
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthenticationFailed("Malformed Basic credentials")
        fingerprint = hmac.digest(self._cache_key, decoded.encode(), "sha256")
        user_id = self._basic.get(fingerprint)
        if user_id is not None:
            user = await self.user(user_id)
        else:
            user = await self._check_password(username, password)
            if user is not None:
                self._basic[fingerprint] = user.id
        if user is None:
            raise AuthenticationFailed("Invalid username or password")
        return Principal(user.id, user.username, Role(user.role), "basic")

    async def _key_principal(self, key: str) -> tuple[Principal, float]:
        key_hash = hash_key(key)
        record = await self._key(key_hash)
        now = datetime.now(UTC)
        if record is None:
            raise AuthenticationFailed("Invalid API key")
        if record.revoked_at is not None:
            raise AuthenticationFailed("API key has been revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationFailed("API key has expired")
        user = await self.user(record.user_id)
        if user is None:
            raise AuthenticationFailed("Invalid API key")
        if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
            await self._store.api_keys.touch(record.id, now)
            self._keys.put(key_hash, dataclasses.replace(record, last_used_at=now))
        permissions = (
            {p["environment_id"]: Permission(p["permission"]) for p in record.permissions}
            if record.permissions
            else None
        )
        principal = Principal(
            user.id, user.username, Role(user.role), "api_key", record.id, permissions
        )
        return principal, record.expires_at.timestamp() if record.expires_at else math.inf

    # -- API keys -------------------------------------------------------------------------

    async def create_key(
        self,
        principal: Principal,
        *,
        description: str | None,
        expires_in_days: int | None,
        permissions: list[tuple[str, Permission]],
    ) -> NewApiKey:
        """Make a key for the caller. It is returned once; only its hash is kept."""
        self._require_unrestricted(principal)
        if expires_in_days is not None and expires_in_days <= 0:
            raise InvalidInput("expires_in must be a positive number of days")
        now = datetime.now(UTC).replace(microsecond=0)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id=f"key-{secrets.token_hex(6)}",
            user_id=principal.user_id,
            key_hash=hash_key(key),
            prefix=key[:12],
            description=description,
            permissions=[{"environment_id": e, "permission": p.value} for e, p in permissions],
            created_at=now,
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
            last_used_at=None,
            revoked_at=None,
        )
        await self._store.api_keys.create(record)
        await self._store.audit.append("apikey.create", actor=principal.user_id, target=record.id)
        self._events.publish("apikey.created", {"id": record.id}, owner=principal.user_id)
        return NewApiKey(record=record, key=key)

    async def list_keys(self, principal: Principal) -> list[ApiKey]:
        """The caller's live keys."""
        self._require_unrestricted(principal)
        return await self._store.api_keys.list_for_user(principal.user_id)

    async def revoke_key(self, principal: Principal, key_id: str) -> None:
        """Revoke one of the caller's keys; anyone else's answers as missing."""
        self._require_unrestricted(principal)
        if not await self._store.api_keys.revoke(key_id, principal.user_id, datetime.now(UTC)):
            raise NotFound(f"API key {key_id} does not exist")
        # The caches are keyed by hash and by credential, which a revoke does not name.
        self._keys.clear()
        self._principals.clear()
        await self._store.audit.append("apikey.revoke", actor=principal.user_id, target=key_id)
        self._events.publish("apikey.revoked", {"id": key_id}, owner=principal.user_id)

    @staticmethod
    def _require_unrestricted(principal: Principal) -> None:
        # A key limited to some sandboxes must not mint a key without those limits.
        if principal.is_restricted:
            raise PermissionDenied("An API key limited to sandboxes cannot manage API keys")
