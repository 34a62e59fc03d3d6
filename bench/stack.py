"""How much CPU Stockade's request path costs, without HTTP: ASGI calls in-process.

Not a test. It builds Stockade's app (SQLite in a temporary home, limits raised so no
429 interferes) beside the bare FastAPI floor of ``bench/floor_app.py`` and calls each
route directly through ASGI, in interleaved rounds, first one request at a time and then
32 at once. It prints the median microseconds per request and the cost relative to the
floor measured in the same round. Use it to see what a change to the middleware,
dependencies or services costs before reaching for wrk (``bench/api.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor_app import floor_app

from stockade.api.app import create_app
from stockade.services import Services
from stockade.testing import fast_passwords, make_settings

HIGH = "100000000/minute"
Call = Callable[[], Awaitable[None]]


def asgi_get(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> Call:
    """A GET of ``path`` straight into the ASGI app; fails unless it answers 200."""
    scope_headers = [(b"host", b"bench"), *headers]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call() -> None:
        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": scope_headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        await app(scope, receive, send)
        if status != [200]:
            raise RuntimeError(f"{path} answered {status}")

    return call


async def per_request(call: Call, requests: int, concurrency: int) -> float:
    """Microseconds per request, with ``concurrency`` callers at once."""

    async def caller() -> None:
        for _ in range(requests // concurrency):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return (time.perf_counter() - started) / requests * 1e6


async def run(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="stockade-stack-")) / "home"
    limits = {f"rate_limit_{c}": HIGH for c in ("auth", "creation", "exec", "other", "token")}
    settings = make_settings(home, log_level="warning", **limits)
    services = Services.build(settings, passwords=fast_passwords())
    app = create_app(settings, services=services)
    async with app.router.lifespan_context(app):
        admin = await services.store.users.get_by_username("admin")
        assert admin is not None
        token = services.auth._tokens.issue(admin.id).token
        calls = {
            "floor": asgi_get(floor_app(), "/__floor/hello", []),
            "root": asgi_get(app, "/", []),
            "health": asgi_get(app, "/health", []),
            "auth_me": asgi_get(
                app, "/api/v1/auth/me", [(b"authorization", f"Bearer {token}".encode())]
            ),
        }
        for concurrency in (1, 32):
            samples: dict[str, list[float]] = {name: [] for name in calls}
            ratios: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(args.rounds):
                this_round = {
                    name: await per_request(call, args.requests, concurrency)
                    for name, call in calls.items()
                }
                for name, micros in this_round.items():
                    samples[name].append(micros)
                    ratios[name].append(micros / this_round["floor"])
            print(
                f"\nconcurrency {concurrency}: median of {args.rounds} rounds of "
                f"{args.requests} requests"
            )
            print(f"{'name':<8} {'us/request':>11} {'x floor cost':>13} {'floor/this':>11}")
            for name in calls:
                ratio = statistics.median(ratios[name])
                print(
                    f"{name:<8} {statistics.median(samples[name]):>11.1f} "
                    f"{ratio:>13.2f} {1 / ratio:>11.0%}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=1600, help="requests per round")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
