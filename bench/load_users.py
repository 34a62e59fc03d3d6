"""The locust users that bench/load.py runs: one request mix at a constant rate.

Not run by hand: bench/load.py starts ``locust -f bench/load_users.py --headless`` with
these variables set:

- LOAD_TOKEN: the admin's bearer token;
- LOAD_SANDBOXES: the ids of the warm sandboxes, comma-separated;
- LOAD_RATE: requests per second, over every user;
- LOAD_USERS: the number of users locust is told to start (``-u``);
- LOAD_OUT: where to write one JSON line per request at the end:
  ``[kind, name, milliseconds, status, start time]`` (status 0: no answer).

Each user runs one task a period, at fixed slots spread evenly over the users (see
``Mix.wait_time``): 70% reads (environments list and get,
tasks list, approvals list), 20% exec of ``true`` in a warm sandbox, 5% a create then a
destroy (two requests, so 10% of requests). A task is one request except the create and
destroy, so the task rate is the request rate / 1.05.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from typing import Any

import gevent
from locust import FastHttpUser, events, task

TOKEN = os.environ.get("LOAD_TOKEN", "")
SANDBOXES = [s for s in os.environ.get("LOAD_SANDBOXES", "").split(",") if s]
RATE = float(os.environ.get("LOAD_RATE", "1"))
USERS = int(os.environ.get("LOAD_USERS", "1"))
OUT = os.environ.get("LOAD_OUT", "")
REQUESTS_PER_TASK = (70 + 20 + 5 * 2) / 95
ENVIRONMENTS = "/api/v1/environments"

samples: list[list[Any]] = []


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float,
    response: Any = None,
    context: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    status = getattr(response, "status_code", 0) or 0
    kind = (context or {}).get("kind", "other")
    samples.append([kind, name, response_time, status, time.time() - response_time / 1000])


@events.quitting.add_listener
def _dump(**_: Any) -> None:
    if OUT:
        with open(OUT, "w") as sink:
            for sample in samples:
                sink.write(json.dumps(sample) + "\n")


# Each user runs one task every PERIOD seconds.
PERIOD = USERS * REQUESTS_PER_TASK / RATE
_started = itertools.count()


class Mix(FastHttpUser):
    def wait_time(self) -> float:
        """Until this user's next slot: its first one plus a whole number of periods.

        Not locust's ``constant_throughput``: that counts a user's first period from
        the moment its class was defined, so however the users are started, every
        one of them sends its second task in the same instant, and all the later ones
        too. The load is then one burst of USERS requests a period, not a rate (it
        measured 42 ms at the median for a route the daemon answers in 0.7 ms, the
        queue of its own burst)."""
        self.due += PERIOD
        return max(0.0, self.due - time.monotonic())

    network_timeout = 10.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {TOKEN}"}
        # The n-th user's slots are n/USERS of a period after the first user's: the
        # sends are spread evenly over each period, as wrk2 spreads them. A user whose
        # answer comes after its next slot sends at once, and so catches up.
        offset = PERIOD * (next(_started) % USERS) / USERS
        self.due = time.monotonic() + offset
        gevent.sleep(offset)

    def _request(self, kind: str, method: str, path: str, name: str, **kwargs: Any) -> Any:
        with self.client.request(
            method,
            path,
            name=name,
            headers=self.headers,
            context={"kind": kind},
            catch_response=True,
            **kwargs,
        ) as response:
            # Every answer is recorded by status in _record; none is a locust failure.
            response.success()
            return response

    @task(70 * 4)
    def read(self) -> None:
        choice = random.randrange(4)
        if choice == 0:
            self._request("read", "GET", ENVIRONMENTS, "GET environments")
        elif choice == 1:
            env_id = random.choice(SANDBOXES)
            self._request("read", "GET", f"{ENVIRONMENTS}/{env_id}", "GET environment")
        elif choice == 2:
            self._request("read", "GET", "/api/v1/tasks", "GET tasks")
        else:
            self._request("read", "GET", "/api/v1/approvals", "GET approvals")

    @task(20 * 4)
    def exec_true(self) -> None:
        env_id = random.choice(SANDBOXES)
        path = f"{ENVIRONMENTS}/{env_id}/exec"
        self._request("exec", "POST", path, "POST exec true", json={"command": ["true"]})

    @task(5 * 4)
    def create_and_destroy(self) -> None:
        created = self._request(
            "create", "POST", ENVIRONMENTS, "POST environment", json={"name": "load"}
        )
        if created.status_code != 201:
            return
        env_id = created.json()["id"]
        self._request(
            "destroy", "DELETE", f"{ENVIRONMENTS}/{env_id}?force=true", "DELETE environment"
        )
