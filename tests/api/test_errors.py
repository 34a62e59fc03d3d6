"""Every error status the app can produce leaves as the full problem+json body."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from stockade.api.deps import PUBLIC
from stockade.testing import TestApp, bearer, make_settings, running_app
from tests.problems import assert_problem


async def test_400_for_a_body_that_is_not_json(stockade: TestApp) -> None:
    response = await stockade.client.post(
        "/api/v1/auth/login", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, error="bad_request", detail="Request body is not valid JSON")


async def test_401_without_credentials(stockade: TestApp) -> None:
    response = await stockade.client.get("/api/v1/api-keys")
    assert_problem(response, 401, error="unauthorized")


async def test_403_for_a_user_creating_users(stockade: TestApp, admin_token: str) -> None:
    await stockade.client.post(
        "/api/v1/users",
        headers=bearer(admin_token),
        json={"username": "carol", "password": "carol-password"},
    )
    carol = bearer(await stockade.login("carol", "carol-password"))
    response = await stockade.client.post(
        "/api/v1/users", headers=carol, json={"username": "dave", "password": "dave-password"}
    )
    assert_problem(response, 403, error="forbidden")


async def test_404_from_routing_and_from_a_service(stockade: TestApp, admin_token: str) -> None:
    routed = await stockade.client.get("/no/such/route")
    assert_problem(routed, 404, error="not_found", detail="No route matches GET /no/such/route")
    missing = await stockade.client.delete("/api/v1/api-keys/key-000", headers=bearer(admin_token))
    assert_problem(missing, 404, error="not_found", detail="API key key-000 does not exist")


async def test_405_from_routing(stockade: TestApp) -> None:
    response = await stockade.client.put("/health")
    body = assert_problem(response, 405, error="method_not_allowed")
    assert body["detail"] == "Method PUT is not allowed on /health"
    assert "GET" in response.headers["allow"]


async def test_409_for_a_taken_username(stockade: TestApp, admin_token: str) -> None:
    response = await stockade.client.post(
        "/api/v1/users",
        headers=bearer(admin_token),
        json={"username": "admin", "password": "whatever-password"},
    )
    assert_problem(response, 409, error="conflict", detail="User 'admin' already exists")


async def test_422_lists_the_invalid_fields(stockade: TestApp, admin_token: str) -> None:
    response = await stockade.client.post(
        "/api/v1/api-keys",
        headers=bearer(admin_token),
        json={"expires_in": 0, "permissions": [{"environment_id": "e", "permission": "root"}]},
    )
    body = assert_problem(response, 422, error="validation_error")
    locations = {tuple(e["loc"]) for e in body["errors"]}  # type: ignore[attr-defined]
    assert ("body", "expires_in") in locations
    assert ("body", "permissions", 0, "permission") in locations


@pytest.fixture
async def small_bodies(tmp_path: Path) -> AsyncIterator[TestApp]:
    async with running_app(make_settings(tmp_path / "home", max_body_bytes=1024)) as app:
        yield app


async def test_413_by_content_length(small_bodies: TestApp) -> None:
    response = await small_bodies.client.post(
        "/api/v1/auth/login", content=b"x" * 2048, headers={"content-type": "application/json"}
    )
    assert_problem(
        response,
        413,
        error="payload_too_large",
        detail="Request body is larger than the limit of 1024 bytes",
    )


async def test_413_for_a_chunked_body(small_bodies: TestApp) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 256

    response = await small_bodies.client.post(
        "/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, error="payload_too_large")


async def test_a_chunked_body_under_the_limit_is_replayed(small_bodies: TestApp) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"username": "admin",'
        yield b' "password": "admin-password-for-tests"}'

    response = await small_bodies.client.post(
        "/api/v1/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text


async def test_429_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", rate_limit_auth="2/minute")
    async with running_app(settings) as app:
        body = {"username": "admin", "password": "wrong-password"}
        for _ in range(2):
            assert (await app.client.post("/api/v1/auth/login", json=body)).status_code == 401
        response = await app.client.post("/api/v1/auth/login", json=body)
        assert_problem(response, 429, error="rate_limited")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["x-ratelimit-remaining"] == "0"


async def test_500_carries_a_request_id_that_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app(make_settings(tmp_path / "home")) as app:

        async def explode() -> None:
            raise RuntimeError("secret internals")

        app.app.add_api_route("/explode", explode, openapi_extra=PUBLIC)
        caplog.set_level(logging.ERROR, logger="stockade.api")
        transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/explode", headers={"x-request-id": "req-500-check"})
    body = assert_problem(response, 500, error="internal_error")
    assert body["request_id"] == "req-500-check"
    assert "req-500-check" in str(body["detail"])
    assert "secret internals" not in response.text
    assert "request id req-500-check" in caplog.text
    assert "secret internals" in caplog.text  # the log keeps what the client must not see
