"""Issue 7's authorization matrix: every route of every dialect, HTTP and WebSocket, with
every kind of caller, against a real daemon process.

The matrix is a table keyed by (method, path), and the test first checks that its keys
are exactly the routes the app declares (``app.routes``, WebSockets as ``WS``): a new
route without a row fails here. Each row gives the status for the callers that hold a
valid credential; the five that do not (no credentials, a malformed one, a wrong
password over HTTP Basic, a revoked API key, an expired one) are refused on every route
that is not public.

The objects in the paths are real and belong to user U (``owner``): environments A and
B, a task waiting on approval P, a job, an API key and a Luna plan. ``foreign`` is
another ordinary user: on U's objects they get 404, as for a missing one, never 403 or
200. ``scoped`` is U's API key limited to environment B, tried on A. Routes that change
their object (deletes, answers) get a fresh object for each caller that succeeds.
"""

from __future__ import annotations

import itertools
import json
import re
import string
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import websockets
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import Route
from websockets.sync.client import connect as ws_connect

from stockade.api.app import create_app
from stockade.store.tables import api_keys
from stockade.testing import (
    ADMIN_PASSWORD,
    Daemon,
    basic_auth,
    bearer,
    daemon_process,
    make_settings,
)
from tests.cli.test_luminaguard import environment, task_events, wait_for
from tests.principals import login, make_user

OWNER, OWNER_PASSWORD = "owner-u", "owner-password-1"
OTHER, OTHER_PASSWORD = "other-v", "other-password-1"

# Callers without a valid credential, and those with one.
REFUSED = ("anonymous", "malformed", "wrong_password", "revoked_key", "expired_key")
ALLOWED = ("foreign", "scoped", "owner", "admin")
# How a route refuses the first kind: 401, or on a WebSocket a close before the
# handshake, which the server answers with 403.
REFUSED_HTTP, REFUSED_WS = 401, 403
ACCEPTED_WS = 101


@dataclass(frozen=True)
class Row:
    """The status each caller with a valid credential gets on one route."""

    owner: int
    foreign: int
    scoped: int
    admin: int | None = None  # when an admin's answer differs from the owner's
    public: bool = False  # anyone may call it: every caller gets ``owner``
    fresh: bool = False  # it changes its object: each success gets a new one

    def expected(self, caller: str, websocket: bool) -> int:
        if self.public:
            return self.owner
        if caller in REFUSED:
            return REFUSED_WS if websocket else REFUSED_HTTP
        if caller == "admin":
            return self.owner if self.admin is None else self.admin
        return int(getattr(self, caller))


