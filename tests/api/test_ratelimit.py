"""Rate limits per principal and category, and their headers on every response."""

from __future__ import annotations

import time
from pathlib import Path

from stockade.testing import TestApp, bearer, make_settings, running_app
from tests.problems import assert_problem


def _assert_quota_headers(headers: object, limit: int) -> None:
    assert headers["x-ratelimit-limit"] == str(limit)  # type: ignore[index]
    remaining = int(headers["x-ratelimit-remaining"])  # type: ignore[index]
    assert 0 <= remaining < limit
    assert int(headers["x-ratelimit-reset"]) >= int(time.time())  # type: ignore[index]


async def test_headers_on_a_200_and_on_errors(stockade: TestApp, admin_token: str) -> None:
    ok = await stockade.client.get("/api/v1/auth/me", headers=bearer(admin_token))
    assert ok.status_code == 200
    _assert_quota_headers(ok.headers, 200)
    for response in (
        await stockade.client.get("/health"),
        await stockade.client.get("/api/v1/api-keys"),
        await stockade.client.get("/nowhere"),
    ):
        _assert_quota_headers(response.headers, 200)


async def test_a_burst_is_limited_and_others_are_still_served(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", rate_limit_other="5/minute")
    async with running_app(settings) as app:
        admin = bearer(await app.login())
        await app.client.post(
            "/api/v1/users", headers=admin, json={"username": "erin", "password": "erin-password"}
        )
        erin = bearer(await app.login("erin", "erin-password"))
        statuses = [
            (await app.client.get("/api/v1/auth/me", headers=admin)).status_code for _ in range(7)
        ]
        assert statuses == [200] * 5 + [429] * 2
        refused = await app.client.get("/api/v1/auth/me", headers=admin)
        assert_problem(refused, 429, error="rate_limited")
        assert int(refused.headers["retry-after"]) >= 1
        # Another principal has its own window, and creation is its own category.
        assert (await app.client.get("/api/v1/auth/me", headers=erin)).status_code == 200
        made = await app.client.post("/api/v1/api-keys", headers=admin, json={})
        assert made.status_code == 201
        _assert_quota_headers(made.headers, 20)
        metrics = await app.client.get("/metrics", headers=erin)
        assert 'stockade_rate_limited_requests_total{category="other"} 3.0' in metrics.text


async def test_the_per_token_ceiling_spans_categories(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", rate_limit_token="3/minute")
    async with running_app(settings) as app:
        admin = bearer(await app.login())
        assert (await app.client.get("/api/v1/auth/me", headers=admin)).status_code == 200
        assert (
            await app.client.post("/api/v1/api-keys", headers=admin, json={})
        ).status_code == 201
        assert (await app.client.get("/api/v1/api-keys", headers=admin)).status_code == 200
        response = await app.client.get("/api/v1/auth/me", headers=admin)
        assert_problem(response, 429, error="rate_limited")


async def test_guessing_credentials_spends_the_auth_budget(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", rate_limit_auth="3/minute")
    async with running_app(settings) as app:
        wrong = bearer("wrong-token")
        statuses = [
            (await app.client.get("/api/v1/auth/me", headers=wrong)).status_code for _ in range(4)
        ]
        assert statuses == [401, 401, 401, 429]
        # Public routes stay open to the same address.
        assert (await app.client.get("/health")).status_code == 200


async def test_limits_can_be_switched_off(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "home", rate_limit_other="1/minute", rate_limit_enabled=False
    )
    async with running_app(settings) as app:
        statuses = {(await app.client.get("/health")).status_code for _ in range(5)}
        assert statuses == {200}
