"""One contract for the store: every test here runs unchanged on SQLite and PostgreSQL,
through the parametrized ``database_url`` fixture. Only the pragma tests at the end are
SQLite's own, because the pragmas are."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from stockade.errors import Conflict
from stockade.store import Store
from stockade.store.records import ApiKey, User
from stockade.store.tables import users as users_table

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
# The same instant as a wall-clock time five and a half hours east of UTC: the store must
# hand back T0, in UTC, whatever zone it was given.
T0_IN_KOLKATA = T0.astimezone(timezone(timedelta(hours=5, minutes=30)))


def user(username: str = "alice", *, created_at: datetime = T0, **changes: Any) -> User:
    made = User(
        id=f"user-{username}",
        username=username,
        email=f"{username}@example.test",
        role="user",
        password_hash=f"argon2-hash-of-{username}",
        created_at=created_at,
    )
    return dataclasses.replace(made, **changes)


def api_key(owner: User, name: str, *, created_at: datetime = T0, **changes: Any) -> ApiKey:
    made = ApiKey(
        id=f"key-{name}",
        user_id=owner.id,
        key_hash=f"{name:0>64}"[-64:],
        prefix=f"stk_{name}"[:16],
        description=f"the {name} key",
        permissions=[{"action": "exec", "resource": f"sandbox:{name}"}],
        created_at=created_at,
        expires_at=None,
        last_used_at=None,
        revoked_at=None,
    )
    return dataclasses.replace(made, **changes)


def assert_utc(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


@pytest.fixture
async def alice(store: Store) -> User:
    return await store.users.create(user("alice"))


# Users


async def test_created_user_reads_back_equal_by_id_and_by_username(store: Store) -> None:
    created = await store.users.create(user("alice"))

    assert await store.users.get("user-alice") == created
    assert await store.users.get_by_username("alice") == created


async def test_user_without_email_reads_back_none(store: Store) -> None:
    await store.users.create(user("bob", email=None))

    found = await store.users.get("user-bob")

    assert found is not None
    assert found.email is None


async def test_unknown_user_is_none(store: Store, alice: User) -> None:
    assert await store.users.get("user-nobody") is None
    assert await store.users.get_by_username("nobody") is None
    assert await store.users.get_by_username("ALICE") is None


async def test_user_created_at_comes_back_utc_and_equal(store: Store) -> None:
    await store.users.create(user("carol", created_at=T0_IN_KOLKATA))

    found = await store.users.get("user-carol")

    assert found is not None
    assert_utc(found.created_at)
    assert found.created_at == T0
    assert found.created_at.replace(tzinfo=None) == T0.replace(tzinfo=None)


async def test_naive_datetime_is_refused(store: Store) -> None:
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        await store.users.create(user("dave", created_at=T0.replace(tzinfo=None)))

    assert await store.users.count() == 0


async def test_duplicate_username_raises_conflict(store: Store, alice: User) -> None:
    with pytest.raises(Conflict, match="alice"):
        await store.users.create(user("alice", id="user-another-alice"))

    assert await store.users.count() == 1
    assert await store.users.get("user-another-alice") is None
    assert await store.users.get_by_username("alice") == alice


async def test_list_is_oldest_first_and_count_matches(store: Store) -> None:
    assert await store.users.list() == []
    assert await store.users.count() == 0
    middle = await store.users.create(user("mia", created_at=T0 + timedelta(hours=1)))
    newest = await store.users.create(user("nora", created_at=T0 + timedelta(hours=2)))
    oldest = await store.users.create(user("olga", created_at=T0))

    assert await store.users.list() == [oldest, middle, newest]
    assert await store.users.count() == 3


async def test_list_breaks_created_at_ties_by_id(store: Store) -> None:
    second = await store.users.create(user("zed", id="user-2"))
    first = await store.users.create(user("amy", id="user-1"))

    assert await store.users.list() == [first, second]


async def test_concurrent_creates_of_one_username_let_exactly_one_win(store: Store) -> None:
    start = asyncio.Event()

    async def create(candidate: User) -> User:
        await start.wait()
        return await store.users.create(candidate)

    candidates = [user("racer", id=f"user-racer-{n}") for n in range(2)]
    with anyio.fail_after(15):
        tasks = [asyncio.create_task(create(candidate)) for candidate in candidates]
        start.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)

    winners = [outcome for outcome in outcomes if isinstance(outcome, User)]
    losers = [outcome for outcome in outcomes if not isinstance(outcome, User)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], Conflict)
    assert await store.users.count() == 1
    assert await store.users.get_by_username("racer") == winners[0]


# API keys


async def test_created_key_reads_back_equal_by_hash(store: Store, alice: User) -> None:
    created = await store.api_keys.create(api_key(alice, "one"))

    assert await store.api_keys.get_by_hash(created.key_hash) == created


async def test_unknown_key_hash_is_none(store: Store, alice: User) -> None:
    await store.api_keys.create(api_key(alice, "one"))

    assert await store.api_keys.get_by_hash("f" * 64) is None


async def test_key_datetimes_come_back_utc_and_equal(store: Store, alice: User) -> None:
    key = api_key(
        alice,
        "dated",
        created_at=T0_IN_KOLKATA,
        expires_at=T0_IN_KOLKATA + timedelta(days=30),
    )
    await store.api_keys.create(key)

    found = await store.api_keys.get_by_hash(key.key_hash)

    assert found is not None
    assert_utc(found.created_at)
    assert_utc(found.expires_at)
    assert found.created_at == T0
    assert found.expires_at == T0 + timedelta(days=30)
    assert found.last_used_at is None
    assert found.revoked_at is None


async def test_permissions_round_trip(store: Store, alice: User) -> None:
    permissions = [
        {"action": "exec", "resource": "sandbox:*"},
        {"action": "read", "resource": "audit"},
        {"action": "approve", "resource": "plan:ünïcode ✓"},
    ]
    await store.api_keys.create(api_key(alice, "perms", permissions=permissions))

    found = await store.api_keys.get_by_hash(api_key(alice, "perms").key_hash)

    assert found is not None
    assert found.permissions == permissions


async def test_empty_permissions_round_trip(store: Store, alice: User) -> None:
    await store.api_keys.create(api_key(alice, "bare", permissions=[]))

    found = await store.api_keys.get_by_hash(api_key(alice, "bare").key_hash)

    assert found is not None
    assert found.permissions == []


async def test_duplicate_key_hash_is_refused(store: Store, alice: User) -> None:
    await store.api_keys.create(api_key(alice, "one"))

    with pytest.raises(sa.exc.IntegrityError):
        await store.api_keys.create(api_key(alice, "one", id="key-copy"))


async def test_key_for_unknown_user_is_refused(store: Store) -> None:
    ghost = user("ghost")

    with pytest.raises(sa.exc.IntegrityError):
        await store.api_keys.create(api_key(ghost, "orphan"))

    assert await store.api_keys.get_by_hash(api_key(ghost, "orphan").key_hash) is None


async def test_list_for_user_is_own_live_keys_oldest_first(store: Store, alice: User) -> None:
    bob = await store.users.create(user("bob"))
    middle = await store.api_keys.create(api_key(alice, "b", created_at=T0 + timedelta(hours=1)))
    newest = await store.api_keys.create(api_key(alice, "c", created_at=T0 + timedelta(hours=2)))
    oldest = await store.api_keys.create(api_key(alice, "a", created_at=T0))
    await store.api_keys.create(api_key(alice, "gone", revoked_at=T0 + timedelta(hours=3)))
    bobs = await store.api_keys.create(api_key(bob, "bobs"))

    assert await store.api_keys.list_for_user(alice.id) == [oldest, middle, newest]
    assert await store.api_keys.list_for_user(bob.id) == [bobs]
    assert await store.api_keys.list_for_user("user-nobody") == []


async def test_revoke_succeeds_once(store: Store, alice: User) -> None:
    key = await store.api_keys.create(api_key(alice, "one"))
    kept = await store.api_keys.create(api_key(alice, "two"))
    at = T0 + timedelta(days=1)

    assert await store.api_keys.revoke(key.id, alice.id, at) is True
    assert await store.api_keys.revoke(key.id, alice.id, at + timedelta(hours=1)) is False

    revoked = await store.api_keys.get_by_hash(key.key_hash)
    assert revoked is not None
    assert revoked.revoked_at == at
    assert_utc(revoked.revoked_at)
    assert await store.api_keys.list_for_user(alice.id) == [kept]


async def test_revoke_of_another_users_key_is_false(store: Store, alice: User) -> None:
    bob = await store.users.create(user("bob"))
    key = await store.api_keys.create(api_key(alice, "one"))

    assert await store.api_keys.revoke(key.id, bob.id, T0) is False
    assert await store.api_keys.revoke("key-nonexistent", alice.id, T0) is False

    assert await store.api_keys.get_by_hash(key.key_hash) == key
    assert await store.api_keys.list_for_user(alice.id) == [key]


async def test_touch_sets_last_used_at_on_that_key_only(store: Store, alice: User) -> None:
    key = await store.api_keys.create(api_key(alice, "used"))
    other = await store.api_keys.create(api_key(alice, "idle"))

    await store.api_keys.touch(key.id, T0_IN_KOLKATA + timedelta(minutes=5))
    touched = await store.api_keys.get_by_hash(key.key_hash)
    assert touched is not None
    assert_utc(touched.last_used_at)
    assert touched.last_used_at == T0 + timedelta(minutes=5)
    assert await store.api_keys.get_by_hash(other.key_hash) == other

    await store.api_keys.touch(key.id, T0 + timedelta(minutes=9))
    touched = await store.api_keys.get_by_hash(key.key_hash)
    assert touched is not None
    assert touched.last_used_at == T0 + timedelta(minutes=9)


async def test_deleting_a_user_deletes_their_keys(store: Store, alice: User) -> None:
    bob = await store.users.create(user("bob"))
    alices = await store.api_keys.create(api_key(alice, "alices"))
    bobs = await store.api_keys.create(api_key(bob, "bobs"))

    async with store.db.begin() as conn:
        result = await conn.execute(users_table.delete().where(users_table.c.id == alice.id))
        assert result.rowcount == 1

    assert await store.users.get(alice.id) is None
    assert await store.api_keys.get_by_hash(alices.key_hash) is None
    assert await store.api_keys.list_for_user(alice.id) == []
    assert await store.api_keys.get_by_hash(bobs.key_hash) == bobs


# Audit log


async def test_audit_entries_read_back_newest_first(store: Store) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    await store.audit.append("login", actor="user-alice")
    await store.audit.append("api_key.create", actor="user-alice", target="key-one")
    detail = {"prefix": "stk_one", "permissions": [{"action": "exec"}], "count": 2}
    await store.audit.append("api_key.revoke", actor=None, target="key-one", detail=detail)
    after = datetime.now(UTC) + timedelta(seconds=1)

    entries = await store.audit.list()

    assert [e.action for e in entries] == ["api_key.revoke", "api_key.create", "login"]
    assert [e.actor for e in entries] == [None, "user-alice", "user-alice"]
    assert [e.target for e in entries] == ["key-one", "key-one", None]
    assert [e.detail for e in entries] == [detail, None, None]
    assert entries[0].id > entries[1].id > entries[2].id
    for entry in entries:
        assert_utc(entry.at)
        assert before <= entry.at <= after


async def test_audit_limit_offset_and_count(store: Store) -> None:
    assert await store.audit.list() == []
    assert await store.audit.count() == 0
    for n in range(7):
        await store.audit.append(f"event-{n}", actor="user-alice")

    first_page = await store.audit.list(limit=3)
    second_page = await store.audit.list(limit=3, offset=3)
    last_page = await store.audit.list(limit=3, offset=6)

    assert [e.action for e in first_page] == ["event-6", "event-5", "event-4"]
    assert [e.action for e in second_page] == ["event-3", "event-2", "event-1"]
    assert [e.action for e in last_page] == ["event-0"]
    assert await store.audit.list(limit=3, offset=7) == []
    assert len(await store.audit.list()) == 7
    assert await store.audit.count() == 7


# The database


async def test_ping_answers_on_a_live_database(store: Store) -> None:
    await store.db.ping()


async def test_ping_raises_when_the_database_is_unreachable(store: Store, tmp_path: Path) -> None:
    if store.db.is_sqlite:
        url = f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'stockade.db'}"
    else:
        url = store.db.url.set(database="stockade_no_such_database").render_as_string(
            hide_password=False
        )
    broken = Store.from_url(url)
    try:
        with pytest.raises(sa.exc.DBAPIError):
            await broken.db.ping()
    finally:
        await broken.close()


async def test_open_twice_is_idempotent_and_keeps_data(store: Store, alice: User) -> None:
    key = await store.api_keys.create(api_key(alice, "one"))
    await store.audit.append("login", actor=alice.id)

    await store.open()

    assert await store.users.list() == [alice]
    assert await store.api_keys.list_for_user(alice.id) == [key]
    assert await store.audit.count() == 1
    async with store.db.connect() as conn:
        versions = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
    assert len(versions) == 1


async def test_a_second_store_on_the_same_database_sees_the_data(
    store: Store, alice: User, database_url: str
) -> None:
    second = Store.from_url(database_url)
    try:
        await second.open()
        assert await second.users.get_by_username("alice") == alice
    finally:
        await second.close()


# SQLite's own: the connect listener's pragmas


async def pragmas(conn: AsyncConnection) -> tuple[str, int, int]:
    journal_mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
    foreign_keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one()
    synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one()
    return journal_mode, foreign_keys, synchronous


async def sqlite_defaults(url: str) -> tuple[str, int, int]:
    """The pragmas a connection to ``url`` has without Stockade's connect listener."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await pragmas(conn)
    finally:
        await engine.dispose()