MATRIX: dict[tuple[str, str], Row] = {
    # Health and documentation.
    ("GET", "/"): Row(200, 200, 200, public=True),
    ("GET", "/health"): Row(200, 200, 200, public=True),
    ("GET", "/api/v1/health"): Row(200, 200, 200, public=True),
    ("GET", "/openapi.json"): Row(200, 200, 200, public=True),
    ("GET", "/docs"): Row(200, 200, 200, public=True),
    ("GET", "/metrics"): Row(owner=200, foreign=200, scoped=200),
    # Accounts and keys (seed 004, seed 000's login).
    ("POST", "/api/v1/auth/login"): Row(200, 200, 200, public=True),
    ("POST", "/v1/auth/login"): Row(200, 200, 200, public=True),
    ("GET", "/api/v1/auth/me"): Row(owner=200, foreign=200, scoped=200),
    ("POST", "/api/v1/users"): Row(owner=403, foreign=403, scoped=403, admin=201),
    ("GET", "/api/v1/api-keys"): Row(owner=200, foreign=200, scoped=403),
    ("POST", "/api/v1/api-keys"): Row(owner=201, foreign=201, scoped=403),
    ("DELETE", "/api/v1/api-keys/{key_id}"): Row(
        204, foreign=404, scoped=403, admin=404, fresh=True
    ),
    # Events.
    ("GET", "/api/v1/events"): Row(owner=200, foreign=200, scoped=200),
    ("WS", "/api/v1/events/ws"): Row(owner=101, foreign=101, scoped=101),
    # Environments and VMs (seeds 004 and 000).
    ("POST", "/api/v1/environments"): Row(owner=201, foreign=201, scoped=403),
    ("GET", "/api/v1/environments"): Row(owner=200, foreign=200, scoped=200),
    ("GET", "/api/v1/environments/{env_id}"): Row(200, foreign=404, scoped=404),
    ("DELETE", "/api/v1/environments/{env_id}"): Row(204, foreign=404, scoped=404, fresh=True),
    ("POST", "/api/v1/environments/{env_id}/exec"): Row(200, foreign=404, scoped=404),
    ("GET", "/api/v1/environments/{env_id}/logs"): Row(200, foreign=404, scoped=404),
    ("PUT", "/api/v1/environments/{env_id}/files"): Row(201, foreign=404, scoped=404),
    ("GET", "/api/v1/environments/{env_id}/files"): Row(200, foreign=404, scoped=404),
    ("WS", "/api/v1/environments/{env_id}/attach"): Row(101, foreign=404, scoped=404),
    ("GET", "/api/v1/vms"): Row(owner=200, foreign=200, scoped=200),
    ("GET", "/api/v1/vms/{vm_id}"): Row(200, foreign=404, scoped=404),
    ("DELETE", "/api/v1/vms/{vm_id}"): Row(204, foreign=404, scoped=404, fresh=True),
    # Tasks and approvals (seed 000).
    ("POST", "/api/v1/tasks"): Row(owner=201, foreign=201, scoped=403),
    ("GET", "/api/v1/tasks"): Row(owner=200, foreign=200, scoped=200),
    ("GET", "/api/v1/tasks/{task_id}"): Row(200, foreign=404, scoped=404),
    ("DELETE", "/api/v1/tasks/{task_id}"): Row(200, foreign=404, scoped=404, fresh=True),
    ("GET", "/api/v1/approvals"): Row(owner=200, foreign=200, scoped=200),
    ("GET", "/api/v1/approvals/{approval_id}"): Row(200, foreign=404, scoped=404),
    ("POST", "/api/v1/approvals/{approval_id}"): Row(200, foreign=404, scoped=404, fresh=True),
    # Plans (seed 001).
    ("POST", "/api/execute"): Row(owner=200, foreign=200, scoped=200),
    ("POST", "/api/execute/run"): Row(owner=200, foreign=200, scoped=403),
    # Jobs (seed 002).
    ("GET", "/daemon/status"): Row(owner=200, foreign=200, scoped=200),
    ("GET", "/daemon/tasks"): Row(owner=200, foreign=200, scoped=200),
    ("POST", "/daemon/tasks/add"): Row(owner=200, foreign=200, scoped=403),
    ("POST", "/daemon/start"): Row(owner=403, foreign=403, scoped=403, admin=200),
    ("POST", "/daemon/stop"): Row(owner=403, foreign=403, scoped=403, admin=200),
    ("GET", "/daemon/tasks/{task_id}"): Row(200, foreign=404, scoped=404),
    ("DELETE", "/daemon/tasks/{task_id}"): Row(204, foreign=404, scoped=404, fresh=True),
    ("POST", "/daemon/tasks/{task_id}/run"): Row(202, foreign=404, scoped=404),
    ("GET", "/daemon/tasks/{task_id}/history"): Row(200, foreign=404, scoped=404),
    ("WS", "/daemon/ws"): Row(owner=101, foreign=101, scoped=101),
}


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the daemon's app declares; ``WS`` for WebSockets."""
    # Building the app makes its home: a throw-away one (the routes are all it is for).
    with tempfile.TemporaryDirectory() as home:
        app = create_app(make_settings(Path(home)))
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, APIWebSocketRoute):
            found.add(("WS", route.path))
        elif isinstance(route, APIRoute | Route):
            found |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
        else:
            found.add((type(route).__name__, getattr(route, "path", "?")))
    return found


def test_the_matrix_has_a_row_for_every_route_and_no_other() -> None:
    served = app_routes()
    assert served == set(MATRIX), (
        f"routes without a row in the matrix: {sorted(served - set(MATRIX))}; "
        f"rows for routes the app does not serve: {sorted(set(MATRIX) - served)}"
    )


def test_foreign_objects_answer_404_in_every_row() -> None:
    """A route whose path names an object answers another user as if it did not exist."""
    for (method, path), row in MATRIX.items():
        if "{" in path:
            assert row.foreign == 404, (method, path)
            assert row.scoped in (403, 404), (method, path)


# The world: U's objects, and one credential per caller.

_names = (f"{n:04d}" for n in itertools.count())


