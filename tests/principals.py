"""Callers for authorization tests: logins, users, and credentials that must be refused.

The functions take any ``httpx.Client``: Starlette's ``TestClient`` in-process, or a
plain client on a daemon process's URL.
"""

from __future__ import annotations

import base64
import json

import httpx

from stockade.testing import bearer


def login(client: httpx.Client, username: str, password: str) -> str:
    """A JWT for ``username``; fails the test if the login does not succeed."""
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def make_user(client: httpx.Client, admin: str, username: str, password: str) -> str:
    """Create an ordinary user with the admin's token; returns the new user's JWT."""
    response = client.post(
        "/api/v1/users", json={"username": username, "password": password}, headers=bearer(admin)
    )
    assert response.status_code == 201, response.text
    return login(client, username, password)


def forged_jwt(claims: dict[str, object], header: dict[str, str], signature: str = "") -> str:
    """A JWT built by hand, so that its header can say anything (``alg: none``…)."""

    def part(value: dict[str, object]) -> str:
        raw = json.dumps(value, default=str).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.{signature}"
