"""Tasks, steps and approvals in the store, on SQLite and PostgreSQL alike. The answer to
an approval is the store's one race: exactly one of many concurrent answers may win."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from stockade.store import Store
from stockade.store.records import Approval, Task, TaskStep, User

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def task(owner: User, name: str, *, created_at: datetime = T0, **changes: Any) -> Task:
    made = Task(
        id=f"task-{name}",
        owner_id=owner.id,
        description=f"Delete old logs ({name})",
        status="running",
        require_approval=True,
        timeout_seconds=300,
        metadata={"invoice_date": "2025-02-17"},
        sandbox_id=None,
        pending_approval_id=None,
        result=None,
        error=None,
        history=None,
        deferred=None,
        created_at=created_at,
        started_at=created_at,
        finished_at=None,
    )
    return dataclasses.replace(made, **changes)


def approval(of: Task, name: str, *, expires_in: float = 300, **changes: Any) -> Approval:
    made = Approval(
        id=f"appr-{name}",
        task_id=of.id,
        owner_id=of.owner_id,
        tool_call_id=f"call-{name}",
        action_type="FileDelete",
        risk_level="high",
        description="Delete sensitive.key (2.5KB)",
        changes=[{"type": "FileDelete", "path": "config/sensitive.key", "size_bytes": 2560}],
        action_hash="a" * 64,
        status="pending",
        reason=None,
        created_at=T0,
        expires_at=T0 + timedelta(seconds=expires_in),
        responded_at=None,
        responded_by=None,
    )
    return dataclasses.replace(made, **changes)


@pytest.fixture
async def alice(store: Store) -> User:
    return await store.users.create(
        User(
            id="user-alice",
            username="alice",
            email=None,
            role="user",
            password_hash="x",
            created_at=T0,
        )
    )


async def test_a_task_reads_back_equal_with_its_json(store: Store, alice: User) -> None:
    made = task(alice, "one", history=[{"kind": "request", "parts": []}], deferred={"a": 1})
    await store.tasks.create(made)
    assert await store.tasks.get(made.id) == made
    assert await store.tasks.get("task-missing") is None


async def test_tasks_page_newest_first_with_status_and_owner(store: Store, alice: User) -> None:
    bob = await store.users.create(
        User(
            id="user-bob", username="bob", email=None, role="user", password_hash="x", created_at=T0
        )
    )
    for i in range(5):
        status = "completed" if i % 2 else "running"
        await store.tasks.create(
            task(alice, f"a{i}", created_at=T0 + timedelta(seconds=i), status=status)
        )
    await store.tasks.create(task(bob, "b0"))
    page, total = await store.tasks.page(owner_id=alice.id, limit=2, offset=1)
    assert total == 5
    assert [t.id for t in page] == ["task-a3", "task-a2"]
    done, total = await store.tasks.page(owner_id=alice.id, statuses=["completed"])
    assert (total, [t.id for t in done]) == (2, ["task-a3", "task-a1"])
    everyone, total = await store.tasks.page(owner_id=None)
    assert total == 6
    assert len(everyone) == 6


async def test_a_task_update_is_a_compare_and_set(store: Store, alice: User) -> None:
    made = await store.tasks.create(task(alice, "cas"))
    assert await store.tasks.update(made.id, only_from=["running"], status="completed")
    assert not await store.tasks.update(made.id, only_from=["running"], status="failed")
    assert (await store.tasks.get(made.id)).status == "completed"  # type: ignore[union-attr]


async def test_steps_come_back_in_order_and_a_repeat_is_refused(store: Store, alice: User) -> None:
    made = await store.tasks.create(task(alice, "steps"))
    for seq, outcome in enumerate(["ran", "awaiting_approval", "denied"]):
        await store.tasks.add_step(
            TaskStep(
                task_id=made.id,
                seq=seq,
                at=T0,
                tool="run_command",
                action_type="CommandExec",
                risk="high",
                outcome=outcome,
                detail={"command": "rm old.log"},
            )
        )
    steps = await store.tasks.steps(made.id)
    assert [s.outcome for s in steps] == ["ran", "awaiting_approval", "denied"]
    with pytest.raises(IntegrityError):
        await store.tasks.add_step(dataclasses.replace(steps[0], outcome="again"))


async def test_a_new_approval_makes_its_task_wait_on_it(store: Store, alice: User) -> None:
    made = await store.tasks.create(task(alice, "waits"))
    pending = await store.approvals.create(approval(made, "one"))
    assert await store.approvals.get(pending.id) == pending
    assert (await store.tasks.get(made.id)).pending_approval_id == pending.id  # type: ignore[union-attr]
    listed = await store.approvals.listing(owner_id=alice.id, statuses=["pending"])
    assert [a.id for a in listed] == [pending.id]
    assert await store.approvals.listing(owner_id="user-nobody") == []


async def test_fifty_concurrent_answers_have_exactly_one_winner(store: Store, alice: User) -> None:
    made = await store.tasks.create(task(alice, "race"))
    pending = await store.approvals.create(approval(made, "race"))
    answers = await asyncio.gather(
        *(
            store.approvals.answer(
                pending.id, approved=i % 2 == 0, reason=f"answer {i}", by=f"user-{i}", at=T0
            )
            for i in range(50)
        )
    )
    winners = [a for a in answers if a.won]
    assert len(winners) == 1
    assert all(a.refused == "answered" for a in answers if not a.won)
    stored = await store.approvals.get(pending.id)
    assert stored is not None
    winner = winners[0].approval
    assert winner is not None
    assert stored.status == winner.status
    assert stored.status in ("approved", "denied")
    assert stored.responded_by == winner.responded_by
    assert stored.responded_at == T0
    # The task stopped waiting on it in the same transaction: one resume, not fifty.
    assert (await store.tasks.get(made.id)).pending_approval_id is None  # type: ignore[union-attr]


async def test_an_answer_after_expiry_is_refused_and_changes_nothing(
    store: Store, alice: User
) -> None:
    made = await store.tasks.create(task(alice, "late"))
    pending = await store.approvals.create(approval(made, "late", expires_in=60))
    late = await store.approvals.answer(
        pending.id, approved=True, reason=None, by="user-alice", at=T0 + timedelta(seconds=60)
    )
    assert late.refused == "expired"
    stored = await store.approvals.get(pending.id)
    assert stored is not None
    assert stored.status == "pending"
    assert (await store.tasks.get(made.id)).pending_approval_id == pending.id  # type: ignore[union-attr]
    expired = await store.approvals.expire_due(T0 + timedelta(seconds=61))
    assert [a.status for a in expired] == ["expired"]
    again = await store.approvals.answer(
        pending.id, approved=True, reason=None, by="user-alice", at=T0 + timedelta(seconds=62)
    )
    assert again.refused == "expired"
    assert await store.approvals.expire_due(T0 + timedelta(seconds=63)) == []


async def test_an_answer_to_nothing_is_missing(store: Store) -> None:
    answer = await store.approvals.answer(
        "appr-none", approved=True, reason=None, by="user-alice", at=T0
    )
    assert answer.refused == "missing"
    assert answer.approval is None


async def test_pausing_stores_the_approvals_and_the_wait_together(
    store: Store, alice: User
) -> None:
    made = await store.tasks.create(task(alice, "pause"))
    first, second = approval(made, "p1"), approval(made, "p2")
    assert await store.tasks.pause(made.id, [first, second], history=[{"n": 1}], deferred={"d": 1})
    paused = await store.tasks.get(made.id)
    assert paused is not None
    assert (paused.status, paused.pending_approval_id) == ("waiting", first.id)
    assert paused.history == [{"n": 1}]
    assert [a.id for a in await store.approvals.for_task(made.id)] == [first.id, second.id]
    # A task no longer running (cancelled meanwhile) stores nothing.
    gone = await store.tasks.create(task(alice, "gone", status="cancelled"))
    assert not await store.tasks.pause(gone.id, [approval(gone, "g1")], history=[])
    assert await store.approvals.for_task(gone.id) == []


async def test_a_waiting_task_is_resumed_once_and_only_when_every_approval_is_answered(
    store: Store, alice: User
) -> None:
    made = await store.tasks.create(task(alice, "claim"))
    first, second = approval(made, "c1"), approval(made, "c2")
    await store.tasks.pause(made.id, [first, second], history=[])
    at = T0 + timedelta(seconds=1)
    await store.approvals.answer(first.id, approved=True, reason=None, by=alice.id, at=at)
    assert not await store.tasks.claim_resume(made.id)  # the second is still pending
    await store.approvals.answer(second.id, approved=False, reason="no", by=alice.id, at=at)
    claims = await asyncio.gather(*(store.tasks.claim_resume(made.id) for _ in range(20)))
    assert sorted(claims) == [False] * 19 + [True]
    resumed = await store.tasks.get(made.id)
    assert resumed is not None
    assert (resumed.status, resumed.pending_approval_id) == ("running", None)


async def test_cancelling_withdraws_only_pending_approvals(store: Store, alice: User) -> None:
    made = await store.tasks.create(task(alice, "cancel"))
    first, second = approval(made, "w1"), approval(made, "w2")
    await store.tasks.pause(made.id, [first, second], history=[])
    at = T0 + timedelta(seconds=1)
    await store.approvals.answer(first.id, approved=True, reason=None, by=alice.id, at=at)
    assert await store.approvals.cancel_pending(made.id, at) == [second.id]
    statuses = {a.id: a.status for a in await store.approvals.for_task(made.id)}
    assert statuses == {first.id: "approved", second.id: "cancelled"}
    assert await store.tasks.counts() == {"waiting": 1}
