"""Issue 7's abuse checks, against a real daemon process with its default limits.

One daemon serves the module. Only its ``auth`` window is raised, so that the many
refused credentials below are each answered for what they are rather than with a 429
(that window has tests of its own in tests/api/test_ratelimit.py); every other limit,
the body limit and the cap on open event streams are the defaults a user gets. Each
check sends its traffic to 127.0.0.1 only, in bounded counts.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from fastapi.routing import APIRoute
from websockets.sync.client import connect as ws_connect

from stockade.api.app import create_app
from stockade.services.streams import MAX_STREAMS
from stockade.settings import Settings
from stockade.testing import (
    ADMIN_PASSWORD,
    JWT_SECRET,
    Daemon,
    basic_auth,
    bearer,
    daemon_process,
    make_settings,
    wait_until,
)
from tests.principals import forged_jwt, login, make_user

OTHER_SECRET = "another-secret-that-is-long-enough-0123456789"
DEFAULTS = Settings(home=Path("/nonexistent/stockade-home"))


@dataclass
class Target:
    daemon: Daemon
    client: httpx.Client
    admin: str  # a JWT

    @property
    def port(self) -> int:
        return int(self.daemon.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        return self.daemon.process.pid

    def healthy(self) -> bool:
        return self.client.get("/health").status_code == 200

    def assert_no_server_error_logged(self) -> None:
        log = self.daemon.output()
        assert "Traceback" not in log, log[-3000:]
        assert " 500 " not in log, log[-3000:]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    home = tmp_path_factory.mktemp("abuse") / "home"
    env = {
        "STOCKADE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "STOCKADE_JWT_SECRET": JWT_SECRET,
        "STOCKADE_RATE_LIMIT_AUTH": "100000/minute",
        "STOCKADE_SANDBOX_POOL": "0",
        "STOCKADE_JOBS_AUTOSTART": "false",
    }
    with ExitStack() as stack:
        with usual_open_files_limit():
            daemon = stack.enter_context(daemon_process(home, env=env))
        client = stack.enter_context(httpx.Client(base_url=daemon.url, timeout=30))
        yield Target(daemon, client, login(client, "admin", ADMIN_PASSWORD))


@contextmanager
def usual_open_files_limit() -> Iterator[None]:
    """Start the daemon with the soft limit on open files most service managers give
    (1024): the daemon must raise it itself. The limit is this process's again once
    the daemon has started."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, soft), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_daemon_raises_its_open_files_limit(target: Target) -> None:
    """Started with a soft limit of 1024, it runs with its hard limit: a thousand streams
    need more (below), and it dropped connections unanswered at 1024."""
    limits = Path(f"/proc/{target.pid}/limits").read_text().splitlines()
    [line] = [line for line in limits if line.startswith("Max open files")]
    soft, hard = line.split()[3:5]
    assert soft == hard, line
    assert int(soft) > 2 * STREAMS, line


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def raw_exchange(port: int, request: bytes, *, within: float = 10.0) -> tuple[int, bytes]:
    """Send ``request`` as is on a new connection; the status and the body answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(within):
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            body = await reader.readexactly(length) if length else b""
            return status, body
    finally:
        writer.close()


# Bodies.


def test_an_oversized_body_is_refused_with_413(target: Target) -> None:
    limit = DEFAULTS.max_body_bytes
    headers = bearer(target.admin) | {"content-type": "application/json"}
    declared = target.client.post(
        "/api/v1/environments", content=b"x" * (limit + 1), headers=headers
    )
    assert declared.status_code == 413, declared.text
    assert f"limit of {limit} bytes" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    chunked = target.client.post("/api/v1/environments", content=chunks(), headers=headers)
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413, chunked.text
    # A body just under the limit is read and judged for what it is.
    under = target.client.post("/api/v1/environments", content=b"{", headers=headers)
    assert under.status_code == 400, under.text
    assert target.healthy()


@pytest.mark.parametrize("length", [b"99999999999999999999999", b"-1", b"12, 13", b"0x10"], ids=str)
def test_a_lying_content_length_is_a_400(target: Target, length: bytes) -> None:
    request = (
        b"POST /api/v1/environments HTTP/1.1\r\nHost: stockade\r\n"
        + f"Authorization: Bearer {target.admin}\r\n".encode()
        + b"Content-Length: "
        + length
        + b"\r\n\r\n{}"
    )
    status, _ = asyncio.run(raw_exchange(target.port, request))
    assert status == 400


@pytest.mark.parametrize("part", ["header", "url"])
def test_an_oversized_request_head_is_a_431_and_holds_no_one_up(target: Target, part: str) -> None:
    """Its head arrives in pieces, as a slow or hostile client sends it; the daemon
    refuses it once it passes the bound (it used to gather any size, holding the event
    loop for seconds), and answers others meanwhile."""
    piece = b"a" * 65536
    start = {
        "header": b"GET /health HTTP/1.1\r\nHost: stockade\r\nX-Big: ",
        "url": b"GET /health?q=",
    }[part]

    async def scenario() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            writer.write(start)
            async with (
                asyncio.timeout(10),
                httpx.AsyncClient(base_url=target.daemon.url) as other,
            ):
                for _ in range(32):  # 2 MiB; what follows the refusal is read and dropped
                    writer.write(piece)
                    await writer.drain()
                    assert (await other.get("/health")).status_code == 200
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.read()
            return int(head.split(b" ", 2)[1]), body
        finally:
            writer.close()

    status, body = asyncio.run(scenario())
    assert status == 431
    assert b"larger than the limit of 65536 bytes" in body
    assert target.healthy()


# Pages.


def paging_routes() -> list[tuple[str, str]]:
    """(path, parameter) of every GET route that takes a page size."""
    # Building the app makes its home: a throw-away one (the routes are all it is for).
    with tempfile.TemporaryDirectory() as home:
        app = create_app(make_settings(Path(home)))
    found = []
    for route in app.routes:
        if isinstance(route, APIRoute) and "GET" in route.methods:
            for param in route.dependant.query_params:
                if param.name in ("limit", "page_size", "per_page", "size"):
                    found.append((route.path, param.name))
    return found


def test_a_page_of_ten_thousand_is_a_clear_422_on_every_paging_route(target: Target) -> None:
    routes = paging_routes()
    assert {path for path, _ in routes} >= {
        "/api/v1/environments",
        "/api/v1/tasks",
        "/daemon/tasks/{task_id}/history",
    }
    job = target.client.post(
        "/daemon/tasks/add",
        json={"task_id": "paged", "name": "Paged", "priority": "LOW", "command": "true"},
        headers=bearer(target.admin),
    )
    assert job.status_code == 200, job.text
    for path, parameter in routes:
        url = path.replace("{task_id}", "paged")
        for size in (10_000, 10**30):
            response = target.client.get(
                url, params={parameter: size}, headers=bearer(target.admin)
            )
            assert response.status_code in (400, 422), (url, size, response.text)
            assert len(response.content) < 4096, (url, len(response.content))
            assert parameter in response.json()["detail"], response.text


# Slow clients.


def test_slow_loris_clients_do_not_block_others(target: Target) -> None:
    async def scenario() -> None:
        slow = [await asyncio.open_connection("127.0.0.1", target.port) for _ in range(50)]
        try:
            for _, writer in slow:  # a request line and half a header, then nothing
                writer.write(b"GET /health HTTP/1.1\r\nHost: stockade\r\nX-Slow: a")
            await asyncio.gather(*(w.drain() for _, w in slow))
            async with httpx.AsyncClient(base_url=target.daemon.url, timeout=10) as client:
                for _ in range(3):
                    for _, writer in slow:  # dribble one more byte each
                        writer.write(b"b")
                    assert (await client.get("/health")).status_code == 200
                    me = await client.get("/api/v1/auth/me", headers=bearer(target.admin))
                    assert me.status_code == 200
            # The slow clients still get their answer once they finish.
            _, (reader, writer) = None, slow[0]
            writer.write(b"\r\n\r\n")
            async with asyncio.timeout(10):
                assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        finally:
            for _, writer in slow:
                writer.close()

    asyncio.run(scenario())


async def answer_while_dribbling(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dribble: bytes
) -> tuple[int, bytes]:
    """Write ``dribble`` every 0.2 s until the daemon answers; the status, and all it
    sent until it closed the connection."""
    received = b""
    async with asyncio.timeout(30):
        while b"\r\n\r\n" not in received:
            if dribble:
                writer.write(dribble)
            try:
                chunk = await asyncio.wait_for(reader.read(4096), 0.2)
            except TimeoutError:
                continue
            assert chunk, f"closed without an answer after {received!r}"
            received += chunk
        received += await reader.read()  # to the end: the daemon closes
    return int(received.split(b" ", 2)[1]), received


def test_a_head_slower_than_its_timeout_is_a_408_and_its_connection_is_closed(
    tmp_path: Path,
) -> None:
    env = {
        "STOCKADE_HEAD_TIMEOUT_SECONDS": "1",
        "STOCKADE_SANDBOX_POOL": "0",
        "STOCKADE_JOBS_AUTOSTART": "false",
    }
    with daemon_process(tmp_path / "home", env=env) as daemon:
        port = int(daemon.url.rsplit(":", 1)[1])

        async def scenario() -> None:
            silent = await asyncio.open_connection("127.0.0.1", port)
            dribbling = await asyncio.open_connection("127.0.0.1", port)
            dribbling[1].write(b"GET /health HTTP/1.1\r\nHost: stockade\r\nX-Slow: a")
            kept = await asyncio.open_connection("127.0.0.1", port)
            try:
                # A kept-alive connection is timed from its next request's first byte.
                kept[1].write(b"GET /health HTTP/1.1\r\nHost: stockade\r\n\r\n")
                async with asyncio.timeout(10):
                    head = await kept[0].readuntil(b"\r\n\r\n")
                    assert head.startswith(b"HTTP/1.1 200")
                    length = head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]
                    await kept[0].readexactly(int(length))
                kept[1].write(b"GET /health HTTP/1.1\r\n")
                answers = await asyncio.gather(
                    answer_while_dribbling(*silent, b""),
                    answer_while_dribbling(*dribbling, b"b"),  # each byte is not a new second
                    answer_while_dribbling(*kept, b"X-Slow: b\r\n"),
                )
            finally:
                for _, writer in (silent, dribbling, kept):
                    writer.close()
            for status, received in answers:
                assert status == 408
                assert b"connection: close" in received
                assert b'"error": "request_timeout"' in received
                assert b"did not arrive within 1 s" in received
            # Meanwhile, and after, others are served.
            async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
                assert (await client.get("/health")).status_code == 200

        asyncio.run(scenario())
        assert "Traceback" not in daemon.output()


# Open streams.

STREAM_KEYS = 12  # each key opens fewer streams than its per-second and per-minute windows
STREAMS = 1008


def sse_request(key: str) -> bytes:
    return (
        f"GET /api/v1/events HTTP/1.1\r\nHost: stockade\r\nAuthorization: Bearer {key}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()


def ws_request(key: str, path: str = "/api/v1/events/ws") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: stockade\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()


def test_a_thousand_streams_are_capped_with_a_503_and_leave_nothing_behind(
    target: Target,
) -> None:
    streamer = make_user(target.client, target.admin, "streamer", "streamer-password-1")
    keys = []
    for _ in range(STREAM_KEYS):
        made = target.client.post("/api/v1/api-keys", json={}, headers=bearer(streamer))
        assert made.status_code == 201, made.text
        keys.append(made.json()["key"])
    assert (STREAMS / STREAM_KEYS) < 100  # under each key's 100/second

    async def warm_up() -> None:
        # Concurrent reads fill the store's connection pool (5 SQLite connections kept),
        # so that the count below starts from the daemon's steady state.
        async with httpx.AsyncClient(base_url=target.daemon.url, timeout=30) as client:
            await asyncio.gather(
                *(client.get("/api/v1/tasks", headers=bearer(key)) for key in keys * 3)
            )

    asyncio.run(warm_up())
    before = fd_count(target.pid)

    async def scenario() -> None:
        async def open_one(n: int) -> tuple[str, int, bytes, asyncio.StreamWriter]:
            key = keys[n % STREAM_KEYS]
            kind = "sse" if n % 2 else "ws"
            reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
            writer.write(sse_request(key) if kind == "sse" else ws_request(key))
            async with asyncio.timeout(30):
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                body = b""
                if status >= 400:
                    length = [
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ]
                    body = await reader.readexactly(length[0])
            return kind, status, body, writer

        opened = await asyncio.gather(*(open_one(n) for n in range(STREAMS)))
        try:
            statuses: dict[tuple[str, int], int] = {}
            for kind, status, _, _ in opened:
                statuses[kind, status] = statuses.get((kind, status), 0) + 1
            accepted = statuses.get(("sse", 200), 0) + statuses.get(("ws", 101), 0)
            refused = statuses.get(("sse", 503), 0) + statuses.get(("ws", 503), 0)
            assert accepted == MAX_STREAMS, statuses
            assert refused == STREAMS - MAX_STREAMS, statuses
            assert statuses.get(("ws", 503)), statuses
            assert statuses.get(("sse", 503)), statuses
            for _, status, body, _ in opened:
                if status == 503:
                    assert f"Too many open event streams (limit {MAX_STREAMS})".encode() in body
            # Meanwhile the daemon answers everyone else.
            async with httpx.AsyncClient(base_url=target.daemon.url, timeout=10) as client:
                assert (await client.get("/health")).status_code == 200
                listed = await client.get("/api/v1/environments", headers=bearer(target.admin))
                assert listed.status_code == 200
        finally:
            for *_, writer in opened:
                writer.close()

    asyncio.run(scenario())
    # Once they are closed, the daemon gives back what they held.
    wait_until(lambda: fd_count(target.pid) <= before + 5, timeout=15)
    held = Counter(
        os.readlink(f"/proc/{target.pid}/fd/{fd}").split("[")[0]
        for fd in os.listdir(f"/proc/{target.pid}/fd")
    )
    assert fd_count(target.pid) <= before + 5, (before, sorted(held.items()))
    with httpx.stream(
        "GET", f"{target.daemon.url}/api/v1/events", headers=bearer(keys[0]), timeout=10
    ) as again:
        assert again.status_code == 200
    assert target.healthy()


# Floods.


def test_a_flood_of_sandbox_creates_is_limited_with_429_never_5xx(target: Target) -> None:
    flooder = make_user(target.client, target.admin, "flooder", "flooder-password-1")
    allowed = int(DEFAULTS.rate_limit_creation.split("/")[0])

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=target.daemon.url, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/api/v1/environments",
                        json={"name": f"flood-{n}", "command": ["sleep", "60"]},
                        headers=bearer(flooder),
                    )
                    for n in range(allowed * 2)
                )
            )

    responses = asyncio.run(flood())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * allowed + [429] * allowed, statuses
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) > 0
            assert response.json()["error"] == "rate_limited", response.text
    for response in responses:
        if response.status_code == 201:
            env_id = response.json()["id"]
            gone = target.client.delete(
                f"/api/v1/environments/{env_id}", params={"force": True}, headers=bearer(flooder)
            )
            assert gone.status_code == 204, gone.text
    assert target.healthy()


# Credentials. A refusal is a 400 (the request is not HTTP), a 401, or a 431 for a head
# over the daemon's bound (a megabyte-long token, say).
REFUSALS = (400, 401, 431)


def jwt_cases(user_id: str) -> dict[str, str]:
    now = datetime.now(UTC)
    good = {"sub": user_id, "iss": "stockade", "iat": now, "exp": now + timedelta(hours=1)}

    def signed(claims: dict[str, Any], secret: str = JWT_SECRET, **header: Any) -> str:
        return jwt.encode(claims, secret, algorithm="HS256", headers=header or None)

    epoch = {k: int(v.timestamp()) if isinstance(v, datetime) else v for k, v in good.items()}
    return {
        "bad signature": signed(good, OTHER_SECRET),
        "alg none": forged_jwt(epoch, {"alg": "none", "typ": "JWT"}),
        "alg none with a signature": forged_jwt(epoch, {"alg": "none"}, "c2ln"),
        "alg HS512": jwt.encode(good, JWT_SECRET * 2, algorithm="HS512"),
        "alg RS256 header": forged_jwt(epoch, {"alg": "RS256", "typ": "JWT"}, "c2ln"),
        "expired": signed(good | {"exp": now - timedelta(seconds=5)}),
        "not yet valid": signed(good | {"nbf": now + timedelta(hours=1)}),
        "wrong issuer": signed(good | {"iss": "someone-else"}),
        "an audience": signed(good | {"aud": "another-service"}),
        "no expiry": signed({k: v for k, v in good.items() if k != "exp"}),
        "no subject": signed({k: v for k, v in good.items() if k != "sub"}),
        "unknown subject": signed(good | {"sub": "user-that-does-not-exist"}),
        "subject not a string": signed(good | {"sub": {"id": user_id}}),
        "exp not a number": forged_jwt(epoch | {"exp": "tomorrow"}, {"alg": "HS256"}, "c2ln"),
        "payload not an object": "eyJhbGciOiJIUzI1NiJ9.WzEsMl0.c2ln",
        "header not JSON": "bm90LWpzb24.e30.c2ln",
        "garbage": "not-a-jwt",
        "two dots only": "..",
        "four parts": "a.b.c.d",
        "bad base64": "e30.@@@.c2ln",
        "huge": signed(good | {"pad": "x" * 1_000_000}, OTHER_SECRET),
        "huge garbage": "a" * 2_000_000,
        # Signed with another secret, naming where a key could be found: never looked up.
        "kid traversal": signed(good, OTHER_SECRET, kid="../../../../etc/passwd"),
        "jku": signed(good, OTHER_SECRET, jku="http://127.0.0.1:1/keys"),
    }


def credential_cases(target: Target) -> dict[str, list[tuple[str, str]]]:
    """Header lists (several headers of one name are allowed) that must be refused."""
    me = target.client.get("/api/v1/auth/me", headers=bearer(target.admin)).json()
    key = target.client.post("/api/v1/api-keys", json={}, headers=bearer(target.admin)).json()
    revoked = target.client.post("/api/v1/api-keys", json={}, headers=bearer(target.admin)).json()
    gone = target.client.delete(f"/api/v1/api-keys/{revoked['id']}", headers=bearer(target.admin))
    assert gone.status_code == 204
    valid = f"Bearer {target.admin}"

    def basic(raw: bytes) -> str:
        return "Basic " + base64.b64encode(raw).decode()

    cases: dict[str, list[tuple[str, str]]] = {
        f"jwt {name}": [("Authorization", f"Bearer {token}")]
        for name, token in jwt_cases(me["id"]).items()
    }
    cases |= {
        "key unknown": [("Authorization", "Bearer stk_" + "A" * 43)],
        "key revoked": [("Authorization", f"Bearer {revoked['key']}")],
        "key truncated": [("Authorization", f"Bearer {key['key'][:-4]}")],
        "key huge": [("Authorization", "Bearer stk_" + "A" * 1_000_000)],
        "key prefix only": [("Authorization", "Bearer stk_")],
        "basic wrong password": [("Authorization", basic(b"admin:wrong-password"))],
        "basic no colon": [("Authorization", basic(b"admin"))],
        "basic not base64": [("Authorization", "Basic !!!!")],
        "basic not utf-8": [("Authorization", basic(b"\xff\xfe:\xff"))],
        "basic huge": [("Authorization", basic(b"admin:" + b"p" * 1_000_000))],
        "basic with a key as password": [("Authorization", basic(f"admin:{key['key']}".encode()))],
        "bearer with spaces": [("Authorization", f"Bearer {target.admin} extra")],
        "unknown scheme": [("Authorization", f"Token {target.admin}")],
        "scheme only": [("Authorization", "Bearer")],
        "two headers, the valid one first": [
            ("Authorization", valid),
            ("Authorization", "Bearer garbage"),
        ],
        "two headers, the valid one last": [
            ("Authorization", "Bearer garbage"),
            ("Authorization", valid),
        ],
        "two valid headers": [("Authorization", valid), ("Authorization", valid)],
        "jwt and basic": [("Authorization", valid), ("Authorization", basic(b"admin:x"))],
    }
    return cases


def test_malformed_credentials_in_every_form_are_refused(target: Target) -> None:
    wrong = []
    for name, headers in credential_cases(target).items():
        response = target.client.get("/api/v1/auth/me", headers=headers)
        if response.status_code not in REFUSALS:
            wrong.append(f"{name}: {response.status_code} {response.text[:200]}")
        elif response.headers["content-type"] != "application/problem+json":
            wrong.append(f"{name}: {response.headers['content-type']}")
    assert not wrong, "\n".join(wrong)
    assert target.healthy()
    target.assert_no_server_error_logged()


INJECTIONS = {
    "CR in the value": b"Authorization: Bearer abc\rX-Injected: 1\r\n",
    "LF in the value": b"Authorization: Bearer abc\nX-Injected: 1\r\n",
    "CRLF then a second request": b"Authorization: Bearer abc\r\n\r\nGET /health HTTP/1.1\r\n",
    "NUL in the value": b"Authorization: Bearer a\x00bc\r\n",
    "NUL in basic": b"Authorization: Basic YWRtaW4AOng=\r\n",
    "DEL and controls": b"Authorization: Bearer a\x7f\x01\x1b[31mb\r\n",
    "non-ASCII": "Authorization: Bearer héllo\r\n".encode(),
    "obsolete line folding": b"Authorization: Bearer\r\n abc\r\n",
    "space before the colon": b"Authorization : Bearer abc\r\n",
    "very long value": b"Authorization: Bearer " + b"a" * 100_000 + b"\r\n",
    "very many headers": b"".join(b"X-%d: 1\r\n" % i for i in range(5000))
    + b"Authorization: Bearer abc\r\n",
}


@pytest.mark.parametrize("name", list(INJECTIONS))
def test_header_injection_is_refused(target: Target, name: str) -> None:
    request = b"GET /api/v1/auth/me HTTP/1.1\r\nHost: stockade\r\n" + INJECTIONS[name] + b"\r\n"
    status, _ = asyncio.run(raw_exchange(target.port, request))
    assert status in REFUSALS, status
    assert target.healthy()


WS_PATHS = ("/api/v1/events/ws", "/daemon/ws")
PROTOCOL = "Sec-WebSocket-Protocol"


def subprotocol(credential: str) -> dict[str, Any]:
    """Seed 004's browser form, ``['Authorization', credential]``, written by hand: the
    client library refuses to send a subprotocol with a space in it."""
    return {"additional_headers": {PROTOCOL: f"Authorization, {credential}"}}


def test_websockets_refuse_malformed_credentials_in_every_form(target: Target) -> None:
    base = target.daemon.url.replace("http", "ws", 1)
    me = target.client.get("/api/v1/auth/me", headers=bearer(target.admin)).json()
    tokens = {name: token for name, token in jwt_cases(me["id"]).items() if len(token) < 8000}
    tokens |= {"key unknown": "stk_" + "A" * 43, "empty": ""}
    attempts: list[tuple[str, dict[str, Any]]] = []
    for name, token in tokens.items():
        attempts.append((f"header {name}", {"additional_headers": bearer(token)}))
        attempts.append((f"subprotocol {name}", subprotocol(f"Bearer {token}")))
    valid = f"Bearer {target.admin}"
    attempts += [
        # A token in the query string is not a credential form: it must not let anyone in.
        ("query token", {"query": f"?token={target.admin}"}),
        ("query access_token", {"query": f"?access_token={target.admin}"}),
        ("subprotocol with another scheme", subprotocol("Basic YWRtaW46eA==")),
        (
            "subprotocol not first",
            {"additional_headers": {PROTOCOL: f"chat, Authorization, {valid}"}},
        ),
        (
            "two Authorization headers",
            {"additional_headers": [("Authorization", valid), ("Authorization", "Bearer x")]},
        ),
        ("basic wrong password", {"additional_headers": basic_auth("admin", "nope")}),
    ]
    wrong = []
    for path in WS_PATHS:
        for name, options in attempts:
            url = base + path + options.get("query", "")
            given = {k: v for k, v in options.items() if k != "query"}
            try:
                with ws_connect(url, open_timeout=10, **given):
                    wrong.append(f"{path} {name}: accepted")
            except websockets.exceptions.InvalidStatus as refused:
                if refused.response.status_code not in (*REFUSALS, 403):
                    wrong.append(f"{path} {name}: {refused.response.status_code}")
    assert not wrong, "\n".join(wrong)
    # The valid forms still get in.
    for path in WS_PATHS:
        with ws_connect(base + path, additional_headers=bearer(target.admin), open_timeout=10):
            pass
    assert target.healthy()
