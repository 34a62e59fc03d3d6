"""The benchmarks' one reader of the daemon's event stream (``GET /api/v1/events``): read
in a thread with http.client, so that a timed request on the main thread is never held
up by it. Subclasses keep what they need in ``keep`` (called under the lock)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx


class EventReader:
    """One SSE stream of the event ``types``; ``start()`` returns once the daemon has
    subscribed it, ``wait(ready)`` blocks until ``ready()`` holds, ``close()`` hangs up."""

    def __init__(self, url: str, headers: dict[str, str], types: Iterable[str]) -> None:
        address = httpx.URL(url)
        self._http = http.client.HTTPConnection(address.host, address.port, timeout=None)
        self._path = "/api/v1/events?" + "&".join(f"type={t}" for t in types)
        self._headers = {**headers, "Accept": "text/event-stream"}
        self._changed = threading.Condition()
        self._ready = threading.Event()
        self._closing = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="sse", daemon=True)

    def keep(self, received: float, body: dict[str, Any]) -> None:
        """Store one event: ``received`` is the time.time() its data line was read and
        ``body`` the event, ``{id, type, timestamp, data}``."""
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the event stream did not open")
        if self.error is not None:
            raise RuntimeError(f"the event stream failed: {self.error}")

    def _read(self) -> None:
        try:
            self._http.request("GET", self._path, headers=self._headers)
            response = self._http.getresponse()
            if response.status != 200:
                raise RuntimeError(f"GET {self._path} answered {response.status}")
            self._ready.set()  # the route subscribes before it answers
            while True:
                line = response.readline()
                if not line:
                    raise EOFError("the daemon ended the event stream")
                if not line.startswith(b"data:"):
                    continue
                received = time.time()
                body = json.loads(line[5:])
                with self._changed:
                    self.keep(received, body)
                    self._changed.notify_all()
        except (
            OSError,
            EOFError,
            ValueError,
            KeyError,
            RuntimeError,
            http.client.HTTPException,
        ) as exc:
            if not self._closing:
                self.error = exc
        finally:
            self._ready.set()
            with self._changed:
                self._changed.notify_all()

    def wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``ready()`` (called under the lock) holds, up to ``timeout`` s;
        False when it did not, or the stream failed."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None or not self._thread.is_alive():
                    return False
                self._changed.wait(min(left, 1.0))
            return True

    def close(self) -> None:
        """Hang up before the daemon stops (a stream still open when it shuts down makes
        uvicorn log "ASGI callable returned without completing response")."""
        self._closing = True
        sock = self._http.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv
        self._thread.join(timeout=2.0)
        self._http.close()
