"""The HTTP/1.1 protocol the daemon serves: uvicorn's httptools protocol, with a bound
on the size of a request's head (its request line and headers).

Without it a client could send a head of any size before the app sees anything, and
the parser gathers a header by concatenating what arrives: a 32 MiB header held the
event loop, and so every other client, for over a second, and the daemon's memory grew
with it. A head that passes ``MAX_HEAD_BYTES`` still incomplete is answered with 431
and the connection closed. Bytes that arrive with the end of a head are not counted, so
the bound is exact only to within one read from the socket.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
REFUSED_LINGER_SECONDS = 5.0


class BoundedHeadProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` refusing a request head over ``MAX_HEAD_BYTES``."""

    max_head = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._refused = False

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # what the client still sends after the 431, until it closes
        super().data_received(data)
        if not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head:
            self._refuse_head()

    def _refuse_head(self) -> None:
        detail = f"Request line and headers are larger than the limit of {self.max_head} bytes"
        body = json.dumps(
            {
                "type": "urn:stockade:error:header_too_large",
                "title": "Request Header Fields Too Large",
                "status": 431,
                "detail": detail,
                "error": "header_too_large",
                "message": detail,
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/problem+json\r\n"
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
