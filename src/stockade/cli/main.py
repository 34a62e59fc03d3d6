"""The ``stockade`` command: the daemon, and commands that administer its store."""

from __future__ import annotations

import asyncio
import gc
import getpass
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from stockade.errors import StockadeError
from stockade.services.principal import Role
from stockade.settings import Settings
from stockade.version import __version__

if TYPE_CHECKING:
    import uvicorn

app = typer.Typer(
    name="stockade",
    help="Stockade: run AI agents in disposable sandboxes, behind a human approval gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
user_app = typer.Typer(help="Manage users in the daemon's store.", no_args_is_help=True)
app.add_typer(user_app, name="user")

err = Console(stderr=True)


def _settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the flags that were given on top."""
    given = {k: v for k, v in overrides.items() if v is not None and v != []}
    try:
        return Settings(**given)
    except ValidationError as exc:
        for e in exc.errors():
            name = "STOCKADE_" + "_".join(str(p) for p in e["loc"]).upper()
            err.print(f"[red]error:[/] {name}: {e['msg']}")
        raise typer.Exit(2) from exc


def _raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one. Every connection, event
    stream and sandbox holds descriptors, and the usual soft limit of 1024 is reached by
    a few hundred streams, after which connections were dropped unanswered."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@app.command()
def daemon(
    host: Annotated[
        str | None,
        typer.Option(envvar="STOCKADE_HOST", help="Address to listen on. Default: 127.0.0.1."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(envvar="STOCKADE_PORT", help="Port to listen on. Default: 8080.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="STOCKADE_METRICS_PORT", help="Also serve /metrics, without auth, on this port."
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="STOCKADE_TLS_CERT", help="PEM certificate: serve HTTPS (needs --tls-key)."
        ),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(envvar="STOCKADE_TLS_KEY", help="PEM private key for --tls-cert.")
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            envvar="STOCKADE_CORS_ORIGINS",
            help="Origin allowed by CORS; repeat for more. Default: seed 001's Tauri origins.",
        ),
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(
            envvar="STOCKADE_LOG_FORMAT", help="Log line format: json or text. Default: text."
        ),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(
            envvar="STOCKADE_HOME",
            help="State directory. Default: /var/lib/stockade as root,"
            " else ~/.local/share/stockade.",
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            envvar="STOCKADE_BACKEND",
            help="Default sandbox backend: namespace (bubblewrap) or gvisor (runsc). A sandbox,"
            " task or job may ask for the other with runtime_class. Default: namespace.",
        ),
    ] = None,
) -> None:
    """Start the daemon. Other settings are read from STOCKADE_* variables (see README)."""
    import uvicorn

    from stockade import logs
    from stockade.api.app import create_app
    from stockade.api.protocol import BoundedHeadProtocol

    settings = _settings(
        host=host,
        port=port,
        metrics_port=metrics_port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        cors_origins=cors_origin,
        log_format=log_format,
        home=home,
        backend=backend,
    )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        err.print("[red]error:[/] --tls-cert and --tls-key must be given together")
        raise typer.Exit(2)
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            err.print(f"[red]error:[/] {path} is not a readable file")
            raise typer.Exit(2)
    logs.configure(settings.log_format, settings.log_level)
    _raise_open_files_limit()
    try:
        fastapi_app = create_app(settings)
    except (OSError, ValueError, StockadeError) as exc:
        err.print(f"[red]error:[/] cannot start: {exc}")
        raise typer.Exit(1) from exc
    metrics_server = None
    if settings.metrics_port is not None:
        from prometheus_client import start_http_server

        registry = fastapi_app.state.services.metrics.registry
        metrics_server, _ = start_http_server(
            settings.metrics_port, addr=settings.host, registry=registry
        )
    scheme = "https" if settings.tls_cert else "http"
    err.print(
        f"Stockade {__version__} on {scheme}://{settings.host}:{settings.port} "
        f"(docs at /docs, state in {settings.home})"
    )
    config = uvicorn.Config(
        fastapi_app,
        host=settings.host,
        port=settings.port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        http=BoundedHeadProtocol.configured(head_timeout=settings.head_timeout_seconds),
    )
    try:
        serve(config)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()


def serve(config: uvicorn.Config) -> None:
    """Run the server: with one malloc arena, with what busy spells free given back
    (``stockade.memory``), and with the heap as it is now left out of garbage
    collection.

    Everything loaded so far (modules, the app, its schemas: about 290,000 objects)
    lives as long as the daemon. Frozen, the collector stops walking it: before, each
    full collection under load walked all of it and held the loop for 150-240 ms."""
    import uvicorn

    from stockade.memory import Trimmer, one_malloc_arena

    one_malloc_arena()
    gc.collect()
    gc.freeze()
    trimmer = Trimmer()
    trimmer.start()
    try:
        uvicorn.Server(config).run()
    finally:
        trimmer.stop()


@app.command()
def version() -> None:
    """Print Stockade's version."""
    typer.echo(__version__)


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="The new user's name.")],
    role: Annotated[Role, typer.Option(help="admin or user.")] = Role.USER,
    email: Annotated[str | None, typer.Option(help="Email address.")] = None,
    password_env: Annotated[
        str | None,
        typer.Option(help="Read the password from this environment variable instead of prompting."),
    ] = None,
) -> None:
    """Add a user to the store the daemon uses (STOCKADE_HOME / STOCKADE_DATABASE_URL)."""
    from stockade.services import Services

    if password_env:
        password = os.environ.get(password_env, "")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            err.print("[red]error:[/] the passwords differ")
            raise typer.Exit(2)

    async def add() -> str:
        services = Services.build(_settings())
        await services.store.open()
        try:
            user = await services.users.create(username, password, role=role, email=email)
        finally:
            await services.stop()
        return user.id

    try:
        user_id = asyncio.run(add())
    except StockadeError as exc:
        err.print(f"[red]error:[/] {exc.message}")
        raise typer.Exit(1) from exc
    typer.echo(f"created {role.value} {username!r} ({user_id})")
