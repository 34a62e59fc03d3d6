"""Every error leaves as one ``application/problem+json`` body.

It carries RFC 7807's ``type``, ``title``, ``status``, ``detail``, ``instance`` and
``timestamp``, plus ``error`` (a short code), ``message`` (the detail again) and ``code``
(the status): the superset seeds 000 to 004 each expect. Domain errors are mapped to a
status in ``STATUS_OF``, the one table that knows both worlds.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from stockade import errors

logger = logging.getLogger("stockade.api")

PROBLEM_JSON = "application/problem+json"

STATUS_OF: dict[type[errors.StockadeError], int] = {
    errors.InvalidInput: 400,
    errors.AuthenticationFailed: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.PayloadTooLarge: 413,
    errors.RateLimited: 429,
    errors.StorageFull: 507,
    errors.Unavailable: 503,
}

CODE_OF: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class Problem(BaseModel):
    """An error, as RFC 7807 problem details with the fields every seed reads."""

    type: str = Field(examples=["urn:stockade:error:not_found"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["API key key-1a2b3c does not exist"])
    instance: str = Field(examples=["/api/v1/api-keys/key-1a2b3c"])
    timestamp: str = Field(examples=["2026-11-22T10:30:00Z"])
    error: str = Field(examples=["not_found"], description="Short machine-readable code.")
    message: str = Field(description="The same text as detail.")
    code: int = Field(description="The same number as status.")
    request_id: str | None = Field(None, description="Quote it when reporting a 500.")
    errors: list[dict[str, Any]] | None = Field(None, description="Per-field validation errors.")


def problem(
    status: int,
    detail: str,
    *,
    instance: str,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """A problem+json response."""
    code = CODE_OF.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")
    body: dict[str, Any] = {
        "type": f"urn:stockade:error:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "error": code,
        "message": detail,
        "code": status,
    }
    if request_id:
        body["request_id"] = request_id
    body |= extra or {}
    response_headers = {"x-request-id": request_id} if request_id else {}
    response_headers |= headers or {}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=response_headers)


def status_of(exc: errors.StockadeError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


def _request_id(request: Request) -> str | None:
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return request_id


def _instance(request: Request) -> str:
    return request.url.path


async def _stockade_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.StockadeError)
    status = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, errors.RateLimited):
        headers["retry-after"] = str(exc.retry_after)
    if isinstance(exc, errors.AuthenticationFailed):
        headers["www-authenticate"] = 'Bearer realm="stockade"'
    return problem(
        status,
        exc.message,
        instance=_instance(request),
        request_id=_request_id(request),
        headers=headers,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No route matches {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"Method {request.method} is not allowed on {request.url.path}"
    return problem(
        exc.status_code,
        detail,
        instance=_instance(request),
        request_id=_request_id(request),
        headers=dict(exc.headers or {}),
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    # A body that is not JSON at all is a bad request; well-formed JSON of the wrong
    # shape is unprocessable.
    if any(e["type"] == "json_invalid" for e in found):
        return problem(
            400,
            "Request body is not valid JSON",
            instance=_instance(request),
            request_id=_request_id(request),
        )
    summary = (
        "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in found[:5])
        or "Request is invalid"
    )
    return problem(
        422,
        summary,
        instance=_instance(request),
        request_id=_request_id(request),
        extra={"errors": found},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = _request_id(request)
    logger.exception(
        "unhandled error in %s %s (request id %s)", request.method, request.url.path, request_id
    )
    return problem(
        500,
        f"Internal server error; quote request id {request_id} when reporting it",
        instance=_instance(request),
        request_id=request_id,
    )


def install(app: FastAPI) -> None:
    """Route every error the app can raise through problem+json."""
    app.add_exception_handler(errors.StockadeError, _stockade_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries declaring the problem body for each status."""
    return {
        status: {
            "model": Problem,
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
