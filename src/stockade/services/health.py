"""What ``/health`` reports: the superset of every seed's health body."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil
from sqlalchemy.exc import SQLAlchemyError

from stockade.store import Store
from stockade.version import __version__

# A load balancer may poll /health many times a second; the database and the machine's
# memory are probed at most this often, and the answers reused in between.
PROBE_SECONDS = 1.0

# Later parts of the daemon register how many sandboxes are live and which backend
# serves them; until then the daemon has none.
ActiveCount = Callable[[], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Health:
    status: str
    timestamp: datetime
    version: str
    uptime_seconds: float
    active_vms: int
    services: dict[str, str]
    capacity: dict[str, int | str]
    backends: dict[str, str]


def _gibibytes(n: int) -> str:
    return f"{n / 2**30:.1f}Gi"


class HealthService:
    def __init__(
        self, store: Store, *, llm: str = "disabled (using fallback parser)", llm_model: str = ""
    ) -> None:
        self._store = store
        self._started = time.monotonic()
        self._llm = llm
        self._llm_model = llm_model
        self.backend: Callable[[], str] = lambda: "none"
        self.backends: Callable[[], dict[str, str]] = dict
        self.active_sandboxes: ActiveCount | None = None
        self._probed_at = -PROBE_SECONDS
        self._database = "unknown"
        self._available_memory = "unknown"

    @property
    def uptime_seconds(self) -> float:
        return round(time.monotonic() - self._started, 3)

    async def check(self) -> Health:
        """Probe the database and describe the daemon and the machine."""
        database = await self._probe_database()
        active = await self.active_sandboxes() if self.active_sandboxes else 0
        return Health(
            status="healthy" if database == "ok" else "unhealthy",
            timestamp=datetime.now(UTC),
            version=__version__,
            uptime_seconds=self.uptime_seconds,
            active_vms=active,
            services={
                "api": "ok",
                "database": database,
                "store": self._store.db.dialect,
                "backend": self.backend(),
                "os": platform.system(),
                "python": platform.python_version(),
                "llm": self._llm,
                "llm_model": self._llm_model or "rules",
            },
            capacity={
                "total_nodes": 1,
                "available_cpu": str(os.cpu_count() or 1),
                "available_memory": self._available_memory,
            },
            backends=self.backends(),
        )

    async def _probe_database(self) -> str:
        if time.monotonic() - self._probed_at < PROBE_SECONDS:
            return self._database
        # Claim the probe before awaiting it: concurrent callers reuse the last answer.
        self._probed_at = time.monotonic()
        self._available_memory = _gibibytes(psutil.virtual_memory().available)
        try:
            await self._store.db.ping()
            self._database = "ok"
        except (SQLAlchemyError, OSError) as exc:
            self._database = f"error: {type(exc).__name__}"
        self._probed_at = time.monotonic()
        return self._database
