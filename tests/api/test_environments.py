"""AgentBox's environments (seed 004) and LuminaGuard's VMs (seed 000) through the app,
with real sandboxes of the ``namespace`` backend behind them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from stockade.api.app import create_app
from stockade.sandbox.cgroups import CgroupLayout
from stockade.sandbox.namespace import instance_name
from stockade.services import Services
from stockade.settings import Settings
from stockade.testing import (
    ADMIN_PASSWORD,
    TestApp,
    bearer,
    fast_passwords,
    make_settings,
    running_app,
    sandbox_event,
)
from tests.problems import assert_problem

ENVIRONMENTS = "/api/v1/environments"
VMS = "/api/v1/vms"
MISSING = "env-000000000000"
FIELDS = {"id", "name", "status", "image", "created_at", "resources", "endpoint", "namespace"}
CPU = re.compile(r"\d+m?")
MEMORY = re.compile(r"\d+(Ki|Mi|Gi|Ti)?")
MiB = 1 << 20


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Rate limits have their own tests; here they would only cap how much a test may do.
    return make_settings(tmp_path / "home", rate_limit_enabled=False)


@pytest.fixture
async def auth(admin_token: str) -> dict[str, str]:
    return bearer(admin_token)


async def create(app: TestApp, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("name", "test-env")
    response = await app.client.post(ENVIRONMENTS, json=body, headers=auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert created["status"] == "running", created
    return created


async def get(app: TestApp, auth: dict[str, str], env_id: str) -> dict[str, Any]:
    response = await app.client.get(f"{ENVIRONMENTS}/{env_id}", headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def run(
    app: TestApp, auth: dict[str, str], env_id: str, command: list[str], **extra: Any
) -> dict[str, Any]:
    response = await app.client.post(
        f"{ENVIRONMENTS}/{env_id}/exec", json={"command": command, **extra}, headers=auth
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed(app: TestApp, auth: dict[str, str], **params: Any) -> dict[str, Any]:
    response = await app.client.get(ENVIRONMENTS, params=params, headers=auth)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_for_logs(
    app: TestApp, auth: dict[str, str], env_id: str, count: int
) -> list[dict[str, Any]]:
    """The environment's log lines once there are at least ``count`` of them: waits on the
    log's own follow stream (bounded), then reads them through the route."""
    principal = await app.services.auth.authenticate(auth["Authorization"])
    lines = await app.services.sandboxes.logs(principal, env_id, tail=None, follow=True)
    with anyio.fail_after(10):
        seen = 0
        async with contextlib.aclosing(lines) as stream:
            async for _ in stream:
                seen += 1
                if seen >= count:
                    break
    response = await app.client.get(f"{ENVIRONMENTS}/{env_id}/logs", headers=auth)
    assert response.status_code == 200, response.text
    logs: list[dict[str, Any]] = response.json()["logs"]
    return logs


def host_remains(settings: Settings) -> list[str]:
    """What sandboxes of this app have on the host: workspaces and cgroup directories."""
    instance = instance_name(settings.home)
    workspaces = Path("/run/stockade") / instance / "sandboxes"
    found = [str(p) for p in workspaces.iterdir()] if workspaces.is_dir() else []
    for root in CgroupLayout.detect().roots():
        parent = root / f"stockade-{instance}"
        if parent.is_dir():
            found += [str(group) for group in parent.iterdir() if group.is_dir()]
    return found


# Create.


