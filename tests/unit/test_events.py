"""The in-process event bus."""

from __future__ import annotations

import anyio

from stockade.events import EventBus


async def test_subscribers_get_matching_events_in_order() -> None:
    bus = EventBus()
    keys = bus.subscribe(["apikey."])
    everything = bus.subscribe()
    bus.publish("auth.login", {"n": 1})
    bus.publish("apikey.created", {"n": 2})
    bus.publish("apikey.revoked", {"n": 3})
    with anyio.fail_after(1):
        assert [(await keys.get()).data["n"] for _ in range(2)] == [2, 3]
        assert [(await everything.get()).data["n"] for _ in range(3)] == [1, 2, 3]


async def test_a_slow_subscriber_loses_the_oldest_and_is_told() -> None:
    bus = EventBus(queue_size=2)
    sub = bus.subscribe()
    for n in range(5):
        bus.publish("tick", {"n": n})
    with anyio.fail_after(1):
        first = await sub.get()
        second = await sub.get()
    assert (first.data["n"], first.dropped) == (3, 3)
    assert (second.data["n"], second.dropped) == (4, 0)


async def test_closed_subscriptions_stop_receiving() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    assert bus.subscriber_count == 1
    sub.close()
    assert bus.subscriber_count == 0
    event = bus.publish("tick", {})
    assert event.id == 1
    assert event.to_json()["timestamp"].endswith("Z")