@dataclass
class World:
    daemon: Daemon
    client: httpx.Client
    events: Iterator[dict[str, Any]]  # U's task and approval events
    credentials: dict[str, dict[str, str]]
    ids: dict[str, str]  # env_id, env_b, vm_id, task_id, approval_id, job_id, key_id, plan_id

    def owner(self) -> dict[str, str]:
        return self.credentials["owner"]

    def new_env(self) -> str:
        response = self.client.post(
            "/api/v1/environments",
            json={"name": f"m-{next(_names)}", "command": ["sleep", "600"]},
            headers=self.owner(),
        )
        assert response.status_code == 201, response.text
        env_id: str = response.json()["id"]
        return env_id

    def new_waiting_task(self) -> tuple[str, str]:
        response = self.client.post(
            "/api/v1/tasks", json={"description": "Delete old logs"}, headers=self.owner()
        )
        assert response.status_code == 201, response.text
        task_id: str = response.json()["id"]
        event = wait_for(self.events, ("approval.requested", "task.failed"), task_id)
        assert event["type"] == "approval.requested", event
        return task_id, str(event["data"]["id"])

    def new_key(self, **body: Any) -> tuple[str, str]:
        response = self.client.post("/api/v1/api-keys", json=body, headers=self.owner())
        assert response.status_code == 201, response.text
        return response.json()["id"], response.json()["key"]

    def new_job(self) -> str:
        response = self.client.post("/daemon/tasks/add", json=job_body(), headers=self.owner())
        assert response.status_code == 200, response.text
        job_id: str = response.json()["task_id"]
        return job_id

    def fresh_ids(self, path: str) -> dict[str, str]:
        """The ids with a new object in place of the one ``path`` changes."""
        ids = dict(self.ids)
        if "{env_id}" in path or "{vm_id}" in path:
            ids["env_id"] = ids["vm_id"] = self.new_env()
        elif path.startswith(("/api/v1/tasks/", "/api/v1/approvals/")):
            ids["task_id"], ids["approval_id"] = self.new_waiting_task()
        elif "{key_id}" in path:
            ids["key_id"], _ = self.new_key()
        elif path.startswith("/daemon/tasks/"):
            ids["job_id"] = self.new_job()
        return ids


def job_body() -> dict[str, Any]:
    return {"task_id": f"job-{next(_names)}", "name": "Echo", "priority": "HIGH", "command": "true"}


