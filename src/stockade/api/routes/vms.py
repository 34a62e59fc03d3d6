"""LuminaGuard's VMs (seed 000): the same sandboxes as the environments, in another shape."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from stockade.api.deps import principal_of, services_of
from stockade.api.errors import responses
from stockade.services.sandboxes import SandboxService, Usage
from stockade.store.records import Sandbox

router = APIRouter(prefix="/api/v1/vms", tags=["vms"])


class ResourceUsage(BaseModel):
    memory_mb: float
    cpu_percent: float
    disk_mb: float


class VmOut(BaseModel):
    id: str
    status: str
    type: str
    created_at: datetime
    resource_usage: ResourceUsage
    spawn_time_ms: float | None

    @classmethod
    def of(cls, record: Sandbox, usage: Usage | None) -> VmOut:
        return cls(
            id=record.id,
            status=record.status,
            type=record.backend,
            created_at=record.created_at,
            resource_usage=ResourceUsage(
                memory_mb=round(usage.memory_bytes / 2**20, 1) if usage else 0.0,
                cpu_percent=round(usage.cpu_millicores / 10, 1) if usage else 0.0,
                disk_mb=round((usage.disk_bytes or 0) / 2**20, 1) if usage else 0.0,
            ),
            spawn_time_ms=record.spawn_time_ms,
        )


async def _shape(sandboxes: SandboxService, record: Sandbox) -> VmOut:
    return VmOut.of(record, await sandboxes.usage(record))


@router.get("", response_model=list[VmOut], responses=responses(401, 429))
async def list_vms(request: Request) -> list[VmOut]:
    """The sandboxes you can reach that are alive (pending, running or terminating)."""
    sandboxes = services_of(request).sandboxes
    records = await sandboxes.active(principal_of(request))
    return [await _shape(sandboxes, r) for r in records]


@router.get("/{vm_id}", response_model=VmOut, responses=responses(401, 404, 429))
async def get_vm(vm_id: str, request: Request) -> VmOut:
    sandboxes = services_of(request).sandboxes
    return await _shape(sandboxes, await sandboxes.get(principal_of(request), vm_id))


@router.delete(
    "/{vm_id}", status_code=204, response_class=Response, responses=responses(401, 403, 404, 429)
)
async def destroy_vm(vm_id: str, request: Request) -> Response:
    """Force-terminate the sandbox: every process in it is sent SIGKILL before the 204;
    its remains are cleaned up just after (it says ``terminating`` until then)."""
    await services_of(request).sandboxes.delete(principal_of(request), vm_id, force=True)
    return Response(status_code=204)
