"""One settings object, built once at start-up and passed down.

Every field reads a ``STOCKADE_*`` environment variable of the same name in upper case
(``port`` reads ``STOCKADE_PORT``). The CLI's flags override the environment. No module
keeps a settings global: ``create_app(settings)`` receives it and hands it to what needs it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from limits import parse_many
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stockade.errors import InvalidInput
from stockade.sandbox.quantities import parse_bytes, parse_cpu

# Seed 001 (Luna) documents these origins for its Tauri desktop client; allowing them by
# default lets that client talk to Stockade unchanged. `--cors-origin` replaces the list.
DEFAULT_CORS_ORIGINS = ["http://localhost:1420", "http://tauri.localhost", "tauri://localhost"]


def default_home() -> Path:
    """``/var/lib/stockade`` for root, ``~/.local/share/stockade`` for everyone else."""
    if os.geteuid() == 0:
        return Path("/var/lib/stockade")
    return Path.home() / ".local" / "share" / "stockade"


class Settings(BaseSettings):
    """Everything the daemon can be told, with its embedded defaults."""

    model_config = SettingsConfigDict(env_prefix="STOCKADE_", extra="ignore", frozen=True)

    home: Path = Field(default_factory=default_home, description="State directory (mode 0700).")
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the API listens on.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics without auth on this second port."
    )
    tls_cert: Path | None = Field(None, description="PEM certificate; serves HTTPS with tls_key.")
    tls_key: Path | None = Field(None, description="PEM private key for tls_cert.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CORS_ORIGINS),
        description="Origins allowed by CORS, separated by commas or spaces.",
    )
    log_format: Literal["json", "text"] = Field("text", description="Log line format.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default sqlite+aiosqlite:///$STOCKADE_HOME/stockade.db. "
        "PostgreSQL: postgresql+asyncpg://user:pass@host/db.",
    )
    admin_password: SecretStr | None = Field(
        None, description="Password of the first admin; generated and saved when unset."
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret for tokens; generated into $STOCKADE_HOME when unset."
    )
    token_ttl_seconds: int = Field(24 * 3600, ge=60, description="Lifetime of a login token.")

    rate_limit_enabled: bool = True
    rate_limit_storage: str = Field("memory://", description="`limits` storage URI.")
    rate_limit_auth: str = Field("10/minute", description="Logins and failed authentications.")
    rate_limit_creation: str = Field("20/minute", description="Requests that create objects.")
    rate_limit_exec: str = Field("100/minute", description="Command execution.")
    rate_limit_other: str = Field("200/minute", description="Everything else.")
    rate_limit_token: str = Field(
        "1000/minute;100/second", description="Ceiling per token across categories (seed 000)."
    )

    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_upload_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest file uploaded into a sandbox."
    )
    head_timeout_seconds: float = Field(
        20.0,
        gt=0,
        description="How long a client may take to send a request's line and headers;"
        " a slower one gets 408 and its connection is closed.",
    )

    backend: Literal["namespace", "gvisor"] = Field(
        "namespace",
        description="The default sandbox backend: namespace (bubblewrap, cgroups, seccomp) or "
        "gvisor (runsc). A sandbox, task or job may ask for the other with runtime_class.",
    )
    gvisor_platform: Literal["systrap", "ptrace", "kvm"] | None = Field(
        None,
        description="runsc's platform for the gvisor backend. Default: systrap where this "
        "runsc has it, else ptrace; kvm only when asked for.",
    )
    run_dir: Path = Field(
        Path("/run/stockade"),
        description="Where sandboxes' storage is mounted while they run (tmpfs per sandbox).",
    )
    sandbox_max: int = Field(256, ge=1, description="Most sandboxes alive at once.")
    sandbox_cpu: str = Field("1", description="Default cpu limit (Kubernetes quantity).")
    sandbox_memory: str = Field("512Mi", description="Default memory limit.")
    sandbox_storage: str = Field("1Gi", description="Default writable storage (tmpfs) size.")
    sandbox_max_storage: str = Field("8Gi", description="Largest storage one sandbox may ask for.")
    sandbox_pids: int = Field(512, ge=16, description="Most processes in one sandbox.")
    sandbox_timeout: int = Field(3600, ge=1, description="Default sandbox lifetime in seconds.")
    sandbox_pool: int = Field(
        4, ge=0, le=64, description="Sandboxes kept started ahead, to hand out on create."
    )
    llm_model: str | None = Field(
        None,
        description="The agent's model, e.g. openai:gpt-4o, or a model name on "
        "STOCKADE_LLM_BASE_URL; unset: the rule-based planner.",
    )
    llm_base_url: str | None = Field(
        None, description="An OpenAI-compatible server (Ollama, vLLM, llama.cpp) for the model."
    )
    llm_api_key: SecretStr | None = Field(None, description="The API key for the model's server.")
    policy_file: Path | None = Field(
        None, description="A TOML or YAML policy file: rules, protected paths, the threshold."
    )
    approval_ttl_seconds: int = Field(
        300, ge=1, description="How long an approval waits for an answer before it expires."
    )
    approval_answer_wait: float = Field(
        2.0,
        ge=0,
        description="Seconds an answer to an approval waits for the resumed task to finish "
        "or pause again before it replies (0: reply at once).",
    )
    task_timeout: int = Field(
        300, ge=1, description="Default timeout_seconds of a task (time spent running)."
    )
    task_template: Path | None = Field(
        None, description="A directory copied into every new task's home directory."
    )
    jobs_concurrency: int = Field(4, ge=1, le=256, description="Most job runs at once.")
    jobs_timeout: int = Field(300, ge=1, description="Default timeout of one job run, seconds.")
    jobs_idle_cpu: float = Field(
        20.0, ge=0, le=100, description="HIGH jobs run while CPU is below this percentage."
    )
    jobs_low_activity_cpu: float = Field(
        50.0, ge=0, le=100, description="MEDIUM jobs run while CPU is below this percentage."
    )
    jobs_sleep_hours: str = Field(
        "00:00-06:00", description="Local hours when LOW jobs run, e.g. 00:00-06:00."
    )
    jobs_load_window: float = Field(
        60.0, ge=1, description="Seconds of CPU samples averaged for the priority windows."
    )
    jobs_autostart: bool = Field(True, description="Start the job scheduler with the daemon.")
    jobs_tick: float = Field(
        1.0, gt=0, le=60, description="Most seconds between scheduler passes while jobs wait."
    )
    jobs_stop_grace: float = Field(
        10.0, ge=0, description="Seconds a clean stop lets job runs finish before ending them."
    )
    jobs_warm_runners: int = Field(
        1,
        ge=0,
        le=16,
        description="Sandboxes kept per job owner with the code runner started, waiting for "
        "their next run (0: every run starts its own).",
    )
    jobs_warm_idle: float = Field(
        120.0, gt=0, description="Seconds a waiting job runner is kept before it is destroyed."
    )
    plan_step_timeout: int = Field(
        300, ge=1, description="Seconds one step of a Luna plan may run before it is killed."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple):
            return [part for item in items for part in str(item).replace(",", " ").split()]
        return value

    @field_validator(
        "rate_limit_auth",
        "rate_limit_creation",
        "rate_limit_exec",
        "rate_limit_other",
        "rate_limit_token",
    )
    @classmethod
    def _parse_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a rate limit such as '10/minute'") from exc
        return value

    @field_validator("jobs_sleep_hours")
    @classmethod
    def _parse_sleep_hours(cls, value: str) -> str:
        found = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", value)
        if (
            not found
            or int(found[1]) > 23
            or int(found[3]) > 24
            or max(int(found[2]), int(found[4])) > 59
        ):
            raise ValueError(f"{value!r} is not a range of local hours such as 00:00-06:00")
        return value

    @field_validator("sandbox_cpu")
    @classmethod
    def _parse_cpu(cls, value: str) -> str:
        try:
            parse_cpu(value, field="STOCKADE_SANDBOX_CPU")
        except InvalidInput as exc:
            raise ValueError(exc.message) from exc
        return value

    @field_validator("sandbox_memory", "sandbox_storage", "sandbox_max_storage")
    @classmethod
    def _parse_bytes(cls, value: str) -> str:
        try:
            parse_bytes(value, field="a STOCKADE_SANDBOX_* size")
        except InvalidInput as exc:
            raise ValueError(exc.message) from exc
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the state directory."""
        return self.database_url or f"sqlite+aiosqlite:///{self.home / 'stockade.db'}"

    def ensure_home(self) -> Path:
        """Create the state directory with mode 0700 (and tighten it if it exists)."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.home.chmod(0o700)
        return self.home
