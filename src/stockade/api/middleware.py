"""The request context every request passes through, as one pure ASGI middleware:
request id, body limit, rate-limit headers, metrics and the access log."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockade.api.errors import problem
from stockade.api.ratelimit import Quota, RateLimiter
from stockade.logs import request_id_var
from stockade.metrics import Metrics

access_log = logging.getLogger("stockade.access")

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BODY_METHODS = {"POST", "PUT", "PATCH"}


_UPLOAD_PATH = re.compile(r"/api/v1/environments/[^/]+/files")


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class RequestContext:
    """Wraps the app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        limiter: RateLimiter,
        max_body_bytes: int,
        max_upload_bytes: int | None = None,
        vary_origin: bool = False,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limiter = limiter
        self.max_body = max_body_bytes
        self.max_upload = max_upload_bytes or max_body_bytes
        self.vary_origin = vary_origin
        self._id_prefix = secrets.token_hex(12)
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else self._new_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        reset = request_id_var.set(request_id)
        started = time.perf_counter()
        status = [500]

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                quota: Quota = state.get("rate_quota") or await self.limiter.peek(
                    "other", f"ip:{client_address(scope)}"
                )
                out = list(message.get("headers", ()))
                if not any(name == b"x-request-id" for name, _ in out):
                    out.append((b"x-request-id", request_id.encode()))
                out.extend(quota.headers())
                if self.vary_origin and b"origin" not in headers:
                    out.append((b"vary", b"Origin"))
                message["headers"] = out
            elif message["type"] == "websocket.accept":
                status[0] = 101
            elif message["type"] == "websocket.http.response.start":
                status[0] = message["status"]  # refused before the upgrade, with a body
            elif message["type"] == "websocket.close" and status[0] == 500:
                status[0] = 403  # closed before the handshake completed: refused
            await send(message)

        try:
            if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
                limited = await self._limit_body(scope, headers, receive, send_with_context)
                if limited is None:
                    return
                receive = limited
            await self.app(scope, receive, send_with_context)
        finally:
            self._record(scope, status[0], time.perf_counter() - started)
            request_id_var.reset(reset)

    def _new_id(self) -> str:
        # Unique, not secret: a random per-process prefix and a counter, with no system
        # call per request (uuid4 and os.urandom each make one).
        return f"{self._id_prefix}{next(self._ids):08x}"

    async def _limit_body(
        self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> Receive | None:
        """Refuse a body over the limit with 413 before the app reads it. Returns the
        receive to use, or None when the 413 has been sent."""
        limit = self._limit_of(scope)
        declared = headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) <= limit:
                return receive
            if declared.isdigit():
                await self._too_large(scope, send, limit)
                return None
            return receive  # a malformed length is the server's to refuse
        # Chunked: buffer up to the limit, then replay to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, send, limit)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = [False]

        async def replay() -> Message:
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return replay

    def _limit_of(self, scope: Scope) -> int:
        """File uploads into a sandbox may be larger than other bodies."""
        if scope.get("method") == "PUT" and _UPLOAD_PATH.fullmatch(scope.get("path", "")):
            return self.max_upload
        return self.max_body

    async def _too_large(self, scope: Scope, send: Send, limit: int) -> None:
        response = problem(
            413,
            f"Request body is larger than the limit of {limit} bytes",
            instance=scope.get("path", ""),
            request_id=scope["state"]["request_id"],
        )
        await response(scope, _no_receive, send)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope.get("method", "WS")
        self.metrics.observe_request(method, template, status, seconds)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %d %.1fms",
                method,
                scope.get("path", ""),
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "path": scope.get("path", ""),
                    "route": template,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "client": client_address(scope),
                    "principal": scope["state"].get("principal_id"),
                },
            )


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class Cors(CORSMiddleware):
    """Starlette's CORS handling, which steps aside for requests without an ``Origin``
    header: every client that is not a browser. ``RequestContext`` still adds
    ``Vary: Origin`` to their responses, as caches need."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(k == b"origin" for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
