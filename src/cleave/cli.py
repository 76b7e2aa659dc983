"""The ``cleave`` command.

::

    cleave run [APP] [--port 8000]            all services and the gateway in one process
    cleave up [APP] [--port 8000] [--detach]  one process per service group, over NATS
    cleave ps [APP] [--json]                  the processes of a running `cleave up` or `run`
    cleave down [APP]                         stop a running `cleave up` or `cleave run`
    cleave serve [APP] --group G              one group in the foreground, on your NATS
    cleave gateway [APP] [--port 8000]        the gateway alone, in the foreground, on your NATS
    cleave token [APP] --sub ID [--scope S]   a dev token for the gateway (Authorization: Bearer)
    cleave status [APP] [--json]              outbox backlogs, consumers, sagas of each worker
    cleave scale SERVICE=N [APP]              add or drain workers of a running app
    cleave deploy SERVICE [APP]               replace a service's workers, new before old
    cleave chaos ACTION SERVICE [VALUE] [APP] kill, pause, resume, latency, drop, fail, clear
    cleave logs [APP] [SERVICE] [-f]          the logs, merged (APP and SERVICE in either order)
    cleave db revision SERVICE [APP] -m MSG   a new schema migration, from the metadata
    cleave db upgrade [APP] [SERVICE]         migrate databases to the newest revision
    cleave db current [APP]                   the revision of every service's database
    cleave dlq list [APP] [--service S]       dead letters: events consumers gave up on
    cleave dlq show ID [APP]                  one dead letter: its event, headers, error
    cleave dlq replay ID... | --all [APP]     handle them again, through the inbox
    cleave dlq purge ID... | --all [APP]      delete them for good
    cleave contracts snapshot [APP]           write APP/contracts.lock.json
    cleave contracts check [APP] [--against]  breaking changes since the lock (or a file, a git ref)
    cleave contracts asyncapi [APP]           an AsyncAPI 3 document of the events
    cleave coupling [APP] [--repo PATH]       when to split and when to merge, from history
    cleave build [APP] --target T --out DIR   Kubernetes, compose or GitHub Actions artifacts

APP is the app's folder (holding cleave.toml); left out, the current folder
or the nearest one above it with a cleave.toml.

Every command's ``--help`` ends with an example. Piped output is never cut to
the terminal's width; long operations show a spinner on a terminal only. An
unexpected error is one line; ``cleave --debug COMMAND`` shows its traceback.
Shared helpers (consoles, progress, one-line errors) live in ``cleave._cliutil``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cleave import _cliutil
from cleave._cliutil import chaos_table, console_for, progress, split_app
from cleave._serve_cli import gateway as gateway_command
from cleave._serve_cli import serve as serve_command
from cleave.app import LoadedApp, load
from cleave.config import mask_url
from cleave.coupling.command import coupling as _coupling
from cleave.deploy.command import build_command as _build_command
from cleave.errors import CleaveError
from cleave.scaffold import cli as scaffold_cli

if TYPE_CHECKING:
    from cleave.runtime.dlq import AppDeadLetters

app = typer.Typer(
    name="cleave",
    help="Write a modular monolith. Deploy microservices. Cleave when it pays.\n\n"
    "Example: cleave run examples/shop",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = console_for(sys.stdout)
err = console_for(sys.stderr)


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")
    ] = False,
) -> None:
    """Options for every command."""
    _cliutil.debug = debug


AppArg = Annotated[
    str | None, typer.Argument(help="The app's folder (default: found from the current folder).")
]
PortOpt = Annotated[
    int | None, typer.Option("--port", "-p", help="Gateway port (default 8000, or cleave.toml).")
]
AdminOpt = Annotated[
    int | None,
    typer.Option("--admin-port", help="Dashboard port (default 8001, or a free one if busy)."),
]
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", help="Where data, logs and run files go (default APP/.cleave).", hidden=True
    ),
]


def _load(path: str | None, state_dir: Path | None) -> LoadedApp:
    try:
        return load(path, state_dir=state_dir)
    except CleaveError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _fail(message: str, code: int = 1) -> None:
    err.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def run(
    path: AppArg = None,
    port: PortOpt = None,
    host: Annotated[str | None, typer.Option(help="Gateway address.")] = None,
    admin_port: AdminOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Run the app as a modular monolith: every service and the gateway in one process.

    `cleave ps`, `status`, `logs`, `chaos` and `down` work on it as on `cleave up`.

    Example: cleave run examples/shop --port 8000
    """
    from cleave.runtime import monolith

    loaded = _load(path, state_dir)
    gw = loaded.plan.gateway

    def ready(url: str, dashboard: str) -> None:
        names = ", ".join(loaded.app.services)
        console.print(f"[bold green]{loaded.app.name}[/] running as a monolith ({names})")
        if url:
            console.print(f"gateway:   [bold]{url}[/]   (Ctrl-C to stop)", highlight=False)
        console.print(f"dashboard: [bold]{dashboard}[/]", highlight=False)
        _auth_lines(loaded)

    try:
        asyncio.run(
            monolith.run(
                loaded,
                host=host or gw.host,
                port=gw.port if port is None else port,
                admin_port=admin_port,
                on_ready=ready,
            )
        )
    except CleaveError as exc:
        _fail(str(exc))
    console.print("stopped")