def expire_key(home: Path, key_id: str) -> None:
    """Set the key's expiry in the past, in the daemon's SQLite store (it has not been
    used yet, so nothing of it is cached)."""
    engine = sa.create_engine(f"sqlite:///{home / 'stockade.db'}")
    with engine.begin() as conn:
        conn.execute(
            api_keys.update()
            .where(api_keys.c.id == key_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    engine.dispose()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("matrix")
    env = environment(tmp) | {
        "STOCKADE_RATE_LIMIT_ENABLED": "false",
        "STOCKADE_SANDBOX_POOL": "2",
        "STOCKADE_JOBS_AUTOSTART": "false",
    }
    with (
        daemon_process(tmp / "home", env=env) as daemon,
        httpx.Client(base_url=daemon.url, timeout=30) as client,
    ):
        admin = login(client, "admin", ADMIN_PASSWORD)
        owner = make_user(client, admin, OWNER, OWNER_PASSWORD)
        other = make_user(client, admin, OTHER, OTHER_PASSWORD)
        with task_events(daemon, owner) as events:
            world = World(daemon, client, events, {"owner": bearer(owner)}, {})
            world.ids["env_id"] = world.ids["vm_id"] = world.new_env()
            world.ids["env_b"] = world.new_env()
            response = client.put(
                f"/api/v1/environments/{world.ids['env_id']}/files",
                params={"path": "hello.txt"},
                content=b"hello",
                headers=world.owner(),
            )
            assert response.status_code == 201, response.text
            world.ids["task_id"], world.ids["approval_id"] = world.new_waiting_task()
            world.ids["job_id"] = world.new_job()
            world.ids["key_id"], _ = world.new_key(description="to be revoked by the matrix")
            plan = client.post(
                "/api/execute", json={"command": "list files"}, headers=world.owner()
            )
            assert plan.status_code == 200, plan.text
            world.ids["plan_id"] = plan.json()["task_id"]

            revoked_id, revoked = world.new_key()
            revoke = client.delete(f"/api/v1/api-keys/{revoked_id}", headers=world.owner())
            assert revoke.status_code == 204, revoke.text
            expired_id, expired = world.new_key()
            expire_key(daemon.home, expired_id)
            _, scoped = world.new_key(
                permissions=[{"environment_id": world.ids["env_b"], "permission": "admin"}]
            )
            world.credentials |= {
                "anonymous": {},
                "malformed": {"Authorization": "Bearer not.a.jwt"},
                "wrong_password": basic_auth(OWNER, "not-the-password"),
                "revoked_key": bearer(revoked),
                "expired_key": bearer(expired),
                "foreign": bearer(other),
                "scoped": bearer(scoped),
                "admin": bearer(admin),
            }
            yield world


# Requests.


def request_of(method: str, path: str, ids: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The URL and the body, parameters or headers one route needs."""
    names = {
        "env_id": ids["env_id"],
        "vm_id": ids["vm_id"],
        "approval_id": ids["approval_id"],
        "key_id": ids["key_id"],
        "task_id": ids["job_id"] if path.startswith("/daemon/") else ids["task_id"],
    }
    fields = {name for _, name, _, _ in string.Formatter().parse(path) if name}
    url = path.format(**{name: names[name] for name in fields})
    bodies: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
        ("POST", "/api/v1/auth/login"): lambda: {
            "json": {"username": OWNER, "password": OWNER_PASSWORD}
        },
        ("POST", "/v1/auth/login"): lambda: {
            "json": {"username": OWNER, "password": OWNER_PASSWORD}
        },
        ("POST", "/api/v1/users"): lambda: {
            "json": {"username": f"made-{next(_names)}", "password": "made-password-1"}
        },
        ("POST", "/api/v1/api-keys"): lambda: {"json": {}},
        ("POST", "/api/v1/environments"): lambda: {
            "json": {"name": f"made-{next(_names)}", "command": ["sleep", "60"]}
        },
        ("POST", "/api/v1/environments/{env_id}/exec"): lambda: {"json": {"command": ["true"]}},
        ("PUT", "/api/v1/environments/{env_id}/files"): lambda: {
            "params": {"path": "written.txt"},
            "content": b"written",
        },
        ("GET", "/api/v1/environments/{env_id}/files"): lambda: {"params": {"path": "hello.txt"}},
        ("POST", "/api/v1/tasks"): lambda: {"json": {"description": "List files"}},
        ("POST", "/api/v1/approvals/{approval_id}"): lambda: {
            "json": {"approved": False, "reason": "matrix"}
        },
        ("POST", "/api/execute"): lambda: {"json": {"command": "list files"}},
        ("POST", "/api/execute/run"): lambda: {
            "json": {"task_id": ids["plan_id"], "steps": [{"id": 1, "command": "true"}]}
        },
        ("POST", "/daemon/tasks/add"): lambda: {"json": job_body()},
    }
    kwargs = bodies.get((method, path), dict)()
    return url, kwargs


def http_status(
    world: World, method: str, path: str, caller: str, ids: dict[str, str], wrong: list[str]
) -> int:
    url, kwargs = request_of(method, path, ids)
    headers = world.credentials[caller] | kwargs.pop("headers", {})
    if (method, path) == ("GET", "/api/v1/events"):
        with world.client.stream("GET", url, headers=headers) as response:
            return response.status_code
    response = world.client.request(method, url, headers=headers, **kwargs)
    if caller in ("foreign", "scoped") and response.is_success:
        leaked = [name for name in OWNED if world.ids[name] in response.text]
        if leaked:
            wrong.append(f"{caller:14} {method} {path}: shows U's {leaked}")
    return response.status_code


# What a caller other than U must never see in an answer.
OWNED = ("env_id", "task_id", "approval_id", "job_id", "key_id")


def ws_status(world: World, path: str, caller: str, ids: dict[str, str]) -> int:
    url, _ = request_of("WS", path, ids)
    ws_url = world.daemon.url.replace("http", "ws", 1) + url
    try:
        with ws_connect(ws_url, additional_headers=world.credentials[caller], open_timeout=10):
            return ACCEPTED_WS
    except websockets.exceptions.InvalidStatus as refused:
        return refused.response.status_code


def test_every_caller_gets_what_the_matrix_says_on_every_route(world: World) -> None:
    wrong: list[str] = []
    callers = (*REFUSED, *ALLOWED)
    # Routes that leave their object as it is, then those that change it.
    ordered = sorted(MATRIX, key=lambda key: MATRIX[key].fresh)
    for method, path in ordered:
        row = MATRIX[method, path]
        for caller in callers:
            expected = row.expected(caller, websocket=method == "WS")
            ids = world.fresh_ids(path) if row.fresh and 200 <= expected < 300 else world.ids
            if method == "WS":
                status = ws_status(world, path, caller, ids)
            else:
                status = http_status(world, method, path, caller, ids, wrong)
            if status != expected or status >= 500:
                wrong.append(f"{caller:14} {method} {path}: {status}, expected {expected}")
    assert not wrong, "\n".join(wrong)


def test_refusals_say_why_without_naming_the_object(world: World) -> None:
    """A 404 for someone else's environment reads exactly like one for a missing id."""
    env_id = world.ids["env_id"]
    theirs = world.client.get(
        f"/api/v1/environments/{env_id}", headers=world.credentials["foreign"]
    )
    missing = world.client.get(
        "/api/v1/environments/env-000000000000", headers=world.credentials["foreign"]
    )
    assert theirs.status_code == missing.status_code == 404

    def shape(response: httpx.Response, object_id: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(response.text.replace(object_id, "{id}"))
        return {k: v for k, v in body.items() if k not in ("timestamp", "request_id")}

    assert shape(theirs, env_id) == shape(missing, "env-000000000000")
    assert re.search(r"not found|does not exist", theirs.json()["detail"], re.I)
