"""The event stream: ``GET /api/v1/events`` as SSE and ``/api/v1/events/ws`` as a
WebSocket. Which events a caller sees is ``services/streams.py``'s decision."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from sse_starlette.sse import EventSourceResponse

from stockade.api.deps import WS_AUTH_PROTOCOL, principal_of, services_of
from stockade.api.errors import responses

router = APIRouter(prefix="/api/v1/events", tags=["events"])


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
    stream = services_of(request).streams.open(principal_of(request), type)

    async def messages() -> AsyncIterator[dict[str, str]]:
        try:
            async for body in stream:
                yield {"id": str(body["id"]), "event": str(body["type"]), "data": json.dumps(body)}
        finally:
            stream.close()

    return EventSourceResponse(messages(), ping=15)


@router.websocket("/ws")
async def events_socket(websocket: WebSocket) -> None:
    """The same stream over a WebSocket, one JSON event per text message. Browsers
    authenticate with the subprotocol pair ``['Authorization', 'Bearer <token>']``."""

    offered = websocket.headers.get("sec-websocket-protocol", "")
    subprotocol = WS_AUTH_PROTOCOL if offered.startswith(WS_AUTH_PROTOCOL) else None
    types = websocket.query_params.getlist("type")
    stream = services_of(websocket).streams.open(principal_of(websocket), types)
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
            async for body in stream:
                await websocket.send_json(body)
    finally:
        stream.close()