@app.command()
def up(
    path: AppArg = None,
    port: PortOpt = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start in the background and return.")
    ] = False,
    admin_port: AdminOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Run the app as processes: an embedded NATS, one worker per service group, the gateway.

    Example: cleave up examples/shop --detach
    """
    from cleave.runtime import supervisor

    loaded = _load(path, state_dir)
    try:
        if detach:
            with progress(err, f"starting {loaded.app.name}: NATS, then the workers"):
                state = supervisor.start_detached(loaded, port=port, admin_port=admin_port)
            console.print(
                f"[bold green]{loaded.app.name}[/] is up: gateway [bold]{state['gateway_url']}[/]",
                highlight=False,
            )
            console.print(f"dashboard: [bold]{state['dashboard_url']}[/]", highlight=False)
            console.print(f"stop it with: cleave down {loaded.root}", highlight=False)
            _auth_lines(loaded)
            return
        if loaded.app.gateway is not None:
            _auth_lines(loaded)
        code = asyncio.run(
            supervisor.run(loaded, port=port, admin_port=admin_port, console=console)
        )
    except CleaveError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


# One group, or the gateway, run by a scheduler against an external NATS.
app.command("serve")(serve_command)
app.command("gateway")(gateway_command)


def _auth_lines(loaded: LoadedApp) -> None:
    """Say whom the gateway trusts, and how to get a token."""
    if loaded.app.gateway is None:
        return
    auth = loaded.plan.auth
    if auth.issuer:
        console.print(f"auth:      tokens from issuer {auth.issuer}", highlight=False)
        return
    console.print(
        "auth:      the dev issuer (not for production: set [auth] issuer); a token: "
        f"cleave token {loaded.root} --sub <account id> [--scope admin]",
        highlight=False,
        soft_wrap=True,
    )


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> float:
    unit = text[-1:].lower()
    number = text[:-1] if unit in _UNITS else text
    try:
        value = float(number) * _UNITS.get(unit, 1)
    except ValueError:
        value = 0
    if not value > 0:
        _fail(f"--ttl {text!r} is not a duration; give e.g. 90s, 30m, 1h or 7d", 2)
    return value


@app.command()
def token(
    path: AppArg = None,
    sub: Annotated[
        str, typer.Option("--sub", help="The token's subject: in the shop, an account id.")
    ] = "",
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="A scope to grant (repeat for more).")
    ] = None,
    ttl: Annotated[str, typer.Option(help="How long it is valid: 90s, 30m, 1h, 7d.")] = "1h",
    state_dir: StateOpt = None,
) -> None:
    """Print a token from the app's dev issuer, for `Authorization: Bearer <token>`.

    Example: cleave token examples/shop --sub acc-alice --scope admin

    The dev issuer's key is made under the app's state folder (.cleave/) on
    first use; the gateway trusts it while cleave.toml's [auth] names no issuer.
    """
    from cleave.gateway.devissuer import mint

    loaded = _load(path, state_dir)
    auth = loaded.plan.auth
    if auth.issuer:
        _fail(
            f"{loaded.app.name} trusts tokens from issuer {auth.issuer} (cleave.toml [auth]); "
            "get one from it: `cleave token` signs only for the dev issuer",
            2,
        )
    if not sub:
        _fail("give the token's subject: --sub acc-alice (in the shop, an account id)", 2)
    try:
        text = mint(
            loaded.state_dir,
            subject=sub,
            audience=auth.audience or loaded.app.name,
            scopes=tuple(scope or ()),
            ttl=_seconds(ttl),
        )
    except CleaveError as exc:
        _fail(str(exc), 2)
    print(text)  # plain: no wrapping, so $(cleave token ...) takes it whole


@app.command()
def ps(
    path: AppArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    state_dir: StateOpt = None,
) -> None:
    """List the processes of a running `cleave up` (or `cleave run`).

    Example: cleave ps examples/shop --json
    """
    from cleave.runtime import control

    loaded = _load(path, state_dir)
    try:
        rows: list[dict[str, Any]] = control.request(loaded, "GET", "/api/ps")["processes"]
    except CleaveError as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title=f"{loaded.app.name}: {len(rows)} processes", title_justify="left")
    cols = ("service", "replica", "pid", "group", "status", "uptime", "restarts", "majors")
    for col in (*cols, "version"):
        table.add_column(
            col,
            justify="right" if col in ("replica", "pid", "restarts") else "left",
            # In a narrow terminal the version digest gives way, never a name.
            min_width=max((len(str(r[col])) for r in rows), default=0)
            if col in ("service", "pid", "group", "status")
            else None,
        )
    for r in rows:
        status = r["status"]
        color = {
            "ready": "green",
            "starting": "yellow",
            "restarting": "yellow",
            "draining": "yellow",
            "paused": "magenta",
        }.get(status, "red")
        table.add_row(
            r["service"],
            str(r["replica"]),
            str(r["pid"] or "-"),
            r["group"],
            f"[{color}]{status}[/]",
            _uptime(r["uptime_s"]),
            str(r["restarts"]),
            ",".join(f"v{m}" for m in r.get("majors", [])) or "-",
            r.get("version", ""),
        )
    console.print(table)


@app.command()
def status(
    path: AppArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    state_dir: StateOpt = None,
) -> None:
    """Outbox backlogs, event consumers and sagas of a running `cleave up` (or `cleave run`).

    Example: cleave status examples/shop
    """
    from cleave.runtime import control

    loaded = _load(path, state_dir)
    try:
        workers: dict[str, Any] = control.request(loaded, "GET", "/api/status")["workers"]
    except CleaveError as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(workers, indent=2) + "\n")
        return
    table = Table(title=f"{loaded.app.name}: status", title_justify="left")
    for col in ("worker", "outbox", "sagas running (stuck)", "consumers (pending / dead letters)"):
        table.add_column(col)
    for label, st in workers.items():
        if "error" in st:
            table.add_row(label, f"[red]{st['error']}[/]", "", "")
            continue
        outbox = ", ".join(f"{k}: {v}" for k, v in st["outbox"].items()) or "-"
        stuck = st.get("sagas_stuck", {})
        sagas = (
            ", ".join(
                # A stuck saga waits for an operator (see its error log line): shown in red.
                f"{k}: {v}" + (f" [red]({stuck[k]} stuck)[/]" if stuck.get(k) else "")
                for k, v in st["sagas"].items()
            )
            or "-"
        )
        consumers = (
            ", ".join(
                # Dead letters kept now (`cleave dlq list`), not only those of this run.
                f"{k}: {v['pending']}/{v.get('dead_letters', v['dead_lettered'])}"
                for k, v in st["consumers"].items()
            )
            or "-"
        )
        table.add_row(label, outbox, sagas, consumers)
    console.print(table)
    _print_event_consumers(workers)


def _print_event_consumers(workers: dict[str, Any]) -> None:
    """Who still consumes each version of each event (the broker's durable consumers)."""
    by_subject: dict[str, set[str]] = {}
    for st in workers.values():
        for subjects in st.get("events", {}).values():
            for subject, names in subjects.items():
                by_subject.setdefault(subject, set()).update(names)
    if not by_subject:
        return
    table = Table(title="events: consumers of each version", title_justify="left")
    for col in ("event (service.topic)", "version", "consumers"):
        table.add_column(col)
    for subject in sorted(by_subject):
        # cleave.evt.<service>.<topic>.v<major>
        head, _, major = subject.rpartition(".")
        _, _, service, topic = head.split(".", 3)
        names = sorted(by_subject[subject])
        table.add_row(f"{service}.{topic}", major, ", ".join(names) or "[yellow]none[/]")
    console.print(table)


def _operate(loaded: LoadedApp, path: str, body: dict[str, Any]) -> Any:
    from cleave.runtime import control

    try:
        return control.request(loaded, "POST", path, body, timeout=300)
    except CleaveError as exc:
        _fail(str(exc))


@app.command()
def scale(
    spec: Annotated[str, typer.Argument(help="SERVICE=N, e.g. inventory=3.")],
    path: AppArg = None,
    state_dir: StateOpt = None,
) -> None:
    """Run N workers of a service's group on a running `cleave up` (adds, or drains extras).

    Example: cleave scale inventory=3 examples/shop
    """
    service, _, count = spec.partition("=")
    if not service or not count.isdigit():
        _fail(f"expected SERVICE=N (like inventory=3), got {spec!r}", 2)
    loaded = _load(path, state_dir)
    with progress(err, f"scaling {service} to {count}"):
        result = _operate(loaded, "/api/scale", {"service": service, "replicas": int(count)})
    console.print(
        f"{result['group']}: {result['replicas']} replica(s) "
        f"(+{result['added']} -{result['removed']})"
    )


@app.command()
def deploy(
    service: Annotated[str, typer.Argument(help="The service (or gateway) to redeploy.")],
    path: AppArg = None,
    state_dir: StateOpt = None,
) -> None:
    """Roll a service's workers onto the current code: new ones ready first, old ones drained.

    Example: cleave deploy orders examples/shop
    """
    loaded = _load(path, state_dir)
    with progress(err, f"deploying {service}: new workers first, then the old ones drain"):
        result = _operate(loaded, "/api/deploy", {"service": service})
    for r in result["replaced"]:
        console.print(f"{result['group']}.{r['replica']}: {r['old']} -> {r['new']}")


@app.command()
def restart(
    service: Annotated[str, typer.Argument(help="The service (or gateway) to restart.")],
    path: AppArg = None,
    state_dir: StateOpt = None,
) -> None:
    """Restart a service's workers one by one, with no failed calls (same as deploy).

    Example: cleave restart billing examples/shop
    """
    deploy(service, path, state_dir)


@app.command()
def chaos(
    action: Annotated[
        str,
        typer.Argument(
            help="kill, pause, resume, latency (seconds), drop (share), fail (share), clear."
        ),
    ],
    service: Annotated[str, typer.Argument(help="The service to hurt.")],
    value: Annotated[
        str | None,
        typer.Argument(
            help="Seconds or share, where it applies (else the app's folder).", show_default=False
        ),
    ] = None,
    path: AppArg = None,
    app_opt: Annotated[str | None, typer.Option("--app", hidden=True)] = None,
    replica: Annotated[int | None, typer.Option(help="Only this replica.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    state_dir: StateOpt = None,
) -> None:
    """Inject a fault into a running `cleave up` (or `cleave run`), to see what the rest does.

    Example: cleave chaos latency billing 0.5 examples/shop
    """
    amount: float | None = None
    if value is not None:
        try:
            amount = float(value)
        except ValueError:
            if path is not None:
                _fail(
                    f"{value!r} is not a number: give seconds (latency) or a share (drop, fail)", 2
                )
            path = value  # `cleave chaos pause billing examples/shop`: no value, then the app
    loaded = _load(path or app_opt, state_dir)
    body = {"action": action, "service": service, "replica": replica, "value": amount}
    result = _operate(loaded, "/api/chaos", body)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    console.print(chaos_table(loaded.app.name, action, service, result))


@app.command()
def logs(
    first: Annotated[
        str | None,
        typer.Argument(
            help="The app's folder, or only this service (or group).",
            show_default=False,
            metavar="APP",
        ),
    ] = None,
    second: Annotated[
        str | None,
        typer.Argument(help="The other of the two.", show_default=False, metavar="SERVICE"),
    ] = None,
    app_opt: Annotated[str | None, typer.Option("--app", hidden=True)] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="How many lines to start with.")
    ] = 100,
    state_dir: StateOpt = None,
) -> None:
    """The logs of `cleave up`'s workers (merged by time) or of `cleave run`.

    APP and SERVICE go in either order; the one that is a folder is the app.

    Example: cleave logs examples/shop orders -f
    """
    from cleave.observability import logs as logview

    path, service = split_app(first, second)
    loaded = _load(path or app_opt, state_dir)
    logs_dir = _logs_dir(loaded)
    if logs_dir is None:
        _fail(
            f"no logs in {loaded.state_dir / 'logs'}: start the app first, with "
            f"`cleave run {loaded.root}` or `cleave up {loaded.root}`"
        )
        raise AssertionError  # unreachable: _fail exits
    known = {*loaded.app.services, *loaded.groups(), "gateway"}
    if service is not None and service not in known:
        _fail(
            f"app {loaded.app.name} has no service {service!r} ({', '.join(sorted(known))}); "
            f"to name the app's folder, give a path: cleave logs ./{service}",
            2,
        )
    for line in logview.read(logs_dir, service, lines):
        console.print(logview.format_line(line), soft_wrap=True)
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            for line in logview.follow(logs_dir, service):
                console.print(logview.format_line(line), soft_wrap=True)


def _logs_dir(loaded: LoadedApp) -> Path | None:
    """The running app's log folder; with none running, the one written to last."""
    from cleave.runtime import control
    from cleave.runtime.monolith_ops import log_dir

    state = control.read_state(loaded)
    up_dir, run_dir = loaded.state_dir / "logs", log_dir(loaded)
    if state is not None:
        return run_dir if state.get("placement") == "monolith" else up_dir

    def newest(folder: Path) -> float:
        return max((p.stat().st_mtime for p in folder.glob("*.log")), default=0.0)

    found = [(newest(d), d) for d in (up_dir, run_dir) if newest(d)]
    return max(found)[1] if found else None


@app.command()
def down(path: AppArg = None, state_dir: StateOpt = None) -> None:
    """Stop a running `cleave up` (the gateway, the workers, then NATS) or `cleave run`.

    Example: cleave down examples/shop
    """
    from cleave.runtime import control

    loaded = _load(path, state_dir)
    try:
        with progress(err, f"stopping {loaded.app.name}"):
            stopped = control.stop(loaded)
    except CleaveError as exc:
        _fail(str(exc))
    console.print(f"{loaded.app.name}: {'stopped' if stopped else 'was not running'}")


app.command()(scaffold_cli.new)
app.add_typer(scaffold_cli.add, name="add")

db = typer.Typer(
    help="Schema migrations of each service's database (Alembic).", no_args_is_help=True
)
app.add_typer(db, name="db")


def _migrated(loaded: LoadedApp, service: str | None) -> list[tuple[str, Any]]:
    """(service, Database declaration) of services under migrations."""
    from cleave.data.database import Database

    names = [service] if service else list(loaded.app.services)
    found = []
    for name in names:
        spec = loaded.app.services.get(name)
        if spec is None:
            _fail(
                f"app {loaded.app.name} has no service {name!r} "
                f"(services: {', '.join(loaded.app.services)})",
                2,
            )
            raise AssertionError  # unreachable: _fail exits
        declared: Database | None = getattr(spec.cls, spec.database) if spec.database else None
        if declared is None or declared.migrations is None:
            if service:
                _fail(
                    f"{name} has no migrations folder: declare cleave.Database(metadata, "
                    "migrations=Path(__file__).parent / 'migrations' / '<service>')",
                    2,
                )
            continue
        found.append((name, declared))
    return found


@db.command("revision")
def db_revision(
    service: Annotated[str, typer.Argument(help="The service whose schema changed.")],
    path: AppArg = None,
    message: Annotated[str, typer.Option("--message", "-m", help="What the change does.")] = "",
    state_dir: StateOpt = None,
) -> None:
    """Write a migration with what the service's metadata adds to its newest revision.

    Example: cleave db revision orders examples/shop -m "add the coupon column"
    """
    from cleave.data import migrations

    loaded = _load(path, state_dir)
    [(name, declared)] = _migrated(loaded, service)
    created = asyncio.run(
        migrations.revision(declared.migrations, declared.metadata, message or "schema change")
    )
    if created is None:
        console.print(f"{name}: the metadata matches the newest revision; nothing to do")
    else:
        console.print(f"{name}: wrote {created} (read it before you ship it)", highlight=False)


@db.command("upgrade")
def db_upgrade(
    path: AppArg = None,
    service: Annotated[str | None, typer.Option(help="Only this service.")] = None,
    state_dir: StateOpt = None,
) -> None:
    """Migrate each service's database to its newest revision.

    Also done when a service starts, unless [database] migrate = false (or
    `cleave serve --no-migrate`): then this is the step that migrates.

    Example: cleave db upgrade examples/shop --service orders
    """
    from cleave.data import migrations

    loaded = _load(path, state_dir)
    for name, declared in _migrated(loaded, service):
        url = loaded.plan.database_url(name, loaded.data_dir)
        if url.startswith("sqlite"):
            loaded.data_dir.mkdir(parents=True, exist_ok=True)
        with progress(err, f"migrating {name}"):
            rev = asyncio.run(migrations.upgrade(url, declared.migrations, declared.metadata))
        console.print(f"{name}: at {rev}")


@db.command("current")
def db_current(path: AppArg = None, state_dir: StateOpt = None) -> None:
    """Show the revision each service's database is at, and the newest one available.

    Example: cleave db current examples/shop
    """
    from cleave.data import migrations

    loaded = _load(path, state_dir)
    table = Table(title=f"{loaded.app.name}: schema revisions", title_justify="left")
    for col in ("service", "database", "current", "newest"):
        table.add_column(col)
    for name, declared in _migrated(loaded, None):
        url = loaded.plan.database_url(name, loaded.data_dir)
        sqlite_file = url.split(":///", 1)[1] if url.startswith("sqlite") else ""
        try:
            if sqlite_file and not Path(sqlite_file).exists():
                rev = "(no database yet)"
            else:
                rev = asyncio.run(migrations.current(url)) or "-"
        except Exception as exc:  # an unreachable database is a row, not a crash
            rev = f"[red]{type(exc).__name__}[/]"
        newest = migrations.newest(declared.migrations) or "-"
        color = "green" if rev == newest else "yellow"
        table.add_row(name, mask_url(url), f"[{color}]{rev}[/]", newest)
    console.print(table)


dlq = typer.Typer(
    help="Dead letters: events a consumer gave up on, kept in its service's own database.",
    no_args_is_help=True,
)
app.add_typer(dlq, name="dlq")

ServiceOpt = Annotated[
    str | None, typer.Option("--service", "-s", help="Only this service's dead letters.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
AppOpt = Annotated[
    str | None, typer.Option("--app", help="The app's folder (or give it among the ids).")
]
IdsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Ids of dead letters (`cleave dlq list` shows them), and the app's folder if not "
        "the current one."
    ),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every dead letter (of --service).")]
T = TypeVar("T")


def _with_letters(loaded: LoadedApp, work: Callable[[AppDeadLetters], Awaitable[T]]) -> T:
    """Run ``work`` on the app's dead letters, running or not; bad input is a one-line error."""
    import logging

    from cleave.runtime.dlq import AppDeadLetters
    from cleave.runtime.logs import configure

    # Only warnings, on stderr: stdout is for the answer (JSON with --json).
    configure(service="cleave-dlq", json_lines=False, level=logging.WARNING)

    async def go() -> T:
        async with AppDeadLetters.open(loaded) as letters:
            return await work(letters)

    try:
        return asyncio.run(go())
    except CleaveError as exc:
        _fail(str(exc), 2)
        raise AssertionError from None  # unreachable: _fail exits


def _chosen(ids: list[str] | None, every: bool, verb: str) -> list[str] | None:
    if bool(ids) == every:
        _fail(
            f"say which dead letters to {verb}: their ids (`cleave dlq list` shows them), "
            "or --all (with --service S for one service's)",
            2,
        )
    return None if every else ids


@dlq.command("list")
def dlq_list(
    path: AppArg = None,
    service: ServiceOpt = None,
    as_json: JsonOpt = False,
    state_dir: StateOpt = None,
) -> None:
    """List the dead letters of every service (or one), oldest failure first.

    Example: cleave dlq list examples/shop --service shipping
    """
    loaded = _load(path, state_dir)
    found = _with_letters(loaded, lambda letters: letters.letters(service))
    if as_json:
        sys.stdout.write(json.dumps([d.describe() for d in found], indent=2) + "\n")
        return
    if not found:
        console.print(f"{loaded.app.name}: no dead letters")
        return
    table = Table(title=f"{loaded.app.name}: {len(found)} dead letter(s)", title_justify="left")
    for col in ("id", "consumer", "event id", "attempts", "failed", "error"):
        # Ids whole, to copy: the error is the column that gives way.
        table.add_column(
            col, justify="right" if col == "attempts" else "left", no_wrap=col != "error"
        )
    for d in found:
        failed = _uptime(time.time() - d.failed_at) + " ago"
        if d.replay_requested_at is not None:
            failed += " [yellow](replay requested)[/]"
        error = d.error.splitlines()[0] if d.error else ""
        table.add_row(d.id, d.consumer, d.event_id, str(d.attempts), failed, escape(error[:80]))
    console.print(table)
    console.print("`cleave dlq show ID` shows one; `cleave dlq replay ID` (or --all) retries them")


@dlq.command("show")
def dlq_show(
    letter_id: Annotated[str, typer.Argument(help="The dead letter's id.")],
    path: AppArg = None,
    as_json: JsonOpt = False,
    state_dir: StateOpt = None,
) -> None:
    """Show one dead letter: its event, its headers and why it failed.

    Example: cleave dlq show 3f2a9c examples/shop
    """
    loaded = _load(path, state_dir)
    letter = _with_letters(loaded, lambda letters: letters.get(letter_id))
    data = letter.describe()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    for key in ("id", "service", "consumer", "event_id", "subject", "attempts"):
        console.print(f"[bold]{key}:[/] {escape(str(data[key]))}", highlight=False)
    for key in ("created_at", "failed_at", "replay_requested_at"):
        if data[key] is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data[key]))
            console.print(f"[bold]{key}:[/] {when}", highlight=False)
    console.print("[bold]error:[/]", escape(letter.error), soft_wrap=True, highlight=False)
    console.print("[bold]payload:[/]", escape(json.dumps(data["payload"], indent=2)))
    console.print("[bold]headers:[/]", escape(json.dumps(data["headers"], indent=2)))


