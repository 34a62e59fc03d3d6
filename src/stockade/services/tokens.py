"""Login tokens: HS256 JWTs signed with the daemon's secret, via PyJWT."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cachetools import TTLCache

from stockade.errors import AuthenticationFailed

ISSUER = "stockade"
ALGORITHM = "HS256"
# Checking a signature costs ~100 µs; a token seen in the last minute is trusted until
# its own expiry without checking it again.
VERIFIED_CACHE_SECONDS = 60.0
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime


class Tokens:
    """Issue and check login tokens. Only HS256 is accepted: ``alg=none`` and every other
    algorithm are refused."""

    def __init__(self, secret: str, ttl: timedelta) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self._secret = secret
        self._ttl = ttl
        self._verified: TTLCache[str, tuple[str, float]] = TTLCache(
            VERIFIED_CACHE_SIZE, VERIFIED_CACHE_SECONDS
        )

    def issue(self, user_id: str, *, now: datetime | None = None) -> IssuedToken:
        issued = (now or datetime.now(UTC)).replace(microsecond=0)
        expires = issued + self._ttl
        claims = {
            "sub": user_id,
            "iss": ISSUER,
            "iat": issued,
            "exp": expires,
            "jti": secrets.token_hex(8),
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires)

    def subject(self, token: str) -> str:
        """The user id a valid token was issued to; AuthenticationFailed otherwise."""
        verified = self._verified.get(token)
        if verified is not None:
            subject, expires = verified
            if expires <= time.time():
                raise AuthenticationFailed("Token has expired")
            return subject
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                options={"require": ["sub", "exp", "iat", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("Token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationFailed("Invalid token") from exc
        subject = str(claims["sub"])
        self._verified[token] = (subject, float(claims["exp"]))
        return subject
