"""The HTTP/1.1 protocol the daemon serves: uvicorn's httptools protocol, with bounds
on the size of a request's head (its request line and headers) and on the time it takes
to arrive.

Without the size bound a client could send a head of any size before the app sees
anything, and the parser gathers a header by concatenating what arrives: a 32 MiB
header held the event loop, and so every other client, for over a second, and the
daemon's memory grew with it. A head that passes ``MAX_HEAD_BYTES`` still incomplete is
answered with 431 and the connection closed. Bytes that arrive with the end of a head
are not counted, so the bound is exact only to within one read from the socket.

Without the time bound a slow-loris client, one that opens a connection and sends its
head a byte at a time or not at all, held its connection, and its file descriptor, for
as long as it liked: enough of them would use up the daemon's open-files limit. A head
still incomplete ``head_timeout`` seconds after the connection opened, or after the
request's first byte on a kept-alive connection, is answered with 408 and the
connection closed. (Between requests, uvicorn's keep-alive timeout closes an idle
connection.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_SECONDS = 20.0
REFUSED_LINGER_SECONDS = 5.0


class BoundedHeadProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` refusing a request head over ``MAX_HEAD_BYTES``, or slower
    than ``head_timeout`` seconds."""

    max_head = MAX_HEAD_BYTES
    head_timeout = HEAD_TIMEOUT_SECONDS

    @classmethod
    def configured(cls, *, head_timeout: float) -> type[BoundedHeadProtocol]:
        """This protocol with another time bound, for uvicorn's ``http=``."""
        return type(cls.__name__, (cls,), {"head_timeout": head_timeout})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._start_head_timer()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head behind a response still being sent: the 408 would land
            # inside that response. Give the head another period.
            self._start_head_timer()
            return
        detail = f"The request line and headers did not arrive within {self.head_timeout:g} s"
        self._refuse(408, "Request Timeout", "request_timeout", detail)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what the client still sends after a 431 or 408, until it closes
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head:
            detail = f"Request line and headers are larger than the limit of {self.max_head} bytes"
            self._refuse(431, "Request Header Fields Too Large", "header_too_large", detail)

    def _refuse(self, status: int, title: str, error: str, detail: str) -> None:
        """Answer ``status`` as a problem document, then close the connection."""
        self._stop_head_timer()
        body = json.dumps(
            {
                "type": f"urn:stockade:error:{error}",
                "title": title,
                "status": status,
                "detail": detail,
                "error": error,
                "message": detail,
            }
        ).encode()
        self.transport.write(
            f"HTTP/1.1 {status} {title}\r\n".encode()
            + b"content-type: application/problem+json\r\n"
            b"connection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        # Closing at once, with the client's bytes unread, would reset the connection
        # and the client might never read the answer: end our side, drop what still
        # comes, and close when the client does (or after a few seconds).
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(REFUSED_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()
