"""The event stream: ``GET /api/v1/events`` as SSE and ``/api/v1/events/ws`` as a
WebSocket. Admins see every event; others see their own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from sse_starlette.sse import EventSourceResponse

from stockade.api.deps import WS_AUTH_PROTOCOL, principal_of, services_of
from stockade.api.errors import responses
from stockade.errors import Unavailable
from stockade.events import Subscription
from stockade.services import Services
from stockade.services.principal import Principal

router = APIRouter(prefix="/api/v1/events", tags=["events"])

MAX_STREAMS = 512


def _open(services: Services, types: list[str]) -> Subscription:
    if services.events.subscriber_count >= MAX_STREAMS:
        raise Unavailable(f"Too many open event streams (limit {MAX_STREAMS}); try again later")
    services.metrics.event_subscribers.inc()
    return services.events.subscribe(types)


def _close(services: Services, sub: Subscription) -> None:
    sub.close()
    services.metrics.event_subscribers.dec()


async def _visible(sub: Subscription, principal: Principal) -> AsyncIterator[dict[str, object]]:
    async for event in sub:
        if principal.is_admin or event.owner == principal.user_id:
            body = event.to_json()
            if event.dropped:
                body["dropped"] = event.dropped
            yield body


@router.get(
    "",
    summary="Stream events (Server-Sent Events)",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **responses(401, 429, 503),
    },
)
async def stream_events(
    request: Request,
    type: list[str] = Query(default=[], description="Only events whose type starts with these."),
) -> EventSourceResponse:
    """Each SSE message's data is one event: ``{id, type, timestamp, data}``."""
    principal, services = principal_of(request), services_of(request)
    sub = _open(services, type)

    async def messages() -> AsyncIterator[dict[str, str]]:
        try:
            async for body in _visible(sub, principal):
                yield {"id": str(body["id"]), "event": str(body["type"]), "data": json.dumps(body)}
        finally:
            _close(services, sub)

    return EventSourceResponse(messages(), ping=15)


@router.websocket("/ws")
async def events_socket(websocket: WebSocket) -> None:
    """The same stream over a WebSocket, one JSON event per text message. Browsers
    authenticate with the subprotocol pair ``['Authorization', 'Bearer <token>']``."""
    principal, services = principal_of(websocket), services_of(websocket)
    offered = websocket.headers.get("sec-websocket-protocol", "")
    subprotocol = WS_AUTH_PROTOCOL if offered.startswith(WS_AUTH_PROTOCOL) else None
    sub = _open(services, websocket.query_params.getlist("type"))
    try:
        await websocket.accept(subprotocol=subprotocol)
        async with anyio.create_task_group() as tasks:

            async def until_closed() -> None:
                # The client sends nothing we act on; reading notices when it leaves.
                try:
                    while True:
                        await websocket.receive_text()
                except WebSocketDisconnect:
                    tasks.cancel_scope.cancel()

            tasks.start_soon(until_closed)
            async for body in _visible(sub, principal):
                await websocket.send_json(body)
    finally:
        _close(services, sub)
