"""AgentBox's environments (seed 004): create, list, get, delete, exec, logs, attach, and
our addition, file upload and download. Every environment is a sandbox of the daemon's
backend; ``services/sandboxes.py`` decides who reaches which."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Query, Request, Response, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from stockade.api.deps import WS_AUTH_PROTOCOL, principal_of, services_of
from stockade.api.errors import problem, responses, status_of
from stockade.errors import StockadeError
from stockade.sandbox.base import Exit, Output
from stockade.sandbox.quantities import format_bytes, format_cpu
from stockade.services.sandboxes import EnvironmentRequest, Usage
from stockade.store.records import Sandbox

router = APIRouter(prefix="/api/v1/environments", tags=["environments"])

EXEC = {"x-rate-limit-category": "exec"}
MAX_TIMEOUT = 30 * 24 * 3600
# A label key may carry a DNS prefix (`example.com/tier`), as in Kubernetes.
Labels = dict[str, str]


class ResourcesIn(BaseModel):
    cpu: str | None = Field(None, max_length=32, description='CPU limit, e.g. "500m" or "1".')
    memory: str | None = Field(None, max_length=32, description='Memory, e.g. "512Mi".')
    storage: str | None = Field(None, max_length=32, description='Writable storage, e.g. "1Gi".')


class NetworkPolicyIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    allow_internet: bool = False
    allowed_egress_cidrs: list[str] = Field(default_factory=list, max_length=64)
    allowed_ingress_ports: list[int] = Field(default_factory=list, max_length=64)
    allow_cluster_internal: bool = False


class SecurityContextIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    run_as_user: int | None = Field(None, ge=0, le=65534)
    run_as_group: int | None = Field(None, ge=0, le=65534)
    run_as_non_root: bool | None = None
    read_only_root_filesystem: bool = False
    allow_privilege_escalation: bool | None = None
    privileged: bool | None = None


class IsolationIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    runtime_class: str | None = Field(
        None, max_length=64, description="'runc' (or absent) for the namespace backend."
    )
    network_policy: NetworkPolicyIn | None = None
    security_context: SecurityContextIn | None = None


class EnvironmentIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "my-sandbox",
                    "image": "host",
                    "resources": {"cpu": "500m", "memory": "512Mi", "storage": "1Gi"},
                    "timeout": 3600,
                    "env": {"MY_VAR": "my-value"},
                    "labels": {"project": "my-project"},
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=253)
    image: str = Field("host", min_length=1, max_length=512, description="'host' is built in.")
    resources: ResourcesIn = Field(default_factory=ResourcesIn)
    timeout: int = Field(3600, gt=0, le=MAX_TIMEOUT, description="Lifetime in seconds.")
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    command: list[str] | None = Field(
        None, max_length=4096, description="A long-running main process; its output is the logs."
    )
    labels: Labels = Field(default_factory=dict, max_length=64)
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=64)
    tolerations: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    isolation: IsolationIn | None = None

    def request(self) -> EnvironmentRequest:
        isolation = self.isolation or IsolationIn()
        network = isolation.network_policy or NetworkPolicyIn()
        security = isolation.security_context or SecurityContextIn()
        return EnvironmentRequest(
            name=self.name,
            image=self.image,
            cpu=self.resources.cpu,
            memory=self.resources.memory,
            storage=self.resources.storage,
            timeout=self.timeout,
            env=self.env,
            command=self.command,
            labels=self.labels,
            runtime_class=isolation.runtime_class,
            allow_internet=network.allow_internet,
            allowed_egress_cidrs=network.allowed_egress_cidrs,
            run_as_user=security.run_as_user,
            run_as_group=security.run_as_group,
            run_as_non_root=security.run_as_non_root,
            read_only_root_filesystem=security.read_only_root_filesystem,
            allow_privilege_escalation=security.allow_privilege_escalation,
            privileged=security.privileged,
            raw=self.model_dump(mode="json"),
        )


class ResourcesOut(BaseModel):
    cpu: str
    memory: str
    storage: str


class UsageOut(BaseModel):
    cpu_usage: str = Field(description='Average CPU in use since the last look, e.g. "125m".')
    memory_usage: str = Field(description='Memory in use, e.g. "256Mi".')
    disk_usage: str | None = None
    processes: int = 0


class EnvironmentOut(BaseModel):
    id: str
    name: str
    status: Literal["pending", "running", "terminating", "terminated", "failed"]
    status_reason: str | None = None
    image: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime
    timeout: int
    resources: ResourcesOut
    metrics: UsageOut | None = None
    endpoint: str
    namespace: str
    env: dict[str, str]
    command: list[str] | None = None
    labels: dict[str, str]
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    isolation: dict[str, Any] | None = None
    backend: str
    spawn_time_ms: float | None = None

    @classmethod
    def of(
        cls, record: Sandbox, defaults: ResourcesOut, usage: Usage | None = None
    ) -> EnvironmentOut:
        spec = record.spec
        given = spec.get("resources") or {}
        return cls(
            id=record.id,
            name=record.name,
            status=record.status,
            status_reason=record.status_reason,
            image=record.image,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            expires_at=record.expires_at,
            timeout=record.timeout_seconds,
            resources=ResourcesOut(
                cpu=given.get("cpu") or defaults.cpu,
                memory=given.get("memory") or defaults.memory,
                storage=given.get("storage") or defaults.storage,
            ),
            metrics=None
            if usage is None
            else UsageOut(
                cpu_usage=format_cpu(round(usage.cpu_millicores)),
                memory_usage=format_bytes(usage.memory_bytes),
                disk_usage=None if usage.disk_bytes is None else format_bytes(usage.disk_bytes),
                processes=usage.processes,
            ),
            endpoint=f"{record.id}.sandbox.stockade.local",
            namespace=f"stockade-{record.id}",
            env=spec.get("env") or {},
            command=spec.get("command"),
            labels=record.labels,
            node_selector=spec.get("node_selector") or {},
            tolerations=spec.get("tolerations") or [],
            isolation=spec.get("isolation"),
            backend=record.backend,
            spawn_time_ms=record.spawn_time_ms,
        )


class EnvironmentList(BaseModel):
    environments: list[EnvironmentOut]
    total: int
    limit: int
    offset: int


class ExecIn(BaseModel):
    command: list[str] = Field(min_length=1, max_length=4096)
    timeout: float = Field(30, gt=0, le=24 * 3600, description="Seconds; then the tree is killed.")
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    working_dir: str | None = Field(None, max_length=4096)
    stdin: str | None = Field(None, description="Text fed to the command's stdin.")


class ExecOut(BaseModel):
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    timed_out: bool = False


class LogOut(BaseModel):
    timestamp: datetime | None = None
    stream: Literal["stdout", "stderr"]
    message: str


class LogList(BaseModel):
    logs: list[LogOut]


class FileOut(BaseModel):
    path: str
    size: int


class EntryOut(BaseModel):
    path: str
    size: int
    is_dir: bool
    mode: str
    modified: datetime


class Listing(BaseModel):
    path: str
    entries: list[EntryOut]


def _defaults(request: Request | WebSocket) -> ResourcesOut:
    settings = services_of(request).settings
    return ResourcesOut(
        cpu=settings.sandbox_cpu, memory=settings.sandbox_memory, storage=settings.sandbox_storage
    )


@router.post(
    "",
    status_code=201,
    response_model=EnvironmentOut,
    responses=responses(400, 401, 403, 422, 429, 503),
)
async def create_environment(body: EnvironmentIn, request: Request) -> EnvironmentOut:
    """Start a sandbox. It answers once the sandbox runs (status ``running``), or with
    status ``failed`` and ``status_reason`` when it could not start."""
    record = await services_of(request).sandboxes.create(principal_of(request), body.request())
    return EnvironmentOut.of(record, _defaults(request))


@router.get("", response_model=EnvironmentList, responses=responses(400, 401, 422, 429))
async def list_environments(
    request: Request,
    status: Literal["pending", "running", "terminating", "terminated", "failed"] | None = None,
    label: str | None = Query(None, max_length=1024, description="Selector, e.g. project=x"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10_000_000),
) -> EnvironmentList:
    """The environments you can reach, newest first."""
    records, total = await services_of(request).sandboxes.page(
        principal_of(request), status=status, label=label, limit=limit, offset=offset
    )
    defaults = _defaults(request)
    return EnvironmentList(
        environments=[EnvironmentOut.of(r, defaults) for r in records],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/{env_id}", response_model=EnvironmentOut, responses=responses(401, 404, 429))
async def get_environment(env_id: str, request: Request) -> EnvironmentOut:
    """One environment, with its current ``metrics`` while it runs."""
    sandboxes = services_of(request).sandboxes
    record = await sandboxes.get(principal_of(request), env_id)
    return EnvironmentOut.of(record, _defaults(request), await sandboxes.usage(record))


@router.delete(
    "/{env_id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 403, 404, 429),
)
async def delete_environment(
    env_id: str,
    request: Request,
    force: bool = Query(False, description="Kill at once instead of SIGTERM and a grace period."),
) -> Response:
    """Destroy the environment. It answers 204 once every process in it has been sent
    SIGKILL (``force=true``) or SIGTERM (otherwise; they get 5 s before SIGKILL); the
    environment says ``terminating`` until nothing of it is left on the host, then
    ``terminated``. Deleting it again is a 204 that changes nothing."""
    await services_of(request).sandboxes.delete(principal_of(request), env_id, force=force)
    return Response(status_code=204)


@router.post(
    "/{env_id}/exec",
    response_model=ExecOut,
    responses=responses(400, 401, 403, 404, 409, 422, 429),
    openapi_extra=EXEC,
)
async def exec_command(env_id: str, body: ExecIn, request: Request) -> ExecOut:
    """Run a command in the running environment and return its output. Past ``timeout``
    its whole process tree is killed, ``timed_out`` is true and ``exit_code`` is 137."""
    result = await services_of(request).sandboxes.exec(
        principal_of(request),
        env_id,
        body.command,
        timeout=body.timeout,
        env=body.env,
        cwd=body.working_dir,
        stdin=body.stdin.encode() if body.stdin is not None else None,
    )
    return ExecOut(
        stdout=result.stdout.decode(errors="replace"),
        stderr=result.stderr.decode(errors="replace"),
        exit_code=result.exit_code,
        duration_ms=round(result.duration_ms),
        timed_out=result.timed_out,
    )


@router.get(
    "/{env_id}/logs",
    response_model=LogList,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        **responses(401, 403, 404, 422, 429),
    },
)
async def environment_logs(
    env_id: str,
    request: Request,
    tail: int | None = Query(None, ge=0, le=100_000, description="Lines from the end."),
    timestamps: bool = True,
    follow: bool = Query(False, description="Stream as Server-Sent Events."),
) -> Any:
    """The output of the environment's ``command``. With ``follow=true``, an SSE stream
    of ``data: {timestamp, stream, message}`` until the environment ends."""
    lines = await services_of(request).sandboxes.logs(
        principal_of(request), env_id, tail=tail, follow=follow
    )

    def shape(line: Any) -> dict[str, Any]:
        body = {"stream": line.stream, "message": line.message}
        return {"timestamp": line.timestamp.isoformat(), **body} if timestamps else body

    if not follow:
        return LogList(logs=[LogOut(**shape(line)) async for line in lines])

    async def messages() -> AsyncIterator[dict[str, str]]:
        async for line in lines:
            yield {"data": json.dumps(shape(line))}

    return EventSourceResponse(messages(), ping=15)


@router.put(
    "/{env_id}/files",
    status_code=201,
    response_model=FileOut,
    responses=responses(400, 401, 403, 404, 409, 413, 429, 507),
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        }
    },
)
async def upload_file(
    env_id: str,
    request: Request,
    path: str = Query(..., min_length=1, max_length=4096, description="Path inside the sandbox."),
    mode: str = Query("644", pattern=r"^0?[0-7]{3,4}$", description="Octal permission bits."),
) -> FileOut:
    """Write the raw request body to ``path`` inside the environment (parents are made).
    Paths are confined to the sandbox: ``..`` is refused and a final symlink is not
    followed."""
    data = await request.body()
    target = await services_of(request).sandboxes.write_file(
        principal_of(request), env_id, path, data, int(mode, 8)
    )
    return FileOut(path=target, size=len(data))


@router.get(
    "/{env_id}/files",
    responses={
        200: {
            "description": "The file's bytes, or for a directory its listing.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": Listing.model_json_schema()},
            },
        },
        **responses(400, 401, 403, 404, 409, 413, 422, 429),
    },
)
async def download_file(
    env_id: str,
    request: Request,
    path: str = Query(..., min_length=1, max_length=4096, description="Path inside the sandbox."),
) -> Response:
    """The raw bytes of the file at ``path``, or a JSON listing when it is a directory."""
    found = await services_of(request).sandboxes.download(principal_of(request), env_id, path)
    if isinstance(found, bytes):
        return Response(found, media_type="application/octet-stream")
    listing = Listing(
        path=path,
        entries=[
            EntryOut(
                path=e.path, size=e.size, is_dir=e.is_dir, mode=oct(e.mode), modified=e.modified
            )
            for e in found
        ],
    )
    return Response(listing.model_dump_json(), media_type="application/json")


@router.websocket("/{env_id}/attach")
async def attach(websocket: WebSocket, env_id: str) -> None:
    """An interactive shell in the environment. Send ``{"type": "stdin", "data": …}``;
    receive ``{"type": "stdout"|"stderr", "data": …}`` and, when it ends,
    ``{"type": "exit", "exit_code": n}``. ``?command=`` (repeatable) runs something else
    than ``/bin/sh``."""
    offered = websocket.headers.get("sec-websocket-protocol", "")
    subprotocol = WS_AUTH_PROTOCOL if offered.startswith(WS_AUTH_PROTOCOL) else None
    argv = websocket.query_params.getlist("command") or ["/bin/sh"]
    sender, receiver = anyio.create_memory_object_stream[bytes](64)

    async def stdin() -> AsyncIterator[bytes]:
        async with receiver:
            async for data in receiver:
                yield data

    try:
        events = await services_of(websocket).sandboxes.attach(
            principal_of(websocket), env_id, argv, stdin()
        )
    except StockadeError as exc:
        # Refused before the upgrade, as an HTTP problem (404, 403, 409) where the server
        # can send one; otherwise the socket closes with 4000 + that status.
        sender.close()
        receiver.close()
        status = status_of(exc)
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(
                problem(status, exc.message, instance=websocket.url.path)
            )
        else:
            await websocket.close(code=4000 + status, reason=exc.message[:120])
        return
    await websocket.accept(subprotocol=subprotocol)
    async with contextlib.aclosing(events), anyio.create_task_group() as tasks:

        async def pump_stdin() -> None:
            async with sender:
                try:
                    while True:
                        message = await websocket.receive_json()
                        if not isinstance(message, dict) or message.get("type") != "stdin":
                            continue
                        data = message.get("data")
                        if isinstance(data, str):
                            await sender.send(data.encode())
                except (WebSocketDisconnect, ValueError):
                    tasks.cancel_scope.cancel()

        tasks.start_soon(pump_stdin)
        try:
            async for event in events:
                if isinstance(event, Output):
                    await websocket.send_json(
                        {"type": event.stream, "data": event.data.decode(errors="replace")}
                    )
                elif isinstance(event, Exit):
                    await websocket.send_json({"type": "exit", "exit_code": event.code})
        except StockadeError as exc:
            await websocket.send_json({"type": "error", "message": exc.message})
        tasks.cancel_scope.cancel()
    with contextlib.suppress(RuntimeError):
        await websocket.close()
