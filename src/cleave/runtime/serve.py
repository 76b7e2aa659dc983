"""``cleave serve`` and ``cleave gateway``: one group (or the gateway) for a scheduler to run.

``cleave up`` runs a whole app on one machine: its own nats-server, and every
worker as its child. Beyond one machine a scheduler (Kubernetes, compose,
systemd) runs the processes, and they meet on a NATS server (or cluster) run
apart from them. Each process here runs one :class:`~cleave.runtime.worker.Worker`
in the foreground, as ``cleave up``'s workers do, and adds what a scheduler
expects of it:

- NATS from ``CLEAVE_NATS_URL`` or ``[nats] url`` (several URLs, comma
  separated, for a cluster), with ``[nats]`` credentials and TLS files; once
  connected it reconnects for ever, to any member;
- at start it waits for NATS with bounded exponential backoff, logging each
  failed try and why, and gives up after ``wait_nats`` seconds (exit 1);
- an admin port: ``/healthz`` (liveness: 200 from the start, while it waits
  for NATS too), ``/readyz`` (readiness: 200 only while it takes work),
  ``/metrics`` (Prometheus), ``/status``;
- SIGTERM or SIGINT drains: not ready at once, no new calls, events or
  requests, those in progress finish within ``grace`` seconds, the outboxes
  are published, exit 0. A second signal, or the grace running out, stops
  at once: exit 1 if work in progress was abandoned (it is logged), else 0.

A SQLite database is a file on one machine: a group that may run as several
replicas (``--replica`` above 0, or ``replicas`` above 1 in the plan) on a
SQLite database is refused, with what to use instead (:func:`check_placement`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from cleave._backoff import backoff
from cleave.config import mask_url
from cleave.errors import CleaveError, ConfigError, LifecycleError

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

    from cleave.app import LoadedApp
    from cleave.runtime.worker import Worker

__all__ = ["ServeOptions", "check_placement", "nats_url", "run", "wait_for_nats"]

log = structlog.get_logger("cleave.serve")

#: Exit codes: stopped cleanly; failed or abandoned work; bad configuration.
OK, FAILED, BAD_CONFIG = 0, 1, 2


class ServeOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What ``cleave serve`` / ``cleave gateway`` were asked for."""

    role: str = "service"
    group: str = ""
    replica: int = 0
    admin_host: str = "127.0.0.1"
    admin_port: int = 0
    #: The gateway's address; None: ``[gateway] host`` and ``port``.
    host: str | None = None
    port: int | None = None
    #: Seconds to keep trying to reach NATS at start.
    wait_nats: float = 60.0
    #: Seconds calls, events and requests in progress get to finish on SIGTERM.
    grace: float = 30.0
    #: None: ``[database] migrate``.
    migrate: bool | None = None


def nats_url(loaded: LoadedApp) -> str:
    """The external NATS: ``CLEAVE_NATS_URL``, else ``[nats] url`` (several: comma separated)."""
    url = os.environ.get("CLEAVE_NATS_URL", "").strip() or loaded.plan.nats.url
    if not url:
        raise ConfigError(
            "cleave serve and cleave gateway run against a NATS server of your own: set "
            "CLEAVE_NATS_URL=nats://host:4222 (several, comma separated, for a cluster) or "
            "[nats] url in cleave.toml; `cleave up` is the one that starts its own"
        )
    return url


def check_placement(loaded: LoadedApp, group: str, replica: int) -> None:
    """Refuse a SQLite database for a group that may run as several replicas.

    The rule: ``cleave serve`` of a group with a service on SQLite fails if
    ``--replica`` is above 0 or the plan gives any of the group's services
    more than one replica. Replicas started by a scheduler may land on other
    machines, and a SQLite file cannot be shared between machines (nor over
    a network file system: its locks do not hold there). One replica on
    SQLite is allowed: its file is local to wherever it runs.
    (``cleave up`` runs every replica on one machine, where sharing a file is safe.)
    """
    services = loaded.groups().get(group)
    if services is None:
        return  # the worker says which groups there are
    replicas = max(loaded.plan.service(s).replicas for s in services)
    if replica == 0 and replicas <= 1:
        return
    for name in services:
        spec = loaded.app.services[name]
        if spec.database is None:
            continue
        url = loaded.plan.database_url(name, loaded.data_dir)
        if url.startswith("sqlite"):
            why = f"--replica {replica}" if replica else f"{replicas} replicas in cleave.toml"
            raise ConfigError(
                f"{name} keeps its data in SQLite ({mask_url(url)}), a file on one machine, "
                f"but group {group} may run several replicas ({why}) on several machines, "
                "which cannot share it: give it a PostgreSQL database, "
                f'[services.{name}] database = "postgresql+asyncpg://user@db-host/{name}" '
                '(or [database] url = "postgresql+asyncpg://user@db-host/app_{service}"), '
                "or run one replica"
            )


