"""Acceptance 5: who reaches which environment, on every environment and VM route, over
HTTP and WebSocket.

User U owns environments A and B and made three API keys limited to A: one each at
``read``, ``write`` and ``admin``. With the daemon's admin, U itself and another user V,
that is six callers, each tried against A, B and an id that does not exist. A sandbox out
of a caller's reach answers 404 exactly as a missing one does; within reach at too low a
level, 403.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from stockade.api.app import create_app
from stockade.services import Services
from stockade.testing import ADMIN_PASSWORD, bearer, fast_passwords, make_settings
from tests.principals import login, make_user

PRINCIPALS = ("admin", "key_read", "key_write", "key_admin", "owner", "other")
TARGETS = ("A", "B", "missing")
MISSING_ID = "env-000000000000"
OWNER_PASSWORD = "owner-password-1"
OTHER_PASSWORD = "other-password-1"

LIST_ENVS = "GET /api/v1/environments"
CREATE_ENV = "POST /api/v1/environments"
GET_ENV = "GET /api/v1/environments/{env_id}"
DELETE_ENV = "DELETE /api/v1/environments/{env_id}"
EXEC = "POST /api/v1/environments/{env_id}/exec"
LOGS = "GET /api/v1/environments/{env_id}/logs"
PUT_FILE = "PUT /api/v1/environments/{env_id}/files"
GET_FILE = "GET /api/v1/environments/{env_id}/files"
ATTACH = "WS /api/v1/environments/{env_id}/attach"
LIST_VMS = "GET /api/v1/vms"
GET_VM = "GET /api/v1/vms/{vm_id}"
DELETE_VM = "DELETE /api/v1/vms/{vm_id}"

# The expected status of each (caller, route, target), written out per route as
# caller -> (A, B, missing). 101 is an accepted WebSocket.
TABLES: dict[str, dict[str, tuple[int, int, int]]] = {
    GET_ENV: {
        "admin": (200, 200, 404),
        "key_read": (200, 404, 404),
        "key_write": (200, 404, 404),
        "key_admin": (200, 404, 404),
        "owner": (200, 200, 404),
        "other": (404, 404, 404),
    },
    LOGS: {
        "admin": (200, 200, 404),
        "key_read": (200, 404, 404),
        "key_write": (200, 404, 404),
        "key_admin": (200, 404, 404),
        "owner": (200, 200, 404),
        "other": (404, 404, 404),
    },
    GET_VM: {
        "admin": (200, 200, 404),
        "key_read": (200, 404, 404),
        "key_write": (200, 404, 404),
        "key_admin": (200, 404, 404),
        "owner": (200, 200, 404),
        "other": (404, 404, 404),
    },
    EXEC: {
        "admin": (200, 200, 404),
        "key_read": (403, 404, 404),
        "key_write": (200, 404, 404),
        "key_admin": (200, 404, 404),
        "owner": (200, 200, 404),
        "other": (404, 404, 404),
    },
    PUT_FILE: {
        "admin": (201, 201, 404),
        "key_read": (403, 404, 404),
        "key_write": (201, 404, 404),
        "key_admin": (201, 404, 404),
        "owner": (201, 201, 404),
        "other": (404, 404, 404),
    },
    GET_FILE: {
        "admin": (200, 200, 404),
        "key_read": (403, 404, 404),
        "key_write": (200, 404, 404),
        "key_admin": (200, 404, 404),
        "owner": (200, 200, 404),
        "other": (404, 404, 404),
    },
    ATTACH: {
        "admin": (101, 101, 404),
        "key_read": (403, 404, 404),
        "key_write": (101, 404, 404),
        "key_admin": (101, 404, 404),
        "owner": (101, 101, 404),
        "other": (404, 404, 404),
    },
    DELETE_ENV: {
        "admin": (204, 204, 404),
        "key_read": (403, 404, 404),
        "key_write": (403, 404, 404),
        "key_admin": (204, 404, 404),
        "owner": (204, 204, 404),
        "other": (404, 404, 404),
    },
    DELETE_VM: {
        "admin": (204, 204, 404),
        "key_read": (403, 404, 404),
        "key_write": (403, 404, 404),
        "key_admin": (204, 404, 404),
        "owner": (204, 204, 404),
        "other": (404, 404, 404),
    },
}
EXPECTED: dict[tuple[str, str, str], int] = {
    (principal, route, target): statuses[TARGETS.index(target)]
    for route, table in TABLES.items()
    for principal, statuses in table.items()
    for target in TARGETS
}
# Which of A and B each caller sees in the lists (always 200).
VISIBLE: dict[str, dict[str, set[str]]] = {
    LIST_ENVS: {
        "admin": {"A", "B"},
        "key_read": {"A"},
        "key_write": {"A"},
        "key_admin": {"A"},
        "owner": {"A", "B"},
        "other": set(),
    },
    LIST_VMS: {
        "admin": {"A", "B"},
        "key_read": {"A"},
        "key_write": {"A"},
        "key_admin": {"A"},
        "owner": {"A", "B"},
        "other": set(),
    },
}
# A key limited to named environments cannot make new ones.
CREATE: dict[str, int] = {
    "admin": 201,
    "key_read": 403,
    "key_write": 403,
    "key_admin": 403,
    "owner": 201,
    "other": 201,
}
DESTRUCTIVE = (DELETE_ENV, DELETE_VM)


@dataclass
class World:
    """A and B, owned by U, and the three keys limited to A."""

    ids: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def id_of(self, target: str) -> str:
        return MISSING_ID if target == "missing" else self.ids[target]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path / "home", rate_limit_enabled=False)
    app = create_app(settings, services=Services.build(settings, passwords=fast_passwords()))
    with TestClient(app) as test_client:
        yield test_client


def make_world(client: TestClient, owner: str) -> World:
    """Fresh A and B as U, each with a file to read, and fresh keys on the new A."""
    ids = {}
    for name in ("A", "B"):
        response = client.post(
            "/api/v1/environments",
            json={"name": f"authz-{name}", "command": ["sh", "-c", "echo hello; exec sleep 600"]},
            headers=bearer(owner),
        )
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "running", response.text
        ids[name] = response.json()["id"]
        response = client.put(
            f"/api/v1/environments/{ids[name]}/files",
            params={"path": "hello.txt"},
            content=b"hello",
            headers=bearer(owner),
        )
        assert response.status_code == 201, response.text
    world = World(ids)
    for level in ("read", "write", "admin"):
        response = client.post(
            "/api/v1/api-keys",
            json={
                "description": f"{level} on A",
                "permissions": [{"environment_id": ids["A"], "permission": level}],
            },
            headers=bearer(owner),
        )
        assert response.status_code == 201, response.text
        assert response.json()["permissions"] == [{"environment_id": ids["A"], "permission": level}]
        world.tokens[f"key_{level}"] = response.json()["key"]
    return world


def app_routes(client: TestClient) -> set[str]:
    """Every environment and VM route the app serves, as "METHOD path" ("WS path")."""
    found = set()
    for route in client.app.routes:  # type: ignore[attr-defined]
        path = getattr(route, "path", "")
        if not re.match(r"/api/v1/(environments|vms)(/|$)", path):
            continue
        if isinstance(route, WebSocketRoute):
            found.add(f"WS {path}")
        elif isinstance(route, Route):
            found |= {f"{method} {path}" for method in route.methods or ()}
        else:
            found.add(f"{type(route).__name__} {path}")
    return found


@dataclass
class Outcome:
    status: int
    response: httpx.Response | None = None
    problem: str | None = None  # what was wrong besides the status, if anything


def attach(client: TestClient, env_id: str, token: str) -> Outcome:
    url = f"/api/v1/environments/{env_id}/attach"
    try:
        with client.websocket_connect(url, subprotocols=["Authorization", f"Bearer {token}"]) as ws:
            ws.send_json({"type": "stdin", "data": "echo in-$((40+2)); exit 5\n"})
            messages = []
            while not messages or messages[-1].get("type") not in ("exit", "error"):
                messages.append(ws.receive_json())
    except WebSocketDenialResponse as denied:
        return Outcome(denied.status_code, denied)
    except WebSocketDisconnect as closed:
        code = closed.code - 4000 if closed.code >= 4000 else closed.code
        return Outcome(code, problem=f"closed with {closed.code} instead of a denial response")
    out = "".join(m.get("data", "") for m in messages if m["type"] == "stdout")
    if out != "in-42\n" or messages[-1] != {"type": "exit", "exit_code": 5}:
        return Outcome(101, problem=f"the shell did not run: {messages}")
    return Outcome(101)


def call(client: TestClient, route: str, env_id: str, token: str) -> Outcome:
    """Make the request of ``route`` on ``env_id`` and check what a success carries."""
    if route == ATTACH:
        return attach(client, env_id, token)
    method, template = route.split(" ", 1)
    path = template.replace("{env_id}", env_id).replace("{vm_id}", env_id)
    kwargs: dict[str, Any] = {"headers": bearer(token)}
    if route == EXEC:
        kwargs["json"] = {"command": ["echo", "ran"]}
    elif route == PUT_FILE:
        kwargs |= {"params": {"path": "written.txt"}, "content": b"written"}
    elif route == GET_FILE:
        kwargs["params"] = {"path": "hello.txt"}
    response = client.request(method, path, **kwargs)
    outcome = Outcome(response.status_code, response)
    if response.status_code >= 300:
        return outcome
    checks: dict[str, Callable[[httpx.Response], bool]] = {
        GET_ENV: lambda r: r.json()["id"] == env_id and r.json()["status"] == "running",
        GET_VM: lambda r: r.json()["id"] == env_id and r.json()["status"] == "running",
        LOGS: lambda r: [e["message"] for e in r.json()["logs"]] in ([], ["hello"]),
        EXEC: lambda r: r.json()["stdout"] == "ran\n" and r.json()["exit_code"] == 0,
        PUT_FILE: lambda r: r.json() == {"path": "/home/sandbox/written.txt", "size": 7},
        GET_FILE: lambda r: r.content == b"hello",
        DELETE_ENV: lambda r: r.content == b"",
        DELETE_VM: lambda r: r.content == b"",
    }
    if not checks[route](response):
        outcome.problem = f"unexpected body {response.text[:300]!r}"
    return outcome


def shape(response: httpx.Response, env_id: str) -> dict[str, Any]:
    """A problem body without what differs between any two requests (time, path, id)."""
    body: dict[str, Any] = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    drop = {"timestamp", "instance", "request_id"}
    return {
        k: v.replace(env_id, "{id}") if isinstance(v, str) else v
        for k, v in body.items()
        if k not in drop
    }


def test_every_route_and_caller_reaches_exactly_what_it_should(client: TestClient) -> None:
    admin = login(client, "admin", ADMIN_PASSWORD)
    owner = make_user(client, admin, "owner-u", OWNER_PASSWORD)
    other = make_user(client, admin, "other-v", OTHER_PASSWORD)
    world = make_world(client, owner)
    fixed = {"admin": admin, "owner": owner, "other": other}

    def token(principal: str) -> str:
        return fixed.get(principal) or world.tokens[principal]

    # The matrix covers every environment and VM route the app has, and no other.
    covered = {*TABLES, *VISIBLE, CREATE_ENV}
    served = app_routes(client)
    assert served == covered, (
        f"routes without a row in the matrix: {sorted(served - covered)}; "
        f"rows for routes the app does not serve: {sorted(covered - served)}"
    )
    assert set(EXPECTED) == {(p, r, t) for p in PRINCIPALS for r in TABLES for t in TARGETS}, (
        "the tables must give every caller a status on every target"
    )

    wrong: list[str] = []
    refusals: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

    def judge(principal: str, route: str, target: str, outcome: Outcome) -> None:
        expected = EXPECTED[principal, route, target]
        cell = f"{principal:9} {route} on {target}"
        if outcome.status != expected:
            body = outcome.response.text[:200] if outcome.response is not None else ""
            wrong.append(f"{cell}: {outcome.status}, expected {expected} {body}")
        elif outcome.problem:
            wrong.append(f"{cell}: {outcome.problem}")
        elif outcome.status in (403, 404) and outcome.response is not None:
            body = shape(outcome.response, world.id_of(target))
            if body["error"] != {403: "forbidden", 404: "not_found"}[outcome.status]:
                wrong.append(f"{cell}: error {body['error']!r}")
            refusals.setdefault((principal, route), {})[target] = body

    # Lists: which of A and B each caller sees.
    for route, table in VISIBLE.items():
        for principal, expected_names in table.items():
            response = client.get(route.split(" ", 1)[1], headers=bearer(token(principal)))
            if response.status_code != 200:
                wrong.append(f"{principal:9} {route}: {response.status_code}, expected 200")
                continue
            body = response.json()
            items = body["environments"] if route == LIST_ENVS else body
            seen = {
                name for name, env_id in world.ids.items() if env_id in {i["id"] for i in items}
            }
            if seen != expected_names:
                wrong.append(
                    f"{principal:9} {route}: sees {sorted(seen)}, expected {sorted(expected_names)}"
                )
            if principal == "other" and items:
                wrong.append(f"{principal:9} {route}: sees others' {[i['id'] for i in items]}")

    # Every route that leaves its target running, on every target.
    for route in TABLES:
        if route in DESTRUCTIVE:
            continue
        for principal in PRINCIPALS:
            for target in TARGETS:
                outcome = call(client, route, world.id_of(target), token(principal))
                judge(principal, route, target, outcome)

    # Creating: restricted keys may not.
    for principal, expected in CREATE.items():
        response = client.post(
            "/api/v1/environments", json={"name": "made"}, headers=bearer(token(principal))
        )
        if response.status_code != expected:
            wrong.append(f"{principal:9} {CREATE_ENV}: {response.status_code}, expected {expected}")
        elif expected == 403 and response.json()["error"] != "forbidden":
            wrong.append(f"{principal:9} {CREATE_ENV}: {response.text[:200]}")
        if response.status_code == 201:
            made = response.json()["id"]
            assert (
                client.delete(f"/api/v1/environments/{made}", headers=bearer(admin)).status_code
                == 204
            )

    # Deleting, refusals first; whenever a target is gone, A, B and the keys are made anew
    # so that every cell meets running targets.
    for route in DESTRUCTIVE:
        for target in TARGETS:
            order = sorted(PRINCIPALS, key=lambda p: EXPECTED[p, route, target] == 204)
            for principal in order:
                env_id = world.id_of(target)
                outcome = call(client, route, env_id, token(principal))
                judge(principal, route, target, outcome)
                if target == "missing":
                    continue
                state = client.get(f"/api/v1/environments/{env_id}", headers=bearer(admin)).json()
                if outcome.status == 204 and state["status"] not in ("terminating", "terminated"):
                    wrong.append(f"{principal:9} {route} on {target}: 204 but {state['status']}")
                if state["status"] != "running":  # deleted (it may still be terminating)
                    if outcome.status != 204:
                        wrong.append(
                            f"{principal:9} {route} on {target}: refused but {state['status']}"
                        )
                    world = make_world(client, owner)

    # Out of reach looks exactly like missing: the same problem, the id aside.
    for (principal, route), bodies in refusals.items():
        missing = bodies.get("missing")
        for target, body in bodies.items():
            if body["status"] == 404 and body != missing:
                wrong.append(f"{principal:9} {route} on {target}: 404 {body}, missing: {missing}")

    assert not wrong, f"{len(wrong)} wrong cells:\n" + "\n".join(wrong)
    for env_id in world.ids.values():
        client.delete(f"/api/v1/environments/{env_id}", headers=bearer(admin))
