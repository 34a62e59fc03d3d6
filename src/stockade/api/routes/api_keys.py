"""API keys, as seed 004 documents them: listed, created (shown once) and revoked."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from stockade.api.deps import principal_of, services_of
from stockade.api.errors import responses
from stockade.services.principal import Permission
from stockade.store.records import ApiKey

router = APIRouter(prefix="/api/v1/api-keys", tags=["api-keys"])


class KeyPermission(BaseModel):
    environment_id: str = Field(min_length=1, max_length=64)
    permission: Permission


class ApiKeyIn(BaseModel):
    description: str | None = Field(None, max_length=1024)
    expires_in: int | None = Field(
        None, ge=1, le=3650, description="Days until the key expires; null for never."
    )
    permissions: list[KeyPermission] = Field(
        default_factory=list,
        max_length=256,
        description="Limit the key to these environments; empty for all of the user's.",
    )


class ApiKeyOut(BaseModel):
    id: str
    description: str | None
    prefix: str = Field(description="The key's first characters, to recognise it by.")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    permissions: list[KeyPermission]

    @classmethod
    def of(cls, record: ApiKey) -> ApiKeyOut:
        return cls(
            id=record.id,
            description=record.description,
            prefix=record.prefix,
            created_at=record.created_at,
            expires_at=record.expires_at,
            last_used_at=record.last_used_at,
            permissions=[KeyPermission.model_validate(p) for p in record.permissions],
        )


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="The key itself. It is shown only this once.")


class ApiKeyList(BaseModel):
    api_keys: list[ApiKeyOut]


@router.get("", response_model=ApiKeyList, responses=responses(401, 403, 429))
async def list_api_keys(request: Request) -> ApiKeyList:
    """Your API keys that have not been revoked."""
    keys = await services_of(request).auth.list_keys(principal_of(request))
    return ApiKeyList(api_keys=[ApiKeyOut.of(k) for k in keys])


@router.post(
    "",
    status_code=201,
    response_model=NewApiKeyOut,
    responses=responses(400, 401, 403, 422, 429),
)
async def create_api_key(body: ApiKeyIn, request: Request) -> NewApiKeyOut:
    """Create a key. The ``key`` field is returned once; store it."""
    new = await services_of(request).auth.create_key(
        principal_of(request),
        description=body.description,
        expires_in_days=body.expires_in,
        permissions=[(p.environment_id, p.permission) for p in body.permissions],
    )
    return NewApiKeyOut(**ApiKeyOut.of(new.record).model_dump(), key=new.key)


@router.delete(
    "/{key_id}",
    status_code=204,
    response_class=Response,
    responses=responses(401, 403, 404, 429),
)
async def revoke_api_key(key_id: str, request: Request) -> Response:
    """Revoke a key; it is refused with 401 from then on."""
    await services_of(request).auth.revoke_key(principal_of(request), key_id)
    return Response(status_code=204)
