"""Rate limits per principal and per category, on the `limits` library.

Categories and defaults follow seed 004 (auth 10/min, creation 20/min, exec 100/min,
other 200/min); an authenticated caller is also held to seed 000's per-token ceiling.
A route names its category with ``openapi_extra={"x-rate-limit-category": ...}``; an
undeclared POST to a collection is ``creation`` and everything else ``other``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from limits import RateLimitItem, aio, parse_many
from limits.storage import Storage, storage_from_string
from starlette.routing import BaseRoute

from stockade.errors import RateLimited
from stockade.settings import Settings

Category = Literal["auth", "creation", "exec", "other"]
CATEGORY_KEY = "x-rate-limit-category"


@dataclass(frozen=True, slots=True)
class Quota:
    """What the ``X-RateLimit-*`` headers report."""

    limit: int
    remaining: int
    reset_at: float

    @property
    def reset(self) -> int:
        """The Unix time (whole seconds) at which the window resets."""
        return math.ceil(self.reset_at)

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"x-ratelimit-limit", str(self.limit).encode()),
            (b"x-ratelimit-remaining", str(self.remaining).encode()),
            (b"x-ratelimit-reset", str(self.reset).encode()),
        ]


class RateLimitExceeded(RateLimited):
    """Rate limit exceeded; retry after the time in Retry-After."""

    def __init__(self, category: str, quota: Quota) -> None:
        retry = max(1, math.ceil(quota.reset_at - time.time()))
        super().__init__(
            f"Rate limit for {category} requests exceeded; retry in {retry} s", retry_after=retry
        )
        self.quota = quota
        self.category = category


def category_of(method: str, route: BaseRoute | None) -> Category:
    """The category a request is charged to."""
    extra: dict[str, Any] = getattr(route, "openapi_extra", None) or {}
    declared = extra.get(CATEGORY_KEY)
    if declared in ("auth", "creation", "exec", "other"):
        return declared  # type: ignore[no-any-return]
    path: str = getattr(route, "path", "")
    if method == "POST" and path and not path.endswith("}"):
        return "creation"
    return "other"


class RateLimiter:
    """Charges requests against per-category fixed windows, keyed by principal or address.

    In memory (the default) it works on ``limits``' ``MemoryStorage`` directly: the
    fixed-window rule is one comparison (``incr(key) <= amount``), and each item's key
    prefix is built once instead of on every request. The plain storage is used, not
    the asyncio one, whose expiry task walks every key on each request. Any other
    storage does network I/O and goes through ``limits.aio``'s fixed-window strategy.
    """

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        uri = settings.rate_limit_storage
        self._memory: Storage | None = None
        self._remote: aio.strategies.FixedWindowRateLimiter | None = None
        if uri.startswith("memory://"):
            storage = storage_from_string(uri)
            assert isinstance(storage, Storage)
            self._memory = storage
        else:
            uri = uri if uri.startswith("async+") else f"async+{uri}"
            self._remote = aio.strategies.FixedWindowRateLimiter(storage_from_string(uri))
        self._categories: dict[str, list[RateLimitItem]] = {
            "auth": parse_many(settings.rate_limit_auth),
            "creation": parse_many(settings.rate_limit_creation),
            "exec": parse_many(settings.rate_limit_exec),
            "other": parse_many(settings.rate_limit_other),
        }
        self._token = parse_many(settings.rate_limit_token)
        # By id: a RateLimitItem computes its hash anew on every lookup.
        every = [item for items in self._categories.values() for item in items] + self._token
        self._prefixes = {id(item): item.key_for("") for item in every}

    async def hit(self, category: Category, key: str, *, per_token: bool = False) -> Quota:
        """Charge one request; RateLimitExceeded when a window is full.

        The quota returned (and reported in the headers) is the category's first window,
        as seed 004 documents; a 429 reports the window that refused.
        """
        items: list[tuple[str, RateLimitItem]] = [
            (category, item) for item in self._categories[category]
        ]
        if per_token:
            items += [("token", item) for item in self._token]
        first_scope, first = items[0]
        if not self.enabled:
            return Quota(first.amount, first.amount, time.time() + first.get_expiry())
        for scope, item in items:
            if not await self._hit(item, f"{scope}|{key}"):
                raise RateLimitExceeded(category, await self._quota(item, scope, key))
        return await self._quota(first, first_scope, key)

    async def peek(self, category: Category, key: str) -> Quota:
        """The quota without charging, for responses no route handled."""
        return await self._quota(self._categories[category][0], category, key)

    async def _quota(self, item: RateLimitItem, scope: str, key: str) -> Quota:
        identifier = f"{scope}|{key}"
        if self._memory is not None:
            name = self._prefixes[id(item)] + identifier
            used = self._memory.get(name)
            return Quota(item.amount, max(0, item.amount - used), self._memory.get_expiry(name))
        assert self._remote is not None
        stats = await self._remote.get_window_stats(item, identifier)
        return Quota(item.amount, max(0, stats.remaining), stats.reset_time)

    async def _hit(self, item: RateLimitItem, identifier: str) -> bool:
        if self._memory is not None:
            name = self._prefixes[id(item)] + identifier
            return self._memory.incr(name, item.get_expiry()) <= item.amount
        assert self._remote is not None
        return bool(await self._remote.hit(item, identifier))
