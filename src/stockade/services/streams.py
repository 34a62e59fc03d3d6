"""Event streams for callers: who may see which events, and how many streams may be open.

The SSE and WebSocket routes only carry what a stream yields; the decisions are here.
Admins see every event, everyone else the events they own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from stockade.errors import Unavailable
from stockade.events import Event, EventBus, Subscription
from stockade.metrics import Metrics
from stockade.services.principal import Principal

MAX_STREAMS = 512


class EventStream:
    """One caller's open stream. Iterate it for event bodies; close it when done."""

    def __init__(self, service: StreamService, sub: Subscription, principal: Principal) -> None:
        self._service = service
        self._sub = sub
        self._principal = principal

    def __aiter__(self) -> AsyncIterator[dict[str, object]]:
        return self._visible()

    async def _visible(self) -> AsyncIterator[dict[str, object]]:
        async for event in self._sub:
            if self._sees(event):
                body = event.to_json()
                if event.dropped:
                    body["dropped"] = event.dropped
                yield body

    def _sees(self, event: Event) -> bool:
        """Admins see everything, users their own events; a key limited to named
        environments sees only those environments' sandbox events."""
        principal = self._principal
        if principal.permissions is not None:
            return (
                event.owner == principal.user_id
                and event.type.startswith("sandbox.")
                and str(event.data.get("id")) in principal.permissions
            )
        return principal.is_admin or event.owner == principal.user_id

    def close(self) -> None:
        self._service.closed(self._sub)


class StreamService:
    def __init__(self, events: EventBus, metrics: Metrics, limit: int = MAX_STREAMS) -> None:
        self._events = events
        self._metrics = metrics
        self.limit = limit

    def open(self, principal: Principal, types: list[str]) -> EventStream:
        """A stream of the events ``principal`` may see whose type starts with one of
        ``types`` (all when empty); Unavailable when ``limit`` streams are open."""
        if self._events.subscriber_count >= self.limit:
            raise Unavailable(f"Too many open event streams (limit {self.limit}); try again later")
        self._metrics.event_subscribers.inc()
        return EventStream(self, self._events.subscribe(types), principal)

    def closed(self, sub: Subscription) -> None:
        sub.close()
        self._metrics.event_subscribers.dec()
