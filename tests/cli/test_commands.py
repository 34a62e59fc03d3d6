"""The ``stockade`` command line: help, version, users, and clear errors."""

from __future__ import annotations

import gc
import os
import re
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from stockade import __version__
from stockade.cli.main import app, serve

runner = CliRunner()

DAEMON_FLAGS = {
    "--host": "STOCKADE_HOST",
    "--port": "STOCKADE_PORT",
    "--metrics-port": "STOCKADE_METRICS_PORT",
    "--tls-cert": "STOCKADE_TLS_CERT",
    "--tls-key": "STOCKADE_TLS_KEY",
    "--cors-origin": "STOCKADE_CORS_ORIGINS",
    "--log-format": "STOCKADE_LOG_FORMAT",
    "--home": "STOCKADE_HOME",
}


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_daemon_help_names_every_flag_and_its_variable() -> None:
    result = runner.invoke(app, ["daemon", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = _plain(result.output)
    for flag, variable in DAEMON_FLAGS.items():
        assert flag in text
        assert variable in text


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == __version__


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "daemon" in _plain(result.output)
    assert "version" in _plain(result.output)


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["daemon", "--port", "99999", "--home", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "STOCKADE_PORT" in _plain(result.output)
    assert "Traceback" not in result.output


def test_tls_flags_must_come_together(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    result = runner.invoke(app, ["daemon", "--tls-cert", str(cert), "--home", str(tmp_path)])
    assert result.exit_code == 2
    assert "--tls-cert and --tls-key must be given together" in _plain(result.output)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("STOCKADE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STOCKADE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("NEW_PASSWORD", "frank-password")
    return tmp_path / "state"


def test_user_add_then_duplicate(home: Path) -> None:
    made = runner.invoke(
        app, ["user", "add", "frank", "--role", "admin", "--password-env", "NEW_PASSWORD"]
    )
    assert made.exit_code == 0, made.output
    assert "created admin 'frank'" in made.output
    again = runner.invoke(app, ["user", "add", "frank", "--password-env", "NEW_PASSWORD"])
    assert again.exit_code == 1
    assert "User 'frank' already exists" in _plain(again.output)


def test_user_add_refuses_a_short_password(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEW_PASSWORD", "short")
    result = runner.invoke(app, ["user", "add", "gina", "--password-env", "NEW_PASSWORD"])
    assert result.exit_code == 1
    assert "at least 8 characters" in _plain(result.output)


def test_the_daemon_serves_with_its_start_up_heap_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 7's load run: full collections walked the whole start-up heap and held the
    loop for 150-240 ms; frozen before serving, they walk only what came after."""
    seen: list[int] = []

    class Server:
        def __init__(self, config: object) -> None:
            self.config = config

        def run(self) -> None:
            seen.append(gc.get_freeze_count())

    monkeypatch.setattr(uvicorn, "Server", Server)
    gc.unfreeze()
    try:
        serve(uvicorn.Config("app:app"))
    finally:
        gc.unfreeze()
    assert len(seen) == 1
    assert seen[0] > 10_000
