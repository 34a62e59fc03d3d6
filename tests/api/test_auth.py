"""Logins, the three credential forms and API keys, with seed 004's own requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
import pytest

from stockade.testing import ADMIN_PASSWORD, JWT_SECRET, TestApp, basic_auth, bearer
from tests.principals import forged_jwt
from tests.problems import assert_problem


@pytest.mark.parametrize("path", ["/api/v1/auth/login", "/v1/auth/login"])
async def test_login_returns_the_superset_body(stockade: TestApp, path: str) -> None:
    response = await stockade.client.post(
        path, json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expires_at", "expires", "username", "user"}
    assert body["username"] == "admin"
    assert body["expires_at"] == body["expires"]
    expires = datetime.fromisoformat(body["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    assert set(body["user"]) >= {"id", "username", "email", "role"}
    assert body["user"]["role"] == "admin"
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"], issuer="stockade")
    assert claims["sub"] == body["user"]["id"]


@pytest.mark.parametrize(
    ("username", "password"), [("admin", "wrong-password"), ("nobody", ADMIN_PASSWORD)]
)
async def test_login_with_bad_credentials_is_401(
    stockade: TestApp, username: str, password: str
) -> None:
    response = await stockade.client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert_problem(response, 401, error="unauthorized", detail="Invalid username or password")


async def test_logins_and_failures_are_audited(stockade: TestApp) -> None:
    await stockade.login()
    await stockade.client.post("/api/v1/auth/login", json={"username": "x", "password": "y"})
    actions = [entry.action for entry in await stockade.services.store.audit.list()]
    assert actions[:2] == ["auth.login_failed", "auth.login"]


async def test_me_with_each_credential_form(stockade: TestApp, admin_token: str) -> None:
    key = await stockade.client.post("/api/v1/api-keys", headers=bearer(admin_token), json={})
    assert key.status_code == 201
    forms = {
        "jwt": bearer(admin_token),
        "api_key": bearer(key.json()["key"]),
        "basic": basic_auth("admin", ADMIN_PASSWORD),
    }
    for method, headers in forms.items():
        response = await stockade.client.get("/api/v1/auth/me", headers=headers)
        assert response.status_code == 200, (method, response.text)
        body = response.json()
        assert body["username"] == "admin"
        assert body["role"] == "admin"
        assert body["auth_method"] == method


async def test_refused_credentials_are_401_problems(stockade: TestApp) -> None:
    admin_id = (await stockade.services.store.users.get_by_username("admin")).id  # type: ignore[union-attr]
    now = datetime.now(UTC)
    expired = jwt.encode(
        {
            "sub": admin_id,
            "iss": "stockade",
            "iat": now - timedelta(days=2),
            "exp": now - timedelta(days=1),
        },
        JWT_SECRET,
        algorithm="HS256",
    )
    alg_none = forged_jwt(
        {
            "sub": admin_id,
            "iss": "stockade",
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(hours=1)).timestamp()),
        },
        {"alg": "none", "typ": "JWT"},
    )
    other_secret = jwt.encode(
        {"sub": admin_id, "iss": "stockade", "iat": now, "exp": now + timedelta(hours=1)},
        "another-secret-that-is-long-enough-0123456789",
        algorithm="HS256",
    )
    cases = {
        "missing": ({}, "Authentication is required"),
        "wrong token": (bearer("not-a-jwt"), "Invalid token"),
        "wrong signature": (bearer(other_secret), "Invalid token"),
        "expired": (bearer(expired), "Token has expired"),
        "alg none": (bearer(alg_none), "Invalid token"),
        "unknown key": (bearer("stk_" + "A" * 43), "Invalid API key"),
        "wrong basic": (basic_auth("admin", "nope-nope"), "Invalid username or password"),
        "bad scheme": ({"Authorization": "Digest abc"}, "Unsupported authorization scheme"),
        "malformed basic": ({"Authorization": "Basic !!!"}, "Malformed Basic credentials"),
        "header injection": ({"Authorization": "Bearer a b"}, "Malformed Authorization header"),
    }
    for name, (headers, detail) in cases.items():
        response = await stockade.client.get("/api/v1/auth/me", headers=headers)
        body = assert_problem(response, 401, error="unauthorized")
        assert str(body["detail"]).startswith(detail), (name, body["detail"])
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_api_key_lifecycle_as_seed_004_documents(stockade: TestApp, admin_token: str) -> None:
    auth = bearer(admin_token)
    created = await stockade.client.post(
        "/api/v1/api-keys",
        headers=auth,
        json={
            "description": "CI/CD Pipeline Key",
            "expires_in": 90,
            "permissions": [{"environment_id": "env-abc123", "permission": "write"}],
        },
    )
    assert created.status_code == 201
    key = created.json()
    assert key["key"].startswith("stk_")
    assert key["id"].startswith("key-")
    assert key["description"] == "CI/CD Pipeline Key"
    assert key["permissions"] == [{"environment_id": "env-abc123", "permission": "write"}]
    lifetime = datetime.fromisoformat(key["expires_at"]) - datetime.fromisoformat(key["created_at"])
    assert lifetime == timedelta(days=90)

    listed = (await stockade.client.get("/api/v1/api-keys", headers=auth)).json()
    assert [k["id"] for k in listed["api_keys"]] == [key["id"]]
    entry = listed["api_keys"][0]
    assert "key" not in entry
    assert entry["last_used_at"] is None
    assert {"id", "description", "created_at", "expires_at", "last_used_at"} <= set(entry)

    used = await stockade.client.get("/api/v1/auth/me", headers=bearer(key["key"]))
    assert used.status_code == 200
    assert used.json()["api_key_id"] == key["id"]
    listed = (await stockade.client.get("/api/v1/api-keys", headers=auth)).json()
    assert listed["api_keys"][0]["last_used_at"] is not None

    revoked = await stockade.client.delete(f"/api/v1/api-keys/{key['id']}", headers=auth)
    assert revoked.status_code == 204
    assert revoked.content == b""
    refused = await stockade.client.get("/api/v1/auth/me", headers=bearer(key["key"]))
    assert_problem(refused, 401, error="unauthorized", detail="API key has been revoked")
    assert (await stockade.client.get("/api/v1/api-keys", headers=auth)).json() == {"api_keys": []}
    again = await stockade.client.delete(f"/api/v1/api-keys/{key['id']}", headers=auth)
    assert_problem(again, 404, error="not_found")


async def test_only_the_hash_of_a_key_is_stored(stockade: TestApp, admin_token: str) -> None:
    created = (
        await stockade.client.post("/api/v1/api-keys", headers=bearer(admin_token), json={})
    ).json()
    records = await stockade.services.store.api_keys.list_for_user(
        (await stockade.services.store.users.get_by_username("admin")).id  # type: ignore[union-attr]
    )
    assert len(records) == 1
    assert created["key"] not in repr(records[0])
    assert records[0].prefix == created["key"][:12]


async def test_expired_key_is_refused(stockade: TestApp, admin_token: str) -> None:
    created = (
        await stockade.client.post("/api/v1/api-keys", headers=bearer(admin_token), json={})
    ).json()
    table = __import__("stockade.store.tables", fromlist=["api_keys"]).api_keys
    async with stockade.services.store.db.begin() as conn:
        await conn.execute(
            table.update()
            .where(table.c.id == created["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = await stockade.client.get("/api/v1/auth/me", headers=bearer(created["key"]))
    assert_problem(response, 401, error="unauthorized", detail="API key has expired")


async def test_keys_of_other_users_answer_404(stockade: TestApp, admin_token: str) -> None:
    made = await stockade.client.post(
        "/api/v1/users",
        headers=bearer(admin_token),
        json={"username": "alice", "password": "alice-password", "email": "alice@example.com"},
    )
    assert made.status_code == 201
    assert made.json()["role"] == "user"
    alice = bearer(await stockade.login("alice", "alice-password"))
    admin_key = (
        await stockade.client.post("/api/v1/api-keys", headers=bearer(admin_token), json={})
    ).json()
    assert (await stockade.client.get("/api/v1/api-keys", headers=alice)).json() == {"api_keys": []}
    response = await stockade.client.delete(f"/api/v1/api-keys/{admin_key['id']}", headers=alice)
    assert_problem(response, 404, error="not_found")
    still = await stockade.client.get("/api/v1/auth/me", headers=bearer(admin_key["key"]))
    assert still.status_code == 200


async def test_a_restricted_key_cannot_mint_keys_or_users(
    stockade: TestApp, admin_token: str
) -> None:
    restricted = (
        await stockade.client.post(
            "/api/v1/api-keys",
            headers=bearer(admin_token),
            json={"permissions": [{"environment_id": "env-1", "permission": "read"}]},
        )
    ).json()["key"]
    for method, path, body in [
        ("POST", "/api/v1/api-keys", {}),
        ("GET", "/api/v1/api-keys", None),
        ("POST", "/api/v1/users", {"username": "eve", "password": "eve-password"}),
    ]:
        response = await stockade.client.request(
            method, path, headers=bearer(restricted), json=body
        )
        assert_problem(response, 403, error="forbidden")


async def test_only_admins_create_users(stockade: TestApp, admin_token: str) -> None:
    await stockade.client.post(
        "/api/v1/users",
        headers=bearer(admin_token),
        json={"username": "bob", "password": "bob-password"},
    )
    bob = bearer(await stockade.login("bob", "bob-password"))
    response = await stockade.client.post(
        "/api/v1/users", headers=bob, json={"username": "mallory", "password": "mallory-pw"}
    )
    assert_problem(response, 403, error="forbidden", detail="Only an admin may create users")
    duplicate = await stockade.client.post(
        "/api/v1/users",
        headers=bearer(admin_token),
        json={"username": "bob", "password": "bob-password"},
    )
    assert_problem(duplicate, 409, error="conflict", detail="User 'bob' already exists")


async def test_several_authorization_headers_are_refused(
    stockade: TestApp, admin_token: str
) -> None:
    """A proxy in front may read another of them than the daemon would; the daemon took
    the first one (issue 7's abuse tests found it)."""
    valid = ("Authorization", f"Bearer {admin_token}")
    for headers in ([valid, ("Authorization", "Bearer x")], [("Authorization", "Bearer x"), valid]):
        response = await stockade.client.get("/api/v1/auth/me", headers=headers)
        assert_problem(
            response,
            401,
            error="unauthorized",
            detail="Several Authorization headers; send exactly one",
        )
    assert (await stockade.client.get("/api/v1/auth/me", headers=[valid])).status_code == 200
