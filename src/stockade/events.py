"""An in-process event bus: services publish, and SSE, WebSockets, metrics and the audit
log subscribe.

Publishing never blocks. Each subscriber has a bounded queue; a subscriber that falls
behind loses its oldest events and is told how many through ``Event.dropped`` on the next
event it receives, so a slow browser tab can never stall the daemon.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened. ``type`` is dotted, e.g. ``auth.login`` or ``apikey.revoked``.

    ``owner`` is the id of the user the event belongs to; subscribers that are not admins
    only see their own events.
    """

    type: str
    data: dict[str, Any]
    owner: str | None = None
    id: int = 0
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    dropped: int = 0

    def to_json(self) -> dict[str, Any]:
        """The wire form used by SSE and WebSocket streams."""
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": self.timestamp.isoformat().replace("+00:00", "Z"),
            "data": self.data,
        }


class Subscription:
    """One subscriber's queue. Iterate it with ``async for``; close it when done."""

    def __init__(self, bus: EventBus, prefixes: tuple[str, ...], maxsize: int) -> None:
        self._bus = bus
        self._prefixes = prefixes
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self._dropped = 0

    def wants(self, event: Event) -> bool:
        return not self._prefixes or event.type.startswith(self._prefixes)

    def offer(self, event: Event) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._dropped += 1
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        """The next event; carries the count of events dropped since the last one."""
        event = await self._queue.get()
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            return Event(event.type, event.data, event.owner, event.id, event.timestamp, dropped)
        return event

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.get()


class EventBus:
    """Fan-out of events to subscribers, filtered by type prefix."""

    def __init__(self, queue_size: int = 256) -> None:
        self._subscribers: set[Subscription] = set()
        self._ids = itertools.count(1)
        self._queue_size = queue_size

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def publish(self, type: str, data: dict[str, Any], *, owner: str | None = None) -> Event:
        """Deliver an event to every interested subscriber, without waiting."""
        event = Event(type=type, data=data, owner=owner, id=next(self._ids))
        for sub in tuple(self._subscribers):
            if sub.wants(event):
                sub.offer(event)
        return event

    def subscribe(self, prefixes: Iterable[str] = ()) -> Subscription:
        """Receive events whose type starts with one of ``prefixes`` (all when empty)."""
        sub = Subscription(self, tuple(prefixes), self._queue_size)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
