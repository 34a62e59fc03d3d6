"""Acceptance 2: seed 002's three "Custom Task Code" examples, read from the seed at test
time, added through ``POST /daemon/tasks/add`` and run in real sandboxes (in-process).
Their results are read back from the job's history.

Job code is data for the daemon: it runs only inside a sandbox, never on the host.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from stockade.events import Subscription
from stockade.testing import (
    ADMIN_PASSWORD,
    TestApp,
    basic_auth,
    make_settings,
    running_app,
    task_event,
)
from tests.seeds import seed_text

AUTH = basic_auth("admin", ADMIN_PASSWORD)
ENDED = ("job.run.completed", "job.run.failed", "job.run.interrupted")


def example(number: int) -> str:
    """The ```python block after seed 002's "**Example <number>" heading."""
    text = seed_text("002")
    start = text.index(f"**Example {number}")
    found = re.search(r"```python\n(.*?)\n```", text[start:], re.DOTALL)
    assert found, f"no python block after Example {number}"
    return found.group(1)


@pytest.fixture
async def stockade(tmp_path: Path) -> AsyncIterator[TestApp]:
    async with running_app(make_settings(tmp_path / "home")) as app:
        yield app


@pytest.fixture
def events(stockade: TestApp) -> Iterator[Subscription]:
    subscription = stockade.services.events.subscribe(["job."])
    yield subscription
    subscription.close()


async def run_once(app: TestApp, events: Subscription, task_id: str, **body: Any) -> dict[str, Any]:
    """Add a CRITICAL job (it runs at once), wait for its run to end and return the run
    as ``GET /daemon/tasks/{task_id}/history`` shows it."""
    job = {
        "task_id": task_id,
        "name": task_id.replace("_", " ").title(),
        "description": "seed 002 example",
        "priority": "CRITICAL",
        **body,
    }
    added = await app.client.post("/daemon/tasks/add", json=job, headers=AUTH)
    assert added.status_code == 200, added.text
    assert added.json()["status"] == "task_added"
    await task_event(events, ENDED, task_id, within=60)
    history = await app.client.get(f"/daemon/tasks/{task_id}/history", headers=AUTH)
    assert history.status_code == 200, history.text
    runs: list[dict[str, Any]] = history.json()["runs"]
    assert len(runs) == 1, runs
    return runs[0]


async def test_example_1_simple_task_returns_its_dict_and_prints(
    stockade: TestApp, events: Subscription
) -> None:
    code = example(1)
    assert 'print("Hello from custom task!")' in code
    run = await run_once(stockade, events, "example_1", code=code)
    assert run["status"] == "completed", run
    assert run["result"] == {"status": "completed"}
    assert run["error"] is None
    assert "Hello from custom task!" in run["logs"]
    assert run["trigger"] == "schedule"
    listed = await stockade.client.get("/daemon/tasks", headers=AUTH)
    (job,) = listed.json()["tasks"]
    assert (job["execution_count"], job["success_count"], job["failure_count"]) == (1, 1, 0)
    assert job["last_result"] == {"status": "completed"}


async def test_example_2_sees_the_sandbox_workspace_not_the_host(
    stockade: TestApp, events: Subscription
) -> None:
    code = example(2)
    assert 'os.getenv("OMNIMIND_WORKSPACE", ".")' in code
    run = await run_once(stockade, events, "example_2", code=code)
    assert run["status"] == "completed", run
    result = run["result"]
    assert result["status"] == "completed"
    # OMNIMIND_WORKSPACE is set inside the sandbox: its home, not the "." default.
    assert result["workspace"] == "/home/sandbox"
    # The same directory counted by a shell in another fresh job sandbox.
    counted = await run_once(
        stockade, events, "count_home", command='ls -A "$OMNIMIND_WORKSPACE" | wc -l'
    )
    assert counted["status"] == "completed", counted
    assert result["file_count"] == int(counted["result"]["stdout"]) == 0
    # On the host, the daemon's home (the status's "workspace") and this process's
    # working directory are full: had the code run here, it would have counted them.
    home = stockade.services.settings.home
    assert len(os.listdir(home)) > 0
    assert len(os.listdir(os.getcwd())) > 0
    status = await stockade.client.get("/daemon/status", headers=AUTH)
    assert status.json()["workspace"] == str(home)


async def test_example_3_async_task_is_awaited(stockade: TestApp, events: Subscription) -> None:
    code = example(3)
    assert code.startswith("async def execute():")
    run = await run_once(stockade, events, "example_3", code=code)
    assert run["status"] == "completed", run
    assert run["result"] == {"status": "completed", "waited": "1 second"}
    # execute()'s coroutine was awaited: its second of sleep lies inside the run.
    started = datetime.fromisoformat(run["code_started_at"])
    finished = datetime.fromisoformat(run["finished_at"])
    assert finished - started >= timedelta(seconds=1)
