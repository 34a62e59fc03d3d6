"""A short-lived cache of store records with single-flight loading.

Every request reads its caller's user (and key); without a cache that is a database round
trip each time. When an entry expires under load, dozens of concurrent requests miss at
once: single flight makes them share one load instead of stampeding the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecordCache(Generic[K, V]):
    def __init__(self, size: int, ttl: float) -> None:
        self._values: TTLCache[K, V] = TTLCache(size, ttl)
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def get(self, key: K, load: Callable[[K], Awaitable[V]]) -> V:
        """The cached value for ``key``, or the result of ``load(key)``, shared by every
        caller that asks while it runs."""
        try:
            return self._values[key]
        except KeyError:
            pass
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(load(key))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        # One caller's cancellation must not cancel the load the others wait on.
        return await asyncio.shield(loading)

    def _loaded(self, key: K, done: asyncio.Future[V]) -> None:
        self._loading.pop(key, None)
        if not done.cancelled() and done.exception() is None:
            self._values[key] = done.result()

    def put(self, key: K, value: V) -> None:
        self._values[key] = value

    def clear(self) -> None:
        self._values.clear()
