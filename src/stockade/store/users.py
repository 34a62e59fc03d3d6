"""Queries on users."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from stockade.errors import Conflict
from stockade.store.database import Database
from stockade.store.records import User
from stockade.store.tables import users


def _user(row: sa.Row[tuple[object, ...]]) -> User:
    return User(**row._mapping)


class UserStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user: User) -> User:
        """Insert a user; a taken username raises Conflict."""
        values = {f: getattr(user, f) for f in User.__slots__}
        try:
            async with self._db.begin() as conn:
                await conn.execute(users.insert().values(**values))
        except IntegrityError as exc:
            raise Conflict(f"User {user.username!r} already exists") from exc
        return user

    async def get(self, user_id: str) -> User | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(users.select().where(users.c.id == user_id))).first()
        return _user(row) if row else None

    async def get_by_username(self, username: str) -> User | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(users.select().where(users.c.username == username))).first()
        return _user(row) if row else None

    async def list(self) -> list[User]:
        async with self._db.connect() as conn:
            rows = await conn.execute(users.select().order_by(users.c.created_at, users.c.id))
        return [_user(row) for row in rows]

    async def count(self) -> int:
        async with self._db.connect() as conn:
            return int(
                (await conn.execute(sa.select(sa.func.count()).select_from(users))).scalar_one()
            )