async def test_create_returns_every_documented_field_and_echoes_the_request(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    request = {
        "name": "my-python-env",
        "image": "host",
        "resources": {"cpu": "500m", "memory": "256Mi", "storage": "64Mi"},
        "timeout": 1800,
        "env": {"MY_VAR": "my-value"},
        "labels": {"project": "my-project", "example.com/tier": "web"},
        "command": ["sleep", "600"],
        "node_selector": {"disktype": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x"}],
        "isolation": {
            "runtime_class": "runc",
            "network_policy": {"allow_internet": False, "allowed_ingress_ports": [8080]},
            "security_context": {"run_as_user": 1000, "run_as_non_root": True},
        },
    }
    response = await stockade.client.post(ENVIRONMENTS, json=request, headers=auth)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) >= FIELDS | {"env", "labels", "command", "node_selector", "tolerations"}
    env_id = body["id"]
    assert re.fullmatch(r"env-[0-9a-f]{12}", env_id), env_id
    assert body["name"] == "my-python-env"
    assert body["status"] == "running"
    assert body["image"] == "host"
    assert body["resources"] == request["resources"]
    assert body["timeout"] == 1800
    assert body["env"] == request["env"]
    assert body["labels"] == request["labels"]
    assert body["command"] == request["command"]
    assert body["node_selector"] == request["node_selector"]
    assert body["tolerations"] == request["tolerations"]
    isolation = body["isolation"]
    assert isolation["runtime_class"] == "runc"
    assert isolation["network_policy"]["allowed_ingress_ports"] == [8080]
    assert isolation["security_context"]["run_as_user"] == 1000
    assert env_id in body["endpoint"]
    assert env_id in body["namespace"]
    created = datetime.fromisoformat(body["created_at"])
    assert created.tzinfo is not None
    assert datetime.fromisoformat(body["started_at"]) >= created
    # What create answered is what a later GET says, and the env reaches the sandbox.
    again = await get(stockade, auth, env_id)
    for key in (*FIELDS - {"status"}, "env", "labels", "command", "node_selector", "tolerations"):
        assert again[key] == body[key], key
    result = await run(stockade, auth, env_id, ["sh", "-c", 'echo "$MY_VAR"; id -u'])
    assert result["stdout"] == "my-value\n1000\n"
    response = await stockade.client.delete(f"{ENVIRONMENTS}/{env_id}", headers=auth)
    assert response.status_code == 204


async def test_create_without_resources_uses_the_defaults_and_a_one_hour_timeout(
    stockade: TestApp, settings: Settings, auth: dict[str, str]
) -> None:
    body = await create(stockade, auth, name="plain")
    assert body["resources"] == {
        "cpu": settings.sandbox_cpu,
        "memory": settings.sandbox_memory,
        "storage": settings.sandbox_storage,
    }
    assert body["timeout"] == 3600
    lifetime = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(
        body["created_at"]
    )
    assert lifetime == timedelta(seconds=3600)
    assert body["env"] == {}
    assert body["labels"] == {}
    # A partial resources object fills in the rest from the defaults.
    partial = await create(stockade, auth, name="partial", resources={"memory": "128Mi"})
    assert partial["resources"] == {
        "cpu": settings.sandbox_cpu,
        "memory": "128Mi",
        "storage": settings.sandbox_storage,
    }


async def test_the_reaper_ends_an_environment_when_its_timeout_passes(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    events = stockade.services.events.subscribe(["sandbox."])
    try:
        env_id = (await create(stockade, auth, name="short", timeout=1))["id"]
        await sandbox_event(events, "sandbox.terminated", env_id)
    finally:
        events.close()
    body = await get(stockade, auth, env_id)
    assert body["status"] == "terminated"
    assert body["metrics"] is None
    assert await stockade.services.sandboxes.active_count() == 0


# List.


async def test_list_is_newest_first_and_pages_with_limit_offset_and_total(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    ids = [(await create(stockade, auth, name=f"env-{i}"))["id"] for i in range(4)]
    newest_first = ids[::-1]
    everything = await listed(stockade, auth)
    assert [e["id"] for e in everything["environments"]] == newest_first
    assert everything["total"] == 4
    assert (everything["limit"], everything["offset"]) == (100, 0)
    assert set(everything["environments"][0]) >= FIELDS
    first = await listed(stockade, auth, limit=2, offset=0)
    second = await listed(stockade, auth, limit=2, offset=2)
    beyond = await listed(stockade, auth, limit=2, offset=4)
    assert [e["id"] for e in first["environments"]] == newest_first[:2]
    assert [e["id"] for e in second["environments"]] == newest_first[2:]
    assert beyond["environments"] == []
    assert first["total"] == second["total"] == beyond["total"] == 4
    assert (second["limit"], second["offset"]) == (2, 2)


async def test_list_filters_by_status(stockade: TestApp, auth: dict[str, str]) -> None:
    alive = (await create(stockade, auth, name="alive"))["id"]
    gone = (await create(stockade, auth, name="gone"))["id"]
    response = await stockade.client.delete(f"{ENVIRONMENTS}/{gone}", headers=auth)
    assert response.status_code == 204
    running = await listed(stockade, auth, status="running")
    terminated = await listed(stockade, auth, status="terminated")
    failed = await listed(stockade, auth, status="failed")
    assert [e["id"] for e in running["environments"]] == [alive]
    assert running["total"] == 1
    assert [e["id"] for e in terminated["environments"]] == [gone]
    assert terminated["environments"][0]["status"] == "terminated"
    assert failed == {"environments": [], "total": 0, "limit": 100, "offset": 0}
    response = await stockade.client.get(ENVIRONMENTS, params={"status": "sleepy"}, headers=auth)
    assert_problem(response, 422, error="validation_error")


async def test_list_filters_by_label_selector(stockade: TestApp, auth: dict[str, str]) -> None:
    labels = {
        "web-alpha": {"project": "alpha", "tier": "web"},
        "web-beta": {"project": "beta", "tier": "web"},
        "alpha": {"project": "alpha"},
        "bare": {},
    }
    ids = {
        name: (await create(stockade, auth, name=name, labels=v))["id"]
        for name, v in labels.items()
    }
    cases = {
        "project=alpha": {"web-alpha", "alpha"},
        "project==alpha": {"web-alpha", "alpha"},
        # As in Kubernetes, != also matches environments without the key.
        "project!=alpha": {"web-beta", "bare"},
        "tier": {"web-alpha", "web-beta"},
        "!tier": {"alpha", "bare"},
        "project=alpha,tier=web": {"web-alpha"},
        "project=alpha,!tier": {"alpha"},
        "project=alpha, tier!=web": {"alpha"},
        "project=gamma": set(),
    }
    wrong = {}
    for selector, expected in cases.items():
        body = await listed(stockade, auth, label=selector)
        got = {e["id"] for e in body["environments"]}
        want = {ids[name] for name in expected}
        if got != want or body["total"] != len(want):
            names = {v: k for k, v in ids.items()}
            wrong[selector] = (sorted(names[i] for i in got), body["total"], sorted(expected))
    assert not wrong, f"selector -> (got, total, expected): {wrong}"
    # Selectors combine with the other filters.
    body = await listed(stockade, auth, label="tier=web", limit=1)
    assert body["total"] == 2
    assert [e["id"] for e in body["environments"]] == [ids["web-beta"]]


# Get and delete.


async def test_get_has_metrics_while_running_and_none_once_terminated(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    env_id = (await create(stockade, auth, name="metered", env={"A": "1"}))["id"]
    await run(
        stockade, auth, env_id, ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"]
    )
    body = await get(stockade, auth, env_id)
    assert body["status"] == "running"
    metrics = body["metrics"]
    assert metrics is not None, body
    assert CPU.fullmatch(metrics["cpu_usage"]), metrics
    assert MEMORY.fullmatch(metrics["memory_usage"]), metrics
    assert metrics["memory_usage"] not in ("0", "0Ki"), metrics
    assert body["env"] == {"A": "1"}
    response = await stockade.client.delete(f"{ENVIRONMENTS}/{env_id}", headers=auth)
    assert response.status_code == 204
    body = await get(stockade, auth, env_id)
    assert body["status"] == "terminated"
    assert body["metrics"] is None
    assert body["finished_at"] is not None


@pytest.mark.parametrize("force", [None, "false", "true"])
async def test_delete_answers_204_twice_and_leaves_a_terminated_record(
    stockade: TestApp, settings: Settings, auth: dict[str, str], force: str | None
) -> None:
    env_id = (await create(stockade, auth, name="doomed", command=["sleep", "600"]))["id"]
    assert await stockade.services.sandboxes.active_count() == 1
    params = {} if force is None else {"force": force}
    url = f"{ENVIRONMENTS}/{env_id}"
    first = await stockade.client.delete(url, params=params, headers=auth)
    assert first.status_code == 204, first.text
    assert first.content == b""
    assert await stockade.services.sandboxes.active_count() == 0
    assert host_remains(settings) == []
    second = await stockade.client.delete(url, params=params, headers=auth)
    assert second.status_code == 204, second.text
    body = await get(stockade, auth, env_id)
    assert body["status"] == "terminated"
    assert body["metrics"] is None
    listing = await listed(stockade, auth)
    assert [(e["id"], e["status"]) for e in listing["environments"]] == [(env_id, "terminated")]
    missing = await stockade.client.delete(f"{ENVIRONMENTS}/{MISSING}", headers=auth)
    assert_problem(missing, 404, error="not_found")


# Exec.


async def test_exec_returns_output_exit_code_and_duration(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    env_id = (await create(stockade, auth, name="runner"))["id"]
    ok = await run(stockade, auth, env_id, ["sh", "-c", "echo Hello, World!"])
    assert ok["stdout"] == "Hello, World!\n"
    assert ok["stderr"] == ""
    assert ok["exit_code"] == 0
    assert isinstance(ok["duration_ms"], int)
    assert 0 <= ok["duration_ms"] < 10_000
    assert ok.get("timed_out", False) is False
    mixed = await run(stockade, auth, env_id, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (mixed["stdout"], mixed["stderr"], mixed["exit_code"]) == ("out\n", "err\n", 3)
    assert (await run(stockade, auth, env_id, ["false"]))["exit_code"] == 1
    missing = await run(stockade, auth, env_id, ["no-such-program-here"])
    assert missing["exit_code"] == 127, missing
    killed = await run(stockade, auth, env_id, ["sh", "-c", "kill -9 $$"])
    assert killed["exit_code"] == 137, killed
    # A later exec sees what an earlier one left in the sandbox.
    await run(stockade, auth, env_id, ["sh", "-c", "echo kept > note.txt"])
    assert (await run(stockade, auth, env_id, ["cat", "note.txt"]))["stdout"] == "kept\n"


async def test_exec_timeout_kills_the_whole_process_tree(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    env_id = (await create(stockade, auth, name="slow"))["id"]
    started = asyncio.get_running_loop().time()
    result = await run(
        stockade,
        auth,
        env_id,
        ["sh", "-c", "sleep 31 & sh -c 'sleep 32' & echo started; sleep 33; echo never"],
        timeout=0.5,
    )
    elapsed = asyncio.get_running_loop().time() - started
    assert result["timed_out"] is True, result
    assert result["exit_code"] == 137, result
    assert "never" not in result["stdout"]
    assert result["stdout"] == "started\n"
    assert 400 <= result["duration_ms"] < 5000, result
    assert elapsed < 5
    # Neither the command nor what it started in the background is left: the kernel's
    # process table has no event to wait on, so the sandbox watches it, bounded by
    # `timeout` (124 if a process outlived it).
    gone = "while ps -eo args | grep -q '[s]leep 3[123]'; do :; done"
    watched = await run(stockade, auth, env_id, ["timeout", "5", "sh", "-c", gone])
    assert watched["exit_code"] == 0, watched
    # The sandbox itself survives its command's timeout.
    assert (await run(stockade, auth, env_id, ["echo", "alive"]))["stdout"] == "alive\n"


async def test_exec_in_a_terminated_environment_is_a_conflict(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    env_id = (await create(stockade, auth, name="ended"))["id"]
    response = await stockade.client.delete(f"{ENVIRONMENTS}/{env_id}", headers=auth)
    assert response.status_code == 204
    response = await stockade.client.post(
        f"{ENVIRONMENTS}/{env_id}/exec", json={"command": ["true"]}, headers=auth
    )
    body = assert_problem(response, 409, error="conflict")
    assert "terminated" in str(body["detail"])
    response = await stockade.client.put(
        f"{ENVIRONMENTS}/{env_id}/files", params={"path": "x"}, content=b"x", headers=auth
    )
    assert_problem(response, 409, error="conflict")


# Logs.


async def test_logs_are_the_command_output_with_tail_and_timestamps(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    script = "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; exec sleep 600"
    env_id = (await create(stockade, auth, name="chatty", command=["sh", "-c", script]))["id"]
    logs = await wait_for_logs(stockade, auth, env_id, 6)
    assert len(logs) == 6, logs
    stdout = [entry["message"] for entry in logs if entry["stream"] == "stdout"]
    stderr = [entry["message"] for entry in logs if entry["stream"] == "stderr"]
    assert stdout == [f"line {i}" for i in range(1, 6)]
    assert stderr == ["oops"]
    for entry in logs:
        assert set(entry) == {"timestamp", "stream", "message"}, entry
        assert datetime.fromisoformat(entry["timestamp"]).tzinfo is not None
    url = f"{ENVIRONMENTS}/{env_id}/logs"
    # Without stderr in the way (its order against stdout is the pipes'), tail is exact.
    quiet = "for i in 1 2 3 4 5; do echo line $i; done; exec sleep 600"
    quiet_id = (await create(stockade, auth, name="quiet", command=["sh", "-c", quiet]))["id"]
    await wait_for_logs(stockade, auth, quiet_id, 5)
    quiet_url = f"{ENVIRONMENTS}/{quiet_id}/logs"
    response = await stockade.client.get(quiet_url, params={"tail": 2}, headers=auth)
    assert response.status_code == 200, response.text
    assert [e["message"] for e in response.json()["logs"]] == ["line 4", "line 5"]
    response = await stockade.client.get(quiet_url, params={"tail": 0}, headers=auth)
    assert response.json() == {"logs": []}
    response = await stockade.client.get(quiet_url, params={"tail": 50}, headers=auth)
    assert len(response.json()["logs"]) == 5
    response = await stockade.client.get(url, params={"timestamps": "false"}, headers=auth)
    assert response.status_code == 200, response.text
    untimed = response.json()["logs"]
    assert len(untimed) == 6
    assert all(entry.get("timestamp") is None for entry in untimed), untimed
    assert [e["message"] for e in untimed] == [e["message"] for e in logs]
    # Exec output is not part of the logs; an environment without a command has none.
    await run(stockade, auth, env_id, ["echo", "from exec"])
    assert len((await stockade.client.get(url, headers=auth)).json()["logs"]) == 6
    idle = (await create(stockade, auth, name="idle"))["id"]
    response = await stockade.client.get(f"{ENVIRONMENTS}/{idle}/logs", headers=auth)
    assert response.json() == {"logs": []}


async def sse(
    app: TestApp, path: str, query: str, token: str, count: int
) -> tuple[int, dict[str, str], list[str]]:
    """Open an SSE response straight on the ASGI app (httpx's ASGI transport would wait
    for the end of the stream), read ``count`` ``data:`` payloads, then disconnect as a
    client closing the connection does. Returns status, headers and the payloads."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"stockade.test"),
            (b"accept", b"text/event-stream"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("stockade.test", 80),
    }
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    closed = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await closed.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    task = asyncio.create_task(app.app(scope, receive, send))
    try:
        start = await asyncio.wait_for(messages.get(), 10)
        assert start["type"] == "http.response.start", start
        headers = {k.decode(): v.decode() for k, v in start["headers"]}
        if start["status"] != 200:
            return start["status"], headers, []
        buffer, payloads = "", []
        while len(payloads) < count:
            message = await asyncio.wait_for(messages.get(), 10)
            buffer += message.get("body", b"").decode()
            *events, buffer = re.split(r"\r?\n\r?\n", buffer)
            for event in events:
                payloads += [
                    line.removeprefix("data:").strip()
                    for line in event.splitlines()
                    if line.startswith("data:")
                ]
            assert message.get("more_body", False), f"the stream ended after {payloads}"
        return start["status"], headers, payloads[:count]
    finally:
        closed.set()
        await asyncio.wait_for(task, 10)


async def test_logs_follow_streams_server_sent_events(
    stockade: TestApp, admin_token: str, auth: dict[str, str]
) -> None:
    script = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"
    env_id = (await create(stockade, auth, name="ticker", command=["sh", "-c", script]))["id"]
    await wait_for_logs(stockade, auth, env_id, 3)
    path = f"{ENVIRONMENTS}/{env_id}/logs"
    status, headers, payloads = await sse(stockade, path, "follow=true&tail=1", admin_token, 4)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream"), headers
    events = [json.loads(p) for p in payloads]
    for event in events:
        assert set(event) == {"timestamp", "stream", "message"}, event
        assert event["stream"] == "stdout"
        assert datetime.fromisoformat(event["timestamp"]).tzinfo is not None
    numbers = [int(e["message"].removeprefix("tick ")) for e in events]
    # tail=1 starts at the last line written so far; the rest arrive as they are written.
    assert numbers == list(range(numbers[0], numbers[0] + 4)), numbers
    assert numbers[0] >= 3
    status, _, payloads = await sse(
        stockade, path, "follow=true&tail=1&timestamps=false", admin_token, 2
    )
    assert status == 200
    assert all(set(json.loads(p)) == {"stream", "message"} for p in payloads), payloads
    # The sandbox carries on after the client went away.
    assert (await get(stockade, auth, env_id))["status"] == "running"
    status, _, _ = await sse(
        stockade, f"{ENVIRONMENTS}/{MISSING}/logs", "follow=true", admin_token, 1
    )
    assert status == 404


# Attach.


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A started app behind starlette's TestClient, which speaks WebSocket."""
    app = create_app(settings, services=Services.build(settings, passwords=fast_passwords()))
    with TestClient(app) as test_client:
        yield test_client


def sync_login(client: TestClient) -> str:
    response = client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD}
    )
    token: str = response.json()["token"]
    return token


def test_attach_runs_an_interactive_shell_over_websocket(client: TestClient) -> None:
    token = sync_login(client)
    created = client.post(ENVIRONMENTS, json={"name": "shell"}, headers=bearer(token))
    assert created.status_code == 201, created.text
    env_id = created.json()["id"]
    url = f"{ENVIRONMENTS}/{env_id}/attach"
    with client.websocket_connect(url, subprotocols=["Authorization", f"Bearer {token}"]) as ws:
        assert ws.accepted_subprotocol == "Authorization"
        ws.send_json({"type": "stdin", "data": "echo hi\n"})
        first = ws.receive_json()
        assert first == {"type": "stdout", "data": "hi\n"}
        ws.send_json({"type": "stdin", "data": "echo oops >&2; exit 7\n"})
        rest = []
        while not rest or rest[-1]["type"] != "exit":
            rest.append(ws.receive_json())
    assert rest[-1] == {"type": "exit", "exit_code": 7}
    assert "".join(m["data"] for m in rest if m["type"] == "stderr") == "oops\n"
    assert {m["type"] for m in rest} <= {"stderr", "exit"}, rest
    # The shell ran inside the environment, which is still running.
    state = client.get(f"{ENVIRONMENTS}/{env_id}", headers=bearer(token)).json()
    assert state["status"] == "running"
    # ?command= runs something else than the shell.
    with client.websocket_connect(
        f"{url}?command=sh&command=-c&command=read x; echo got $x; exit 3",
        subprotocols=["Authorization", f"Bearer {token}"],
    ) as ws:
        ws.send_json({"type": "stdin", "data": "ping\n"})
        received = []
        while not received or received[-1]["type"] != "exit":
            received.append(ws.receive_json())
    assert "".join(m["data"] for m in received if m["type"] == "stdout") == "got ping\n"
    assert received[-1] == {"type": "exit", "exit_code": 3}
    assert client.delete(f"{ENVIRONMENTS}/{env_id}", headers=bearer(token)).status_code == 204
    # A terminated environment refuses the upgrade with a problem, as exec does.
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect(url, subprotocols=["Authorization", f"Bearer {token}"]),
    ):
        pass
    assert refused.value.status_code == 409
    assert refused.value.headers["content-type"] == "application/problem+json"
    assert refused.value.json()["error"] == "conflict"


# Files.


async def test_files_upload_download_and_list(stockade: TestApp, auth: dict[str, str]) -> None:
    env_id = (await create(stockade, auth, name="files"))["id"]
    url = f"{ENVIRONMENTS}/{env_id}/files"
    blob = bytes(range(256)) * 64
    response = await stockade.client.put(
        url, params={"path": "data/blob.bin"}, content=blob, headers=auth
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"path": "/home/sandbox/data/blob.bin", "size": len(blob)}
    response = await stockade.client.get(url, params={"path": "data/blob.bin"}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == blob
    # The same file through an absolute path, and from inside the sandbox.
    response = await stockade.client.get(
        url, params={"path": "/home/sandbox/data/blob.bin"}, headers=auth
    )
    assert response.content == blob
    assert (await run(stockade, auth, env_id, ["wc", "-c", "data/blob.bin"]))["stdout"] == (
        f"{len(blob)} data/blob.bin\n"
    )
    response = await stockade.client.put(
        url, params={"path": "data/sub/run.sh", "mode": "755"}, content=b"echo ran\n", headers=auth
    )
    assert response.status_code == 201, response.text
    assert (await run(stockade, auth, env_id, ["./data/sub/run.sh"]))["stdout"] == "ran\n"
    response = await stockade.client.put(
        url, params={"path": "/tmp/empty"}, content=b"", headers=auth
    )
    assert response.json() == {"path": "/tmp/empty", "size": 0}
    assert (
        await stockade.client.get(url, params={"path": "/tmp/empty"}, headers=auth)
    ).content == b""
    # A directory answers with its JSON listing.
    response = await stockade.client.get(url, params={"path": "data"}, headers=auth)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    listing = response.json()
    assert listing["path"] == "data"
    entries = {e["path"]: e for e in listing["entries"]}
    assert set(entries) == {"/home/sandbox/data/blob.bin", "/home/sandbox/data/sub"}, entries
    assert entries["/home/sandbox/data/blob.bin"]["size"] == len(blob)
    assert entries["/home/sandbox/data/blob.bin"]["is_dir"] is False
    assert entries["/home/sandbox/data/sub"]["is_dir"] is True
    for entry in entries.values():
        assert datetime.fromisoformat(entry["modified"]).tzinfo is not None
    # A file written from inside is readable from outside.
    await run(stockade, auth, env_id, ["sh", "-c", "printf 'made inside' > inside.txt"])
    response = await stockade.client.get(url, params={"path": "inside.txt"}, headers=auth)
    assert response.content == b"made inside"
    response = await stockade.client.get(url, params={"path": "no/such/file"}, headers=auth)
    assert_problem(response, 404, error="not_found")
    response = await stockade.client.get(url, params={"path": "../etc/passwd"}, headers=auth)
    assert_problem(response, 400, error="bad_request")


# VMs (seed 000).


async def test_vms_are_the_running_sandboxes_in_another_shape(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    assert (await stockade.client.get(VMS, headers=auth)).json() == []
    first = await create(stockade, auth, name="vm-one")
    second = await create(stockade, auth, name="vm-two")
    ended = await create(stockade, auth, name="vm-ended")
    response = await stockade.client.delete(f"{ENVIRONMENTS}/{ended['id']}", headers=auth)
    assert response.status_code == 204
    response = await stockade.client.get(VMS, headers=auth)
    assert response.status_code == 200, response.text
    vms = response.json()
    assert isinstance(vms, list)
    assert [vm["id"] for vm in vms] == [first["id"], second["id"]]
    for vm in vms:
        assert set(vm) >= {"id", "status", "type", "created_at", "resource_usage", "spawn_time_ms"}
        assert vm["status"] == "running"
        assert vm["type"] == "namespace"
        assert datetime.fromisoformat(vm["created_at"]).tzinfo is not None
        usage = vm["resource_usage"]
        assert set(usage) == {"memory_mb", "cpu_percent", "disk_mb"}
        assert all(isinstance(v, int | float) and v >= 0 for v in usage.values()), usage
        assert usage["memory_mb"] > 0, usage
        assert isinstance(vm["spawn_time_ms"], int | float)
        assert 0 < vm["spawn_time_ms"] < 10_000
    response = await stockade.client.get(f"{VMS}/{first['id']}", headers=auth)
    assert response.status_code == 200, response.text
    one = response.json()
    assert one["id"] == first["id"]
    assert one["status"] == "running"
    assert one["created_at"] == vms[0]["created_at"]
    response = await stockade.client.delete(f"{VMS}/{first['id']}", headers=auth)
    assert response.status_code == 204, response.text
    assert (await get(stockade, auth, first["id"]))["status"] == "terminated"
    assert [vm["id"] for vm in (await stockade.client.get(VMS, headers=auth)).json()] == [
        second["id"]
    ]
    assert (await stockade.client.get(f"{VMS}/{first['id']}", headers=auth)).json()[
        "status"
    ] == "terminated"
    assert await stockade.services.sandboxes.active_count() == 1
    for method in ("GET", "DELETE"):
        response = await stockade.client.request(method, f"{VMS}/{MISSING}", headers=auth)
        assert_problem(response, 404, error="not_found")


async def test_vms_lists_a_long_lived_sandbox_after_many_short_ones(tmp_path: Path) -> None:
    """A sandbox stays in the VM list however many others came and went after it.
    (Found failing: the list looked only at the newest 4 * ``sandbox_max`` rows of any
    status, so ended sandboxes pushed a running one out.)"""
    settings = make_settings(tmp_path / "small", rate_limit_enabled=False, sandbox_max=2)
    async with running_app(settings) as app:
        auth = bearer(await app.login())
        long_lived = (await create(app, auth, name="long-lived"))["id"]
        for i in range(4 * settings.sandbox_max):
            short = (await create(app, auth, name=f"short-{i}"))["id"]
            response = await app.client.delete(f"{ENVIRONMENTS}/{short}", headers=auth)
            assert response.status_code == 204
        assert (await app.client.get("/health")).json()["active_vms"] == 1
        vms = (await app.client.get(VMS, headers=auth)).json()
        assert [vm["id"] for vm in vms] == [long_lived]


# Metrics and health.


def sample(text: str, name: str, labels: str) -> float | None:
    match = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


async def test_metrics_and_health_count_the_sandboxes(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    assert (await stockade.client.get("/metrics")).status_code == 401
    health = (await stockade.client.get("/health")).json()
    assert health["active_vms"] == 0
    ids = [(await create(stockade, auth, name=f"m{i}"))["id"] for i in range(3)]
    response = await stockade.client.get("/metrics", headers=auth)
    assert response.status_code == 200, response.text
    text = response.text
    assert sample(text, "stockade_sandboxes_active", 'backend="namespace"') == 3
    assert sample(text, "vm_spawn_time_seconds_count", 'backend="namespace"') == 3
    assert sample(text, "vm_spawn_time_seconds_bucket", 'backend="namespace",le="+Inf"') == 3
    buckets = re.findall(
        r'^vm_spawn_time_seconds_bucket\{backend="namespace",le="[^"]+"\} ', text, re.M
    )
    assert len(buckets) > 3, text
    total = sample(text, "vm_spawn_time_seconds_sum", 'backend="namespace"')
    assert total is not None
    assert 0 < total < 30
    assert (await stockade.client.get("/health")).json()["active_vms"] == 3
    assert (await stockade.client.get("/api/v1/health")).json()["active_vms"] == 3
    response = await stockade.client.delete(f"{ENVIRONMENTS}/{ids[0]}", headers=auth)
    assert response.status_code == 204
    response = await stockade.client.delete(f"{VMS}/{ids[1]}", headers=auth)
    assert response.status_code == 204
    text = (await stockade.client.get("/metrics", headers=auth)).text
    assert sample(text, "stockade_sandboxes_active", 'backend="namespace"') == 1
    assert sample(text, "vm_spawn_time_seconds_count", 'backend="namespace"') == 3
    assert (await stockade.client.get("/health")).json()["active_vms"] == 1


# Acceptance 6: bad input is refused with a clear problem and leaves no sandbox behind.


async def assert_nothing_created(app: TestApp, settings: Settings, auth: dict[str, str]) -> None:
    listing = await listed(app, auth)
    assert listing["total"] == 0, listing
    assert listing["environments"] == [], listing
    assert await app.services.sandboxes.active_count() == 0
    assert (await app.client.get(VMS, headers=auth)).json() == []
    assert host_remains(settings) == []


BAD_CREATES = {
    "memory 12q": ({"resources": {"memory": "12q"}}, 400, "resources.memory"),
    "cpu -1": ({"resources": {"cpu": "-1"}}, 400, "resources.cpu"),
    "cpu 0": ({"resources": {"cpu": "0"}}, 400, "resources.cpu"),
    "storage lots": ({"resources": {"storage": "lots"}}, 400, "resources.storage"),
    "memory negative": ({"resources": {"memory": "-512Mi"}}, 400, "resources.memory"),
    "storage over the maximum": ({"resources": {"storage": "1Pi"}}, 400, "resources.storage"),
    "timeout negative": ({"timeout": -5}, 422, "timeout"),
    "timeout zero": ({"timeout": 0}, 422, "timeout"),
    "unknown image": ({"image": "python:3.11-slim"}, 400, "host"),
    "command empty": ({"command": []}, 400, "command"),
    "command empty program": ({"command": [""]}, 400, "command"),
    "egress": ({"isolation": {"network_policy": {"allow_internet": True}}}, 400, "egress"),
    "egress cidrs": (
        {"isolation": {"network_policy": {"allowed_egress_cidrs": ["10.0.0.0/8"]}}},
        400,
        "egress",
    ),
    "privilege escalation": (
        {"isolation": {"security_context": {"allow_privilege_escalation": True}}},
        400,
        "rivilege",
    ),
    "unknown runtime class": ({"isolation": {"runtime_class": "kata"}}, 400, "runtime_class"),
    "invalid label": ({"labels": {"not a key": "x"}}, 400, "label"),
    "invalid env name": ({"env": {"1X": "y"}}, 400, "env"),
    "no name": ({"name": ""}, 422, "name"),
}


@pytest.mark.parametrize("case", list(BAD_CREATES))
async def test_bad_create_is_refused_and_leaves_no_sandbox(
    stockade: TestApp, settings: Settings, auth: dict[str, str], case: str
) -> None:
    extra, status, mentioned = BAD_CREATES[case]
    body = {"name": "bad", **extra}
    response = await stockade.client.post(ENVIRONMENTS, json=body, headers=auth)
    error = "bad_request" if status == 400 else "validation_error"
    problem = assert_problem(response, status, error=error)
    assert mentioned in str(problem["detail"]), problem["detail"]
    if case == "unknown image":
        assert "python:3.11-slim" in str(problem["detail"])
    if case.startswith("egress"):
        assert "not available" in str(problem["detail"])
    await assert_nothing_created(stockade, settings, auth)


async def test_bad_exec_is_refused_and_starts_nothing(
    stockade: TestApp, auth: dict[str, str]
) -> None:
    env_id = (await create(stockade, auth, name="target"))["id"]
    url = f"{ENVIRONMENTS}/{env_id}/exec"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"command": []}, 422, "command"),
        ({"command": [""]}, 400, "command"),
        ({"command": ["true"], "timeout": 0}, 422, "timeout"),
        ({"command": ["true"], "timeout": -1}, 422, "timeout"),
        ({}, 422, "command"),
    ]
    for body, status, mentioned in cases:
        response = await stockade.client.post(url, json=body, headers=auth)
        error = "bad_request" if status == 400 else "validation_error"
        problem = assert_problem(response, status, error=error)
        assert mentioned in str(problem["detail"]), (body, problem["detail"])
    ps = await run(stockade, auth, env_id, ["ps", "-e", "--no-headers", "-o", "comm"])
    assert sorted(ps["stdout"].split()) == ["agent", "bwrap", "ps"], ps["stdout"]
    assert await stockade.services.sandboxes.active_count() == 1
    assert (await listed(stockade, auth))["total"] == 1


@pytest.mark.parametrize(
    "query", ["label==x", "label=a%3Db%3Dc", "label=!a%3Db", "label=a%20b", "label=a,,b", "label=!"]
)
async def test_an_invalid_label_selector_is_refused(
    stockade: TestApp, auth: dict[str, str], query: str
) -> None:
    await create(stockade, auth, name="labelled", labels={"a": "b"})
    response = await stockade.client.get(f"{ENVIRONMENTS}?{query}", headers=auth)
    problem = assert_problem(response, 400, error="bad_request")
    assert "label selector" in str(problem["detail"]), problem["detail"]


async def chunks(total: int, size: int = MiB) -> AsyncIterator[bytes]:
    """``total`` bytes in ``size`` pieces, made as they are sent."""
    piece = b"x" * size
    for _ in range(total // size):
        yield piece


async def test_a_100_mb_upload_is_refused_by_the_default_limit(
    stockade: TestApp, settings: Settings, auth: dict[str, str]
) -> None:
    assert settings.max_upload_bytes < 100 * MiB
    env_id = (await create(stockade, auth, name="uploads"))["id"]
    url = f"{ENVIRONMENTS}/{env_id}/files?path=big.bin"
    # Declared up front: refused before a byte of the body is read.
    declared = await stockade.client.put(
        url,
        content=chunks(100 * MiB),
        headers={**auth, "content-length": str(100 * MiB)},
    )
    problem = assert_problem(declared, 413, error="payload_too_large")
    assert str(settings.max_upload_bytes) in str(problem["detail"])
    # Streamed without a length: refused once it passes the limit.
    streamed = await stockade.client.put(url, content=chunks(100 * MiB), headers=auth)
    assert_problem(streamed, 413, error="payload_too_large")
    missing = await stockade.client.get(url, headers=auth)
    assert_problem(missing, 404, error="not_found")
    assert await stockade.services.sandboxes.active_count() == 1
    assert (await listed(stockade, auth))["total"] == 1
    # The environment is unharmed and still takes a file under the limit.
    small = await stockade.client.put(url, content=b"ok", headers=auth)
    assert small.status_code == 201, small.text


@pytest.mark.parametrize(
    ("max_body", "max_upload"),
    [(1 * MiB, 2 * MiB), (10 * MiB, 1 * MiB)],
    ids=["upload-limit-above-body-limit", "upload-limit-below-body-limit"],
)
async def test_uploads_follow_the_configured_upload_limit(
    tmp_path: Path, max_body: int, max_upload: int
) -> None:
    """``max_upload_bytes`` is the largest file uploaded into a sandbox (README), whether
    it is above the general body limit or below it. (Found failing below it: the
    middleware takes the larger of the two limits for uploads.)"""
    settings = make_settings(
        tmp_path / "limited",
        rate_limit_enabled=False,
        max_body_bytes=max_body,
        max_upload_bytes=max_upload,
    )
    async with running_app(settings) as app:
        auth = bearer(await app.login())
        env_id = (await create(app, auth, name="limited"))["id"]
        url = f"{ENVIRONMENTS}/{env_id}/files?path=f.bin"
        over = await app.client.put(url, content=b"x" * (max_upload + 1), headers=auth)
        assert_problem(over, 413, error="payload_too_large")
        streamed = await app.client.put(url, content=chunks(4 * max_upload, 64 << 10), headers=auth)
        assert_problem(streamed, 413, error="payload_too_large")
        assert_problem(await app.client.get(url, headers=auth), 404, error="not_found")
        at_limit = await app.client.put(url, content=b"y" * max_upload, headers=auth)
        assert at_limit.status_code == 201, at_limit.text
        assert at_limit.json()["size"] == max_upload
        # Other bodies keep the general limit.
        big_exec = {"command": ["true"], "stdin": "z" * max_body}
        response = await app.client.post(
            f"{ENVIRONMENTS}/{env_id}/exec", json=big_exec, headers=auth
        )
        assert_problem(response, 413, error="payload_too_large")
        assert await app.services.sandboxes.active_count() == 1
