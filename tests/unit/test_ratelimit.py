"""Which category a request is charged to, and how windows are reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter

from stockade.api.ratelimit import RateLimiter, RateLimitExceeded, category_of
from stockade.settings import Settings

router = APIRouter()


@router.post("/things")
async def create_thing() -> None: ...


@router.post("/things/{id}/exec", openapi_extra={"x-rate-limit-category": "exec"})
async def exec_thing() -> None: ...


@router.post("/things/{id}")
async def answer_thing() -> None: ...


def _route(path: str) -> object:
    return next(r for r in router.routes if getattr(r, "path", None) == path)


@pytest.mark.parametrize(
    ("method", "path", "category"),
    [
        ("POST", "/things", "creation"),
        ("GET", "/things", "other"),
        ("POST", "/things/{id}/exec", "exec"),
        ("POST", "/things/{id}", "other"),
    ],
)
def test_category_of(method: str, path: str, category: str) -> None:
    assert category_of(method, _route(path)) == category  # type: ignore[arg-type]


def test_unmatched_requests_are_other() -> None:
    assert category_of("POST", None) == "other"


@pytest.mark.parametrize("storage", ["memory://", "async+memory://"])
async def test_windows_are_per_key_and_report_the_category(tmp_path: Path, storage: str) -> None:
    settings = Settings(home=tmp_path, rate_limit_exec="2/minute", rate_limit_storage=storage)
    limiter = RateLimiter(settings)
    first = await limiter.hit("exec", "user:a", per_token=True)
    assert (first.limit, first.remaining) == (2, 1)
    await limiter.hit("exec", "user:a")
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.hit("exec", "user:a")
    assert refused.value.quota.remaining == 0
    assert refused.value.retry_after >= 1
    assert (await limiter.hit("exec", "user:b")).remaining == 1
