"""Use cases. Routes of every dialect call these; nothing here knows about HTTP.

``Services`` is the registry ``create_app`` wires once. Later parts of the daemon
(sandboxes, tasks, jobs, agents, MCP) join it as fields of their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from pydantic_ai.models import Model

from stockade.agent.loop import AgentRunner
from stockade.agent.model import build_model, describe
from stockade.events import EventBus
from stockade.metrics import Metrics
from stockade.policy import DEFAULT_POLICY, load_policy
from stockade.sandbox.base import SandboxBackend
from stockade.sandbox.gvisor import GvisorBackend
from stockade.sandbox.namespace import NamespaceBackend, instance_name
from stockade.services.auth import AuthService
from stockade.services.health import HealthService
from stockade.services.jobs import Clock, JobService, Load
from stockade.services.passwords import Passwords
from stockade.services.plans import PlanService
from stockade.services.sandboxes import SandboxService
from stockade.services.secrets import load_or_create_secret
from stockade.services.streams import StreamService
from stockade.services.tasks import TaskService
from stockade.services.tokens import Tokens
from stockade.services.users import BootstrapResult, UserService
from stockade.settings import Settings
from stockade.store import Store

logger = logging.getLogger("stockade")


def make_backends(settings: Settings, home: Path) -> dict[str, SandboxBackend]:
    """Every sandbox backend this daemon offers, by name; ``STOCKADE_BACKEND`` names the
    default. One that cannot run here is still listed, and ``/health`` says why."""
    return {
        "namespace": NamespaceBackend(
            settings.run_dir,
            home / "sandboxes",
            instance=instance_name(home),
            default_pids=settings.sandbox_pids,
            pool_size=settings.sandbox_pool,
        ),
        "gvisor": GvisorBackend(
            settings.run_dir,
            home / "sandboxes",
            instance=instance_name(home),
            default_pids=settings.sandbox_pids,
            platform=settings.gvisor_platform,
        ),
    }


@dataclass
class Services:
    settings: Settings
    store: Store
    events: EventBus
    metrics: Metrics
    auth: AuthService
    users: UserService
    health: HealthService
    streams: StreamService
    sandboxes: SandboxService
    tasks: TaskService
    jobs: JobService
    plans: PlanService

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        passwords: Passwords | None = None,
        backend: SandboxBackend | None = None,
        model: Model | None = None,
        clock: Clock | None = None,
        load: Load | None = None,
    ) -> Services:
        """Wire every service from ``settings``. Opens nothing yet: see ``start``.
        ``model`` replaces the one the settings name (tests give a scripted one)."""
        home = settings.ensure_home()
        secret = (
            settings.jwt_secret.get_secret_value()
            if settings.jwt_secret
            else load_or_create_secret(home / "jwt-secret")
        )
        store = Store.from_url(settings.resolved_database_url)
        events = EventBus()
        metrics = Metrics()
        passwords = passwords or Passwords()
        tokens = Tokens(secret, timedelta(seconds=settings.token_ttl_seconds))
        backends = {backend.name: backend} if backend else make_backends(settings, home)
        sandboxes = SandboxService(
            settings,
            store,
            backends,
            events,
            metrics,
            default=backend.name if backend else settings.backend,
            instance=instance_name(home),
        )
        policy = load_policy(settings.policy_file) if settings.policy_file else DEFAULT_POLICY
        health = HealthService(
            store, llm=describe(settings), llm_model=(settings.llm_model or "").strip()
        )
        health.backend = sandboxes.backend_status
        health.backends = sandboxes.backends_status
        health.active_sandboxes = sandboxes.active_count
        tasks = TaskService(
            settings,
            store,
            sandboxes,
            events,
            metrics,
            AgentRunner(model or build_model(settings)),
            policy,
        )
        return cls(
            settings=settings,
            store=store,
            events=events,
            metrics=metrics,
            auth=AuthService(store, passwords, tokens, events, secret),
            users=UserService(store, passwords, events),
            health=health,
            streams=StreamService(events, metrics),
            sandboxes=sandboxes,
            tasks=tasks,
            jobs=JobService(
                settings,
                store,
                sandboxes,
                tasks,
                events,
                metrics,
                instance=instance_name(home),
                clock=clock,
                load=load,
            ),
            plans=PlanService(settings, store, sandboxes, policy),
        )

    async def start(self) -> BootstrapResult:
        """Migrate the store and create the first admin if there is no user yet."""
        await self.store.open()
        password = self.settings.admin_password
        result = await self.users.bootstrap_admin(
            self.settings.home, password.get_secret_value() if password else None
        )
        if result.generated_password:
            # Printed once, on the first start only; the file keeps it (mode 0600).
            print(
                f"Stockade created the user 'admin' with password {result.generated_password}\n"
                f"It is saved in {result.credentials_file} (mode 0600).",
                flush=True,
            )
        elif result.created:
            logger.info("created the user 'admin' with the password from STOCKADE_ADMIN_PASSWORD")
        await self.sandboxes.start()
        await self.tasks.start()
        await self.jobs.start()
        return result

    async def stop(self) -> None:
        try:
            await self.jobs.stop()
            await self.tasks.stop()
            await self.sandboxes.stop()
        finally:
            await self.store.close()