def _masked(url: str) -> str:
    """``url`` (one or several) with every password as ``***``, for logs and errors."""
    from cleave.transport.nats import servers

    return ",".join(mask_url(u) for u in servers(url))


def _nats_options(loaded: LoadedApp) -> dict[str, Any]:
    """Who this process is on an external NATS, and how it reaches it ([nats] files)."""
    from cleave.runtime.nats_auth import credentials_file
    from cleave.runtime.nats_tls import client_context

    options: dict[str, Any] = {"tls": client_context(loaded)}
    if loaded.plan.nats.credentials:
        options["credentials"] = credentials_file(loaded.plan.nats.credentials)
    return options


async def _try_once(url: str, name: str, options: dict[str, Any]) -> str | None:
    """One try at every server in ``url``: None if one answered, else why none did."""
    from nats.aio.client import Client as NatsClient

    from cleave.transport.nats import servers

    reasons: list[str] = []

    async def error_cb(exc: Exception) -> None:
        reasons.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    # nats-py types reconnect_time_wait int; it takes seconds as a float.
    extra: dict[str, Any] = {"reconnect_time_wait": 0.1}
    if options.get("tls") is not None:
        extra["tls"] = options["tls"]
    if options.get("credentials"):
        extra["user_credentials"] = options["credentials"]
    nc = NatsClient()
    try:
        # max_reconnect_attempts=1: each server tried (at most twice), then NoServersError.
        await nc.connect(
            servers(url),
            name=name,
            connect_timeout=2,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=error_cb,
            **extra,
        )
    except Exception as exc:
        reason = reasons[-1] if reasons else f"{type(exc).__name__}: {exc}"
        if "authorization violation" in " ".join(reasons).lower():
            raise ConfigError(
                f"NATS at {_masked(url)} refused this process's credentials (authorization "
                "violation): check [nats] credentials (CLEAVE_NATS_CREDENTIALS) or the user "
                "and password in the URL"
            ) from None
        return reason
    await nc.close()
    return None


