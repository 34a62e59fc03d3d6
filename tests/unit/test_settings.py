"""Settings: defaults, environment variables, and the state directory."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from stockade.settings import DEFAULT_CORS_ORIGINS, Settings, default_home


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STOCKADE_HOST", "STOCKADE_PORT", "STOCKADE_HOME", "STOCKADE_CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.metrics_port is None
    assert settings.cors_origins == DEFAULT_CORS_ORIGINS
    assert settings.home == default_home()
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{default_home()}/stockade.db"


def test_home_default_depends_on_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_home() == Path("/var/lib/stockade")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert default_home() == Path.home() / ".local/share/stockade"


def test_environment_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STOCKADE_PORT", "9999")
    monkeypatch.setenv("STOCKADE_CORS_ORIGINS", "http://a.test, http://b.test http://c.test")
    monkeypatch.setenv("STOCKADE_DATABASE_URL", "postgresql+asyncpg://u:p@db/stockade")
    monkeypatch.setenv("STOCKADE_RATE_LIMIT_EXEC", "5/second")
    settings = Settings(home=tmp_path)
    assert settings.port == 9999
    assert settings.cors_origins == ["http://a.test", "http://b.test", "http://c.test"]
    assert settings.resolved_database_url == "postgresql+asyncpg://u:p@db/stockade"
    assert settings.rate_limit_exec == "5/second"


def test_ensure_home_is_private(tmp_path: Path) -> None:
    home = tmp_path / "a" / "state"
    home.parent.mkdir()
    home.mkdir(mode=0o755)
    Settings(home=home).ensure_home()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_a_bad_rate_limit_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_RATE_LIMIT_AUTH", "lots")
    with pytest.raises(ValueError, match="rate_limit_auth") as error:
        Settings()
    assert "is not a rate limit such as '10/minute'" in str(error.value)
