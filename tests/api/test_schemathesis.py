"""Schemathesis fuzzes every HTTP operation in /openapi.json, in-process, as the admin.

The schema is loaded with ``schemathesis.openapi.from_asgi`` when this module is
collected, because ``@schema.parametrize()`` needs it then (``from_fixture`` does not
work with pytest 9.2: it writes ``Node._nodeid``, which pytest no longer has).

Schemathesis reaches an ASGI app through its own client: every request, and the app's
lifespan, run on one event loop in one background thread. Loading the schema starts
the lifespan there (migrations, then the first admin), so the database connections are
used only on the loop that opened them. Schemathesis's pytest plugin ends every
lifespan after each test, and the next request starts it again on the same loop, on
the same database file.

Every request carries the admin's bearer token; ``ignored_auth`` sends each request
that succeeded again, with no credentials and with wrong ones. The stateful test
follows the schema's links (``stockade.api.links``) and those Schemathesis infers. A failure
fails the test with Schemathesis's report and a curl line to reproduce it.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import settings
from schemathesis.python import asgi

from stockade.api.app import create_app
from stockade.services import Services
from stockade.testing import ADMIN_PASSWORD, bearer, fast_passwords, make_settings
from tests.fuzz import CHECKS, FUZZED_DAEMON, HYPOTHESIS, run_workflow

HOME = Path(tempfile.mkdtemp(prefix="stockade-schemathesis-")) / "home"
# Registered before Schemathesis registers its own exit handler, so it runs after that
# handler has stopped the app: the directory goes even when no test here was selected.
atexit.register(shutil.rmtree, HOME.parent, ignore_errors=True)
SETTINGS = make_settings(HOME, **FUZZED_DAEMON)
APP = create_app(SETTINGS, services=Services.build(SETTINGS, passwords=fast_passwords()))

# GET /api/v1/events is Server-Sent Events: the stream never ends, so each request to it
# would only stop at its timeout. Every other operation is fuzzed.
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(
    method="GET", path="/api/v1/events"
)


@functools.cache
def admin_token() -> str:
    """Log in as the admin through the same in-process client, once."""
    login = schema["/api/v1/auth/login"]["POST"]
    response = login.Case(body={"username": "admin", "password": ADMIN_PASSWORD}).call()
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


@pytest.fixture(scope="module", autouse=True)
def _stop_app() -> Iterator[None]:
    """End the app's lifespan after the last test here, whatever the plugin does."""
    yield
    asgi.shutdown_lifespans()


@schema.parametrize()
@settings(max_examples=40, **HYPOTHESIS)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=bearer(admin_token()), checks=CHECKS)


def test_api_workflow_conforms_to_its_schema() -> None:
    """Sequences of calls, each fed by an earlier response, as the admin."""
    run = settings(max_examples=25, stateful_step_count=6, **HYPOTHESIS)
    outcome = run_workflow(schema, headers=lambda: bearer(admin_token()), run=run)
    assert not outcome.failures, "\n\n".join(outcome.failures.values())
    assert outcome.scenarios >= 25