@dlq.command("replay")
def dlq_replay(
    ids: IdsArg = None,
    every: AllOpt = False,
    service: ServiceOpt = None,
    path: AppOpt = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the running app to replay them.")
    ] = 10.0,
    state_dir: StateOpt = None,
) -> None:
    """Handle dead letters again, through the consumer's inbox: applied once at most.

    The running app (`cleave run` or `cleave up`) replays them within a second;
    with the app stopped, they are replayed when it starts.

    Example: cleave dlq replay --all --service shipping examples/shop
    """
    folder, ids = _cliutil.pop_app(ids)
    chosen = _chosen(ids, every, "replay")
    loaded = _load(folder or path, state_dir)
    done = _with_letters(loaded, lambda letters: letters.replay(chosen, service=service, wait=wait))
    if not done:
        console.print("no dead letters to replay")
        return
    for r in done:
        head = f"{r.id} {r.consumer}:"
        if r.outcome == "replayed":
            console.print(f"{head} [green]replayed[/]", highlight=False)
        elif r.outcome == "failed":
            console.print(
                f"{head} [red]failed again[/] ({escape(r.error)}); the letter stays: fix the "
                "handler, then replay it again",
                soft_wrap=True,
                highlight=False,
            )
        else:
            console.print(
                f"{head} [yellow]requested[/]: no running {r.service} took it within {wait:g}s; "
                f"it is replayed when {r.service} runs",
                highlight=False,
            )
    if any(r.outcome == "failed" for r in done):
        raise typer.Exit(1)