async def wait_for_nats(
    url: str, name: str, options: dict[str, Any], *, total: float, stop: asyncio.Event
) -> NatsClient | None:
    """Connect to NATS, waiting up to ``total`` seconds for it; None if ``stop`` came first.

    Tries again after 0.5, 1, 2 ... up to 5 seconds (with jitter), logging
    each failure and its reason; raises :class:`LifecycleError` once ``total``
    has passed. The connection returned reconnects for ever.
    """
    from cleave.transport.nats import connect

    deadline = time.monotonic() + total
    attempt = 0
    while True:
        attempt += 1
        reason = await _try_once(url, name, options)
        if reason is None:
            left = max(deadline - time.monotonic(), 5.0)
            try:
                return await asyncio.wait_for(connect(url, name, **options), left)
            except TimeoutError:
                reason = f"connecting took over {left:.0f}s"
            except CleaveError as exc:
                reason = str(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise LifecycleError(
                f"NATS at {_masked(url)} did not answer within {total:g}s ({attempt} tries; "
                f"last: {reason}); start it, fix CLEAVE_NATS_URL / [nats] url, or wait longer "
                "with --wait-nats"
            )
        delay = min(backoff(attempt, base=0.5, cap=5.0, jitter=0.2), left)
        log.warning(
            "waiting for NATS",
            url=_masked(url),
            attempt=attempt,
            error=reason,
            retry_in=round(delay, 2),
            gives_up_in=round(left, 1),
        )
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return None
        except TimeoutError:
            pass


def _instance(label: str) -> str:
    """A name no other process of the app has, on any machine (leases and discovery use it).

    A pid alone is not one: in containers every main process is pid 1.
    """
    host = socket.gethostname().split(".")[0][:40]
    return f"{label}-{host}-{os.getpid()}-{os.urandom(2).hex()}"


async def run(loaded: LoadedApp, options: ServeOptions) -> int:
    """Run one group (or the gateway) until a signal; returns the exit code."""
    from cleave.runtime.worker import Worker

    plan = loaded.plan
    try:
        if options.role != "gateway":
            check_placement(loaded, options.group, options.replica)
        url = nats_url(loaded)
        if options.migrate is not None:
            database = msgspec.structs.replace(plan.database, migrate=options.migrate)
            plan = msgspec.structs.replace(plan, database=database)
        loaded.plan = msgspec.structs.replace(
            plan, nats=msgspec.structs.replace(plan.nats, url=url)
        )
        gateway = options.role == "gateway"
        label = f"{'gateway' if gateway else options.group}.{options.replica}"
        admin_hosts = ("*",) if options.admin_host not in ("127.0.0.1", "localhost", "::1") else ()
        worker = Worker(
            loaded,
            role=options.role,
            group=options.group,
            replica=options.replica,
            instance=_instance(label),
            admin=(options.admin_host, options.admin_port),
            admin_hosts=admin_hosts,
            gateway=(
                options.host or plan.gateway.host,
                plan.gateway.port if options.port is None else options.port,
            )
            if gateway
            else None,
        )
        nats = _nats_options(loaded)
    except ConfigError as exc:
        log.error("cannot start", error=str(exc))
        return BAD_CONFIG
    stop, force = asyncio.Event(), asyncio.Event()
    signals = _Signals(stop, force)
    signals.install()
    nc: NatsClient | None = None
    try:
        admin_port = await worker.open_admin()
        log.info("starting", services=worker.services, admin_port=admin_port, nats=_masked(url))
        nc = await wait_for_nats(
            url, f"{loaded.app.name}.{worker.label}", nats, total=options.wait_nats, stop=stop
        )
        if nc is None:
            log.info("stopped while waiting for NATS")
            return OK
        if not await _start(worker, nc, force):
            return OK
        if not stop.is_set():  # a signal while starting: it drains at once
            log.info(
                "ready",
                services=worker.services,
                version=worker.version,
                admin_port=admin_port,
                url=worker.http.url if worker.http else "",
                instance=worker.instance,
            )
            await stop.wait()
        return await _drain(worker, options.grace, force)
    except CleaveError as exc:
        log.error("cannot start", error=str(exc))
        return BAD_CONFIG if isinstance(exc, ConfigError) else FAILED
    except Exception as exc:  # a database away, say: one line, not a traceback
        log.error("cannot start", error=f"{type(exc).__name__}: {exc}")
        return FAILED
    finally:
        signals.remove()
        await worker.close()
        if nc is not None:
            await nc.close()


async def _start(worker: Worker, nc: NatsClient, force: asyncio.Event) -> bool:
    """Start ``worker``; False if a second signal came first (it is then stopped)."""
    starting = asyncio.ensure_future(worker.start(nc))
    forced = asyncio.ensure_future(force.wait())
    await asyncio.wait({starting, forced}, return_when="FIRST_COMPLETED")
    forced.cancel()
    if starting.done():
        starting.result()  # its error, if any
        return True
    starting.cancel()
    await asyncio.wait({starting}, timeout=5.0)
    log.warning("stopped by a second signal while starting; it had taken no work yet")
    return False


async def _drain(worker: Worker, grace: float, force: asyncio.Event) -> int:
    """Drain ``worker`` within ``grace`` seconds, or less if ``force`` is set; the exit code."""
    log.info("draining", grace=grace, **worker.in_progress())
    draining = asyncio.ensure_future(worker.drain(grace))
    forced = asyncio.ensure_future(force.wait())
    # Calls get the grace; the steps after them (consumers, outbox, databases) a bounded while.
    await asyncio.wait({draining, forced}, timeout=grace + 15.0, return_when="FIRST_COMPLETED")
    forced.cancel()
    left = worker.in_progress()
    if not draining.done():
        why = "a second signal" if force.is_set() else f"draining took over {grace + 15:g}s"
        draining.cancel()
        await asyncio.wait({draining}, timeout=5.0)
    elif draining.exception() is not None:
        error = draining.exception()
        log.error("draining failed", error=f"{type(error).__name__}: {error}")
        return FAILED
    elif any(left.values()):
        why = f"the grace of {grace:g}s ran out"
    else:
        log.info("stopped: everything in progress finished, outboxes published")
        return OK
    if any(left.values()):
        log.error(
            f"stopped by {why}, abandoning work in progress: callers see those calls fail "
            "(they may have run); unsettled events are delivered again, to another replica",
            **left,
        )
        return FAILED
    log.warning(f"stopped by {why}; nothing was in progress")
    return OK


class _Signals:
    """SIGTERM/SIGINT: the first drains, the second stops at once."""

    def __init__(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        self.stop = stop
        self.force = force

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.warning("second signal: stopping now", signal=sig.name)
            self.force.set()
            return
        log.info("signal: draining", signal=sig.name)
        self.stop.set()

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
