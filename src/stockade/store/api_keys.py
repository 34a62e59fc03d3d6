"""Queries on API keys. Only a key's SHA-256 is stored; the key itself is shown once."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from stockade.store.database import Database
from stockade.store.records import ApiKey
from stockade.store.tables import api_keys


def _key(row: sa.Row[tuple[object, ...]]) -> ApiKey:
    values = dict(row._mapping)
    values["permissions"] = values["permissions"] or []
    return ApiKey(**values)


class ApiKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, key: ApiKey) -> ApiKey:
        values = {f: getattr(key, f) for f in ApiKey.__slots__}
        async with self._db.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))
        return key

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, revoked or not; the caller judges validity."""
        async with self._db.connect() as conn:
            query = api_keys.select().where(api_keys.c.key_hash == key_hash)
            row = (await conn.execute(query)).first()
        return _key(row) if row else None

    async def list_for_user(self, user_id: str) -> list[ApiKey]:
        """The user's keys that have not been revoked, oldest first."""
        query = (
            api_keys.select()
            .where(api_keys.c.user_id == user_id, api_keys.c.revoked_at.is_(None))
            .order_by(api_keys.c.created_at, api_keys.c.id)
        )
        async with self._db.connect() as conn:
            return [_key(row) for row in await conn.execute(query)]

    async def revoke(self, key_id: str, user_id: str, at: datetime) -> bool:
        """Revoke the user's key; False when there is no such live key of theirs."""
        query = (
            api_keys.update()
            .where(
                api_keys.c.id == key_id,
                api_keys.c.user_id == user_id,
                api_keys.c.revoked_at.is_(None),
            )
            .values(revoked_at=at)
        )
        async with self._db.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def touch(self, key_id: str, at: datetime) -> None:
        """Record a use of the key."""
        query = api_keys.update().where(api_keys.c.id == key_id).values(last_used_at=at)
        async with self._db.begin() as conn:
            await conn.execute(query)
