"""Fixtures shared by every tier: settings, a running app, and the two stores."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pydantic_ai.models
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from stockade.settings import Settings
from stockade.testing import TestApp, make_settings, running_app

PG_URL_VAR = "STOCKADE_TEST_DATABASE_URL"

# No test may reach a real language model: any model but a FunctionModel or TestModel
# raises instead of sending a request.
pydantic_ai.models.ALLOW_MODEL_REQUESTS = False


def postgres_url() -> str:
    """The throw-away cluster's URL. Its absence is an error, never a skip: run the
    suite through `make test` (or scripts/with-postgres)."""
    url = os.environ.get(PG_URL_VAR)
    if not url:
        pytest.fail(f"{PG_URL_VAR} is unset: run the suite with `make test`", pytrace=False)
    return url


async def reset_postgres(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        await conn.execute(sa.text("CREATE SCHEMA public"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database on each store: SQLite in a temporary file, and PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'stockade.db'}"
        return
    url = postgres_url()
    await reset_postgres(url)
    yield url


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "home")


@pytest.fixture
async def stockade(settings: Settings) -> AsyncIterator[TestApp]:
    """A started app on SQLite with an in-process client."""
    async with running_app(settings) as test_app:
        yield test_app


@pytest.fixture
async def admin_token(stockade: TestApp) -> str:
    return await stockade.login()
