"""``/``, ``/health``, ``/api/v1/health``, ``/metrics``, request ids and CORS."""

from __future__ import annotations

import platform
from datetime import UTC, datetime, timedelta

import pytest

from stockade import __version__
from stockade.testing import TestApp, basic_auth, bearer
from tests.problems import assert_problem


async def test_root_is_seed_001s_body(stockade: TestApp) -> None:
    response = await stockade.client.get("/")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "message": "stockade agent sandbox daemon",
        "version": __version__,
    }


async def test_root_sends_browsers_to_the_docs(stockade: TestApp) -> None:
    response = await stockade.client.get("/", headers={"accept": "text/html,*/*"})
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"


@pytest.mark.parametrize("path", ["/health", "/api/v1/health"])
async def test_health_is_the_superset_of_every_seed(stockade: TestApp, path: str) -> None:
    response = await stockade.client.get(path)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert abs(datetime.fromisoformat(body["timestamp"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert body["version"] == __version__
    assert body["uptime_seconds"] >= 0
    assert body["active_vms"] == 0
    services = body["services"]
    assert services["api"] == "ok"
    assert services["database"] == "ok"
    assert services["store"] == "sqlite"
    assert services["os"] == platform.system()
    assert services["python"] == platform.python_version()
    assert services["llm"] == "disabled (using fallback parser)"
    assert "backend" in services
    capacity = body["capacity"]
    assert capacity["total_nodes"] == 1
    assert int(capacity["available_cpu"]) >= 1
    assert capacity["available_memory"].endswith("Gi")


async def test_health_reports_a_dead_database(stockade: TestApp) -> None:
    # The job scheduler would retry the dead database each second; aiosqlite leaks a
    # connection object for each failed connect, which this suite treats as an error.
    await stockade.services.jobs.stop_scheduler()
    await stockade.services.store.db.dispose()
    stockade.services.store.db.url = stockade.services.store.db.url.set(
        database="/nonexistent/dir/db.sqlite"
    )
    from sqlalchemy.ext.asyncio import create_async_engine

    stockade.services.store.db.engine = create_async_engine(stockade.services.store.db.url)
    response = await stockade.client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["services"]["database"].startswith("error")


async def test_metrics_need_auth_and_count_requests(stockade: TestApp, admin_token: str) -> None:
    assert_problem(await stockade.client.get("/metrics"), 401, error="unauthorized")
    await stockade.client.get("/health")
    await stockade.client.get("/nowhere")
    response = await stockade.client.get("/metrics", headers=bearer(admin_token))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'stockade_http_requests_total{method="GET",route="/health",status="200"} 1.0' in text
    assert 'stockade_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "stockade_http_request_duration_seconds_bucket" in text
    assert 'stockade_build_info{version="' in text


async def test_request_ids_are_echoed_or_made(stockade: TestApp) -> None:
    given = await stockade.client.get("/health", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = await stockade.client.get("/health", headers={"x-request-id": "bad id\twith junk"})
    assert len(made.headers["x-request-id"]) == 32


async def test_cors_allows_seed_001s_origins_only(stockade: TestApp) -> None:
    preflight = {
        "Origin": "http://localhost:1420",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = await stockade.client.options("/api/v1/auth/login", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:1420"
    other = await stockade.client.options(
        "/api/v1/auth/login", headers=preflight | {"Origin": "http://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers


async def test_basic_auth_reaches_protected_routes(stockade: TestApp) -> None:
    response = await stockade.client.get(
        "/metrics", headers=basic_auth("admin", "admin-password-for-tests")
    )
    assert response.status_code == 200


async def test_responses_vary_on_origin_with_or_without_one(stockade: TestApp) -> None:
    plain = await stockade.client.get("/health")
    assert plain.headers.get_list("vary") == ["Origin"]
    browser = await stockade.client.get("/health", headers={"Origin": "http://localhost:1420"})
    assert browser.headers["access-control-allow-origin"] == "http://localhost:1420"
    assert "Origin" in browser.headers["vary"]
    assert "X-RateLimit-Remaining" in browser.headers["access-control-expose-headers"]
