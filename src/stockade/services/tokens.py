"""Login tokens: HS256 JWTs signed with the daemon's secret, via PyJWT."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from stockade.errors import AuthenticationFailed

ISSUER = "stockade"
ALGORITHM = "HS256"


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

    def verify(self, token: str) -> tuple[str, float]:
        """The user id a valid token was issued to, and its expiry as a Unix time;
        AuthenticationFailed otherwise."""
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
        return str(claims["sub"]), float(claims["exp"])