@dlq.command("purge")
def dlq_purge(
    ids: IdsArg = None,
    every: AllOpt = False,
    service: ServiceOpt = None,
    path: AppOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Delete dead letters for good (the janitor deletes old ones by itself).

    Example: cleave dlq purge 3f2a9c examples/shop
    """
    folder, ids = _cliutil.pop_app(ids)
    chosen = _chosen(ids, every, "purge")
    loaded = _load(folder or path, state_dir)
    gone = _with_letters(loaded, lambda letters: letters.purge(chosen, service=service))
    console.print(f"{loaded.app.name}: purged {len(gone)} dead letter(s)")


contracts = typer.Typer(
    help="Contract snapshots, breaking-change checks, AsyncAPI (docs/contracts.md).",
    no_args_is_help=True,
)
app.add_typer(contracts, name="contracts")
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write here instead ('-': standard output).")
]
_VERDICT_STYLE = {"breaking": "red", "warning": "yellow", "safe": "green"}


def _snapshot(loaded: LoadedApp) -> dict[str, Any]:
    from cleave import schema_lock

    try:
        return schema_lock.snapshot(loaded.app)
    except CleaveError as exc:
        _fail(str(exc), 2)
        raise AssertionError from exc  # unreachable: _fail exits


def _emit(text: str, target: Path) -> None:
    if str(target) == "-":
        sys.stdout.write(text)
        return
    try:
        target.write_text(text)
    except OSError as exc:
        _fail(f"cannot write {target}: {exc.strerror}", 2)


@contracts.command("snapshot")
def contracts_snapshot(path: AppArg = None, output: OutputOpt = None) -> None:
    """Write contracts.lock.json: every contract, method, event and message field. Commit it.

    Example: cleave contracts snapshot examples/shop
    """
    from cleave import schema_lock

    loaded = _load(path, None)
    lock = _snapshot(loaded)
    target = output or loaded.root / schema_lock.LOCK_FILE
    _emit(schema_lock.dumps(lock), target)
    if str(target) != "-":
        console.print(
            f"{loaded.app.name}: wrote {target} ({len(lock['contracts'])} contracts, "
            f"{len(lock['messages'])} messages)",
            highlight=False,
        )


@contracts.command("check")
def contracts_check(
    path: AppArg = None,
    against: Annotated[
        str | None,
        typer.Option(help="A lock file or a git revision (default: APP/contracts.lock.json)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the contracts with the lock; exit 1 when a change breaks a caller or consumer.

    Example: cleave contracts check examples/shop --against origin/main
    """
    import msgspec

    from cleave import compat
    from cleave._baseline import baseline

    loaded = _load(path, None)
    try:
        old, label = baseline(loaded.root, against)
    except CleaveError as exc:
        _fail(str(exc), 2)
        raise AssertionError from exc  # unreachable: _fail exits
    changes = compat.compare(old, _snapshot(loaded))
    if as_json:
        sys.stdout.write(json.dumps(msgspec.to_builtins(changes), indent=2) + "\n")
    elif not changes:
        console.print(f"{loaded.app.name}: no contract changes since {label}", highlight=False)
    else:
        table = Table(title=f"{loaded.app.name}: contracts vs {label}", title_justify="left")
        for col in ("verdict", "change", "where", "why"):
            table.add_column(col, overflow="fold")
        for c in changes:
            style = _VERDICT_STYLE[c.verdict]
            table.add_row(f"[{style}]{c.verdict}[/]", c.change, escape(c.path), escape(c.reason))
        console.print(table)
        if not compat.breaking(changes):
            console.print("nothing breaks; `cleave contracts snapshot` records these changes")
    if compat.breaking(changes):
        if not as_json:
            err.print(
                "[red]breaking:[/] old callers or consumers would fail; undo the change, or make "
                "it in a new major beside this one (docs/contracts.md)"
            )
        raise typer.Exit(1)


@contracts.command("asyncapi")
def contracts_asyncapi(path: AppArg = None, output: OutputOpt = None) -> None:
    """Write an AsyncAPI 3.0 document of the app's events (default: APP/asyncapi.json).

    Example: cleave contracts asyncapi examples/shop -o -
    """
    from cleave import asyncapi

    loaded = _load(path, None)
    _snapshot(loaded)  # says which field msgspec cannot describe, as `snapshot` does
    doc = asyncapi.document(loaded.app, loaded.plan.app.version)
    target = output or loaded.root / "asyncapi.json"
    _emit(json.dumps(doc, indent=2, sort_keys=True) + "\n", target)
    if str(target) != "-":
        console.print(f"{loaded.app.name}: wrote {target}", highlight=False)


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# `cleave build`: see cleave.deploy; `cleave coupling`: see cleave.coupling.
app.command("build")(_build_command)
app.command("coupling")(_coupling)


def main() -> None:
    _cliutil.run_main(app, err)


if __name__ == "__main__":
    main()