async def test_sqlite_pooled_connections_have_wal_and_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'stockade.db'}"
    # The control: a fresh file is in rollback-journal mode, without foreign keys and
    # with full syncs, so the values asserted below were set by the listener.
    assert await sqlite_defaults(url) == ("delete", 0, 2)
    store = Store.from_url(url)
    try:
        await store.open()
        async with AsyncExitStack() as stack:
            held = [await stack.enter_async_context(store.db.connect()) for _ in range(3)]
            assert store.db.pool.checkedout() == 3  # type: ignore[attr-defined]
            for conn in held:
                assert await pragmas(conn) == ("wal", 1, 1)
        async with store.db.begin() as conn:
            assert await pragmas(conn) == ("wal", 1, 1)
    finally:
        await store.close()
    # WAL lives in the file; foreign keys and synchronous are per connection.
    assert await sqlite_defaults(url) == ("wal", 0, 2)


async def test_sqlite_reads_run_on_the_callers_thread(tmp_path: Path) -> None:
    """Reads of a SQLite file start no thread (issue 7's load run: on aiosqlite, every
    read was two thread hops, each waiting for the GIL while the loop was busy, and the
    pool's overflow connections each started and ended a thread)."""
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'stockade.db'}")
    try:
        await store.open()
        alice = await store.users.create(user("alice"))
        threads = set(threading.enumerate())
        found = await asyncio.gather(*(store.users.get(alice.id) for _ in range(30)))
        assert found == [alice] * 30
        assert set(threading.enumerate()) == threads
        assert store.db.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await store.close()
