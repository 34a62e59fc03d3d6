"""Wire models shared by several routers. Each dialect's own models live in its router."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from stockade.store.records import User


class UserOut(BaseModel):
    """A user as seeds 003 and 004 show one."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": "user-1a2b3c4d5e6f", "username": "admin", "email": None, "role": "admin"}
            ]
        }
    )

    id: str
    username: str
    email: str | None = None
    role: str = Field(description="admin or user")
    created_at: datetime | None = None

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            id=user.id,
            username=user.username,
            email=user.email,
            role=user.role,
            created_at=user.created_at,
        )
