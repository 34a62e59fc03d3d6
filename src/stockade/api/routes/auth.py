"""Logins, the current user, and users (seeds 003 and 004)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, EmailStr, Field

from stockade.api.deps import PUBLIC, principal_of, services_of
from stockade.api.errors import responses
from stockade.api.middleware import client_address
from stockade.api.models import UserOut
from stockade.api.ratelimit import CATEGORY_KEY
from stockade.services.principal import Role

router = APIRouter(tags=["auth"])


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=128)
    password: str = Field(min_length=1, max_length=1024)


class LoginOut(BaseModel):
    """Seed 004's body (token, expires_at, user) with seed 003's (username, expires)."""

    token: str
    expires_at: datetime
    expires: datetime
    username: str
    user: UserOut


class MeOut(UserOut):
    auth_method: str = Field(description="jwt, api_key or basic")
    api_key_id: str | None = None


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")
    password: str = Field(min_length=8, max_length=1024)
    email: EmailStr | None = None
    role: Role = Role.USER


async def _login(body: LoginIn, request: Request) -> LoginOut:
    login = await services_of(request).auth.login(
        body.username, body.password, client=client_address(request.scope)
    )
    expires = login.token.expires_at
    return LoginOut(
        token=login.token.token,
        expires_at=expires,
        expires=expires,
        username=login.user.username,
        user=UserOut.of(login.user),
    )


_login_doc: dict[str, Any] = {
    "response_model": LoginOut,
    "responses": responses(400, 401, 422, 429),
    "openapi_extra": {**PUBLIC, CATEGORY_KEY: "auth"},
}
router.add_api_route(
    "/api/v1/auth/login", _login, methods=["POST"], summary="Log in (seed 004)", **_login_doc
)
router.add_api_route(
    "/v1/auth/login",
    _login,
    methods=["POST"],
    summary="Log in (seed 003)",
    operation_id="login_v1",
    **_login_doc,
)


@router.get(
    "/api/v1/auth/me",
    response_model=MeOut,
    responses=responses(401, 429),
    summary="The current user",
)
async def me(request: Request) -> MeOut:
    principal = principal_of(request)
    user = await services_of(request).auth.current_user(principal)
    return MeOut(
        id=user.id,
        username=user.username,
        email=user.email,
        role=user.role,
        created_at=user.created_at,
        auth_method=principal.method,
        api_key_id=principal.key_id,
    )


@router.post(
    "/api/v1/users",
    status_code=201,
    response_model=UserOut,
    responses=responses(400, 401, 403, 409, 422, 429),
    summary="Create a user (admin only)",
)
async def create_user(body: UserIn, request: Request) -> UserOut:
    user = await services_of(request).users.create(
        body.username,
        body.password,
        role=body.role,
        email=body.email,
        actor=principal_of(request),
    )
    return UserOut.of(user)
