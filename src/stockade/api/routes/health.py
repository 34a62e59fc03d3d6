"""``/``, ``/health``, ``/api/v1/health`` and ``/metrics``: every seed's view of health."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from stockade.api.deps import PUBLIC, services_of
from stockade.api.errors import responses
from stockade.version import __version__

router = APIRouter(tags=["health"])


class Root(BaseModel):
    status: str = Field(examples=["ok"])
    message: str = Field(examples=["stockade agent sandbox daemon"])
    version: str


class Capacity(BaseModel):
    total_nodes: int
    available_cpu: str
    available_memory: str


class HealthOut(BaseModel):
    """The union of the health bodies of seeds 000, 001 and 004."""

    status: str = Field(description="healthy, degraded or unhealthy")
    timestamp: datetime
    version: str
    uptime_seconds: float
    active_vms: int
    services: dict[str, str] = Field(
        description="api, database, store, backend, os, python, llm and llm_model"
    )
    capacity: Capacity
    backends: dict[str, str] = Field(
        description="Each sandbox backend this daemon offers: ok, or why it is unavailable "
        "(e.g. gvisor: unavailable (runsc not installed))",
        examples=[{"namespace": "ok", "gvisor": "ok"}],
    )


@router.get(
    "/",
    response_model=Root,
    summary="Liveness and version (seed 001)",
    openapi_extra=PUBLIC,
    responses={307: {"description": "A browser asking for HTML is sent to /docs"}},
)
async def root(request: Request) -> Root | Response:
    accept = request.headers.get("accept", "")
    if "text/html" in accept:
        return RedirectResponse("/docs", status_code=307)
    return Root(status="ok", message="stockade agent sandbox daemon", version=__version__)


async def _health(request: Request, response: Response) -> HealthOut:
    health = await services_of(request).health.check()
    if health.status == "unhealthy":
        response.status_code = 503
    return HealthOut(
        status=health.status,
        timestamp=health.timestamp,
        version=health.version,
        uptime_seconds=health.uptime_seconds,
        active_vms=health.active_vms,
        services=health.services,
        capacity=Capacity.model_validate(health.capacity),
        backends=health.backends,
    )


_health_doc: dict[str, Any] = {
    "response_model": HealthOut,
    "responses": {503: {"model": HealthOut, "description": "The database does not answer"}},
    "openapi_extra": PUBLIC,
}
router.add_api_route(
    "/health", _health, methods=["GET"], summary="Health (seeds 000, 001)", **_health_doc
)
router.add_api_route(
    "/api/v1/health",
    _health,
    methods=["GET"],
    summary="Health (seed 004)",
    operation_id="health_v1",
    **_health_doc,
)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **responses(401, 429),
    },
)
async def metrics(request: Request) -> Response:
    metrics = services_of(request).metrics
    return Response(metrics.render(), media_type=metrics.content_type)
