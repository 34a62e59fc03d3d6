"""``/openapi.json`` and ``/docs`` describe every route, its models, errors and security."""

from __future__ import annotations

import pytest

from stockade.testing import TestApp, bearer
from tests.problems import assert_problem

PUBLIC = {("/", "get"), ("/health", "get"), ("/api/v1/health", "get")}
PUBLIC |= {("/api/v1/auth/login", "post"), ("/v1/auth/login", "post")}


async def test_every_operation_declares_models_errors_and_security(stockade: TestApp) -> None:
    schema = (await stockade.client.get("/openapi.json")).json()
    assert set(schema["components"]["securitySchemes"]) == {"bearerAuth", "basicAuth"}
    operations = [
        (path, method, op) for path, item in schema["paths"].items() for method, op in item.items()
    ]
    assert len(operations) >= 12
    for path, method, operation in operations:
        public = (path, method) in PUBLIC
        assert operation["security"] == ([] if public else [{"bearerAuth": []}, {"basicAuth": []}])
        responses = operation["responses"]
        success = [code for code in responses if code.startswith("2")]
        assert success, (path, method)
        if not public:
            problem = responses["401"]["content"]["application/problem+json"]["schema"]
            assert problem == {"$ref": "#/components/schemas/Problem"}
        for response in responses.values():
            assert response["headers"]["X-Request-ID"]["required"] is True
    login = schema["paths"]["/api/v1/auth/login"]["post"]
    body = login["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/LoginIn"}
    assert "HTTPValidationError" not in schema["components"]["schemas"]


async def test_docs_page_is_served(stockade: TestApp) -> None:
    response = await stockade.client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()


async def test_503_when_event_streams_are_exhausted(
    stockade: TestApp, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stockade.services.streams, "limit", 0)
    response = await stockade.client.get("/api/v1/events", headers=bearer(admin_token))
    assert_problem(
        response,
        503,
        error="unavailable",
        detail="Too many open event streams (limit 0); try again later",
    )
