"""Collecting a streamed exec into seed 004's exec result."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stockade.sandbox.base import (
    ExecEvent,
    Exit,
    NetworkPolicy,
    Output,
    SandboxError,
    collect,
)


async def _events(*events: ExecEvent) -> AsyncIterator[ExecEvent]:
    for event in events:
        yield event


async def test_streams_are_kept_apart_and_the_exit_is_reported() -> None:
    result = await collect(
        _events(
            Output("stdout", b"hello "),
            Output("stderr", b"warning\n"),
            Output("stdout", b"world\n"),
            Exit(3),
        )
    )
    assert result.stdout == b"hello world\n"
    assert result.stderr == b"warning\n"
    assert result.exit_code == 3
    assert not result.timed_out
    assert result.duration_ms >= 0


async def test_output_past_the_limit_is_dropped_but_not_the_exit() -> None:
    result = await collect(
        _events(Output("stdout", b"x" * 10), Output("stdout", b"y" * 10), Exit(137, True)),
        limit=15,
    )
    assert result.stdout == b"x" * 10 + b"y" * 5
    assert (result.exit_code, result.timed_out) == (137, True)


async def test_an_exec_without_exit_is_an_error() -> None:
    with pytest.raises(SandboxError):
        await collect(_events(Output("stdout", b"partial")))


def test_no_network_unless_asked() -> None:
    assert NetworkPolicy().isolated
    assert not NetworkPolicy(allow_internet=True).isolated
    assert not NetworkPolicy(allowed_egress_cidrs=("10.0.0.0/8",)).isolated
