"""The ``cleave serve`` and ``cleave gateway`` commands (see :mod:`cleave.runtime.serve`).

Registered by :mod:`cleave.cli`; kept here so the command line stays one
short file per concern.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["gateway", "serve"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

AppArg = Annotated[
    str | None, typer.Argument(help="The app's folder (default: found from the current folder).")
]
AdminPortOpt = Annotated[
    int,
    typer.Option(
        "--admin-port",
        envvar="CLEAVE_ADMIN_PORT",
        help="Port of /healthz, /readyz, /metrics, /status (0: a free one, logged).",
    ),
]
AdminHostOpt = Annotated[
    str,
    typer.Option(
        "--admin-host",
        envvar="CLEAVE_ADMIN_HOST",
        help="Address of the admin port; 0.0.0.0 for a scheduler's probes and Prometheus.",
    ),
]
WaitOpt = Annotated[
    str,
    typer.Option(
        "--wait-nats",
        envvar="CLEAVE_WAIT_NATS",
        help="How long to keep trying to reach NATS at start (e.g. 60s, 5m), then exit 1.",
    ),
]
GraceOpt = Annotated[
    str,
    typer.Option(
        "--grace",
        envvar="CLEAVE_GRACE",
        help="On SIGTERM, how long work in progress gets to finish (e.g. 30s).",
    ),
]
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="CLEAVE_STATE_DIR",
        help="Where SQLite files and the dev issuer's key are (default APP/.cleave).",
    ),
]


def _duration(text: str, option: str) -> float:
    """``90``, ``90s``, ``1.5m``, ``500ms``: seconds; anything else is a one-line error."""
    raw = text.strip().lower()
    unit = next((u for u in ("ms", "s", "m", "h") if raw.endswith(u)), "")
    try:
        value = float(raw[: len(raw) - len(unit)] if unit else raw) * _UNITS.get(unit, 1.0)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise typer.BadParameter(
            f"{text!r} is not a duration; give e.g. 30s, 2m or 500ms", param_hint=option
        )
    return value


def _run(path: str | None, state_dir: Path | None, label: str, options: object) -> None:
    from rich.console import Console

    from cleave.app import load
    from cleave.errors import CleaveError
    from cleave.runtime import serve as serving
    from cleave.runtime.logs import configure
    from cleave.runtime.procs import run_main

    service, _, replica = label.rpartition(".")
    configure(service=service, replica=int(replica))
    try:
        loaded = load(path, state_dir=state_dir)
    except CleaveError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    assert isinstance(options, serving.ServeOptions)
    raise typer.Exit(run_main(serving.run(loaded, options)))


def serve(
    path: AppArg = None,
    group: Annotated[
        str,
        typer.Option("--group", "-g", help="The placement group to run (cleave.toml [groups])."),
    ] = "",
    replica: Annotated[
        int, typer.Option("--replica", min=0, help="This process's replica number (0, 1, ...).")
    ] = 0,
    admin_port: AdminPortOpt = 0,
    admin_host: AdminHostOpt = "127.0.0.1",
    wait_nats: WaitOpt = "60s",
    grace: GraceOpt = "30s",
    migrate: Annotated[
        bool | None,
        typer.Option(
            "--migrate/--no-migrate",
            help="Upgrade databases on start (default: [database] migrate); --no-migrate "
            "refuses a database behind the code: run `cleave db upgrade` first.",
        ),
    ] = None,
    state_dir: StateOpt = None,
) -> None:
    """Run one placement group in the foreground, against your NATS (CLEAVE_NATS_URL).

    For a scheduler (Kubernetes, compose, systemd): SIGTERM drains it; the
    admin port answers liveness, readiness and Prometheus metrics.

    Example: cleave serve examples/shop --group orders
    """
    from cleave.runtime.serve import ServeOptions

    if not group:
        raise typer.BadParameter(
            "say which group to run: --group NAME (a service's name, or a group of "
            "cleave.toml [groups])",
            param_hint="--group",
        )
    options = ServeOptions(
        role="service",
        group=group,
        replica=replica,
        admin_host=admin_host,
        admin_port=admin_port,
        wait_nats=_duration(wait_nats, "--wait-nats"),
        grace=_duration(grace, "--grace"),
        migrate=migrate,
    )
    _run(path, state_dir, f"{group}.{replica}", options)


def gateway(
    path: AppArg = None,
    port: Annotated[
        int | None, typer.Option("--port", "-p", help="Gateway port (default: cleave.toml, 8000).")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Gateway address (default: cleave.toml).")
    ] = None,
    admin_port: AdminPortOpt = 0,
    admin_host: AdminHostOpt = "127.0.0.1",
    wait_nats: WaitOpt = "60s",
    grace: GraceOpt = "30s",
    state_dir: StateOpt = None,
) -> None:
    """Run the HTTP gateway alone, in the foreground, against your NATS (CLEAVE_NATS_URL).

    Example: cleave gateway examples/shop --port 8000
    """
    from cleave.runtime.serve import ServeOptions

    options = ServeOptions(
        role="gateway",
        host=host,
        port=port,
        admin_host=admin_host,
        admin_port=admin_port,
        wait_nats=_duration(wait_nats, "--wait-nats"),
        grace=_duration(grace, "--grace"),
    )
    _run(path, state_dir, "gateway.0", options)
