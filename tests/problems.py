"""Assertions on problem+json bodies, shared by the API tests."""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus

import httpx

PROBLEM_KEYS = {
    "type",
    "title",
    "status",
    "detail",
    "instance",
    "timestamp",
    "error",
    "message",
    "code",
}


def assert_problem(
    response: httpx.Response, status: int, *, error: str, detail: str | None = None
) -> dict[str, object]:
    """The response is the full problem+json body for ``status``; returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) >= PROBLEM_KEYS, body
    assert body["status"] == body["code"] == status
    assert body["title"] == HTTPStatus(status).phrase
    assert body["error"] == error
    assert body["type"] == f"urn:stockade:error:{error}"
    assert body["message"] == body["detail"]
    assert body["instance"] == response.request.url.path
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    assert "Traceback" not in response.text
    if detail is not None:
        assert body["detail"] == detail, body["detail"]
    assert response.headers["x-request-id"]
    return body
