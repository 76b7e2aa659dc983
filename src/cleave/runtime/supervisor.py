"""The supervisor of the processes placement (``cleave up``).

It starts, in order: the embedded nats-server (unless ``[nats] url`` names
one; with ``[nats] cluster = 3`` or more, a JetStream cluster of that many
nodes, each restarted if it dies), one worker process per service group and
replica, then the gateway worker (on a socket the supervisor binds, so a
busy port fails at once and a restarted gateway needs no rebind). It answers
``cleave ps`` and ``cleave down`` on a loopback control API, and on Ctrl-C,
SIGTERM or ``cleave down`` stops the gateway, then the workers (each
drains), then NATS, leaving no process behind. Its children die with it even
if it is killed (``PR_SET_PDEATHSIG``).

:class:`Supervisor` puts these parts together:

- :mod:`cleave.runtime.children`: the worker processes (spawn, watch,
  restart with backoff, stop) and their logs;
- :mod:`cleave.runtime.operations`: scale, deploy and chaos;
- :mod:`cleave.runtime.health`: health checks that replace a stuck worker;
- :mod:`cleave.runtime.runstate`: the lock and the state file in ``.cleave/run``;
- :mod:`cleave.runtime.control`: the control API (the dashboard shares its port).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console
from starlette.applications import Starlette

from cleave._cliutil import progress
from cleave.errors import CleaveError, ConfigError, LifecycleError
from cleave.observability.dashboard import Dashboard
from cleave.runtime import control, runstate
from cleave.runtime.children import Child, Children
from cleave.runtime.guard import TOKEN_HEADER, Guard, make_token, token_path
from cleave.runtime.health import HealthMonitor
from cleave.runtime.http import HttpServer, bind, bind_admin
from cleave.runtime.nats_auth import GATEWAY, identity_path, make_identities, server_authorization
from cleave.runtime.nats_tls import make_certificates, route_block, server_block, tls_dir
from cleave.runtime.natscluster import EmbeddedCluster, NodeSpec
from cleave.runtime.natsd import EmbeddedNats
from cleave.runtime.operations import Operations
from cleave.runtime.sources import FleetSource

if TYPE_CHECKING:
    import socket

    from cleave.app import LoadedApp

__all__ = ["Child", "Supervisor", "run", "start_detached"]


class Supervisor:
    """Runs one app in the processes placement until told to stop."""

    def __init__(
        self,
        loaded: LoadedApp,
        *,
        port: int | None = None,
        admin_port: int | None = None,
        console: Console | None = None,
    ) -> None:
        self.loaded = loaded
        self.port = loaded.plan.gateway.port if port is None else port
        self.console = console or Console(stderr=True)
        self.nats: EmbeddedNats | None = None
        #: The embedded cluster, with ``[nats] cluster`` of 3 or more (then ``nats`` is None).
        self.cluster: EmbeddedCluster | None = None
        self._cluster_watch: asyncio.Task[None] | None = None
        self.nats_url = loaded.plan.nats.url
        self.gateway_url = ""
        self.control: HttpServer | None = None
        self._gateway_sock: socket.socket | None = None
        self._stop = asyncio.Event()
        self._lock = runstate.RunLock(loaded)
        self._status = "starting"
        self.started_at = time.time()
        self._admin_http: httpx.AsyncClient | None = None
        h = loaded.plan.health
        self.admin_port = admin_port
        self.token = ""
        self.workers = Children(loaded, stop=self._stop, say=self._say, changed=self._write_state)
        self.operations = Operations(self)
        self.fleet = FleetSource(self, spans=loaded.plan.observability.spans)
        self.workers.on_stopping = self.fleet.keep
        self.dashboard = Dashboard(loaded.app, self.fleet, "processes (cleave up)")
        self.health = HealthMonitor(
            self, interval=h.interval, timeout=h.timeout, failures=h.failures
        )

    @property
    def children(self) -> list[Child]:
        """Every worker process, the gateway's included (see :class:`Children`)."""
        return self.workers.all

    @property
    def admin_http(self) -> httpx.AsyncClient:
        """The one client for the workers' admin ports (health, status, stats, chaos).

        Shared because an httpx client builds an SSL context when it is made:
        a new one per dashboard sample was half the supervisor's CPU under load.
        """
        if self._admin_http is None:
            # The workers' /faults wants the run's token; reads ignore it.
            self._admin_http = httpx.AsyncClient(timeout=5, headers={TOKEN_HEADER: self.token})
        return self._admin_http

    # -- the whole run -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            self._lock.acquire()
            with progress(self.console, f"starting {self.loaded.app.name}: NATS, then the workers"):
                await self._start()
            self._say(
                f"[bold green]{self.loaded.app.name}[/] is up: gateway "
                f"[bold]{self.gateway_url}[/]   (Ctrl-C or `cleave down` to stop)"
            )
            self._say(f"dashboard: [bold]{self.dashboard_url}[/]")
            self._write_state("ready")
            self.health.start()
            self.dashboard.start()
            await self._stop.wait()
            return 0
        except CleaveError as exc:
            self._say(f"[red]error:[/] {exc}")
            return 1
        finally:
            with contextlib.suppress(Exception):
                self._write_state("stopping")
            await self._shutdown()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self._lock.release()

    def request_stop(self) -> None:
        self._stop.set()

    async def _start(self) -> None:
        self.loaded.run_dir.mkdir(parents=True, exist_ok=True)
        self.workers.logs_dir.mkdir(parents=True, exist_ok=True)
        gw = self.loaded.plan.gateway
        if self.loaded.app.gateway is not None:
            self._gateway_sock = bind(gw.host, self.port)
            self.workers.listen_sock = self._gateway_sock
        obs = self.loaded.plan.observability
        sock = bind_admin(
            obs.admin_port if self.admin_port is None else self.admin_port,
            explicit=self.admin_port is not None,
        )
        #: This run's control token (see cleave.runtime.guard): the CLI and the page send it.
        self.token = make_token(self.loaded.run_dir)
        self.dashboard.token = self.token
        guarded = Guard(self._control_app(), self.token, [gw.host])
        self.control = HttpServer(guarded, "127.0.0.1", 0, sock=sock)
        await self.control.start()
        self._write_state("starting")
        if not self.nats_url:
            await self._start_nats()
        self.workers.nats_url = self.nats_url
        for group, services in self.loaded.groups().items():
            replicas = max(self.loaded.plan.service(s).replicas for s in services)
            for r in range(replicas):
                self.children.append(Child("service", group, r, services))
        first = list(self.children)
        for child in first:
            await self.workers.spawn(child)
        await self.workers.await_ready(first)
        if self._gateway_sock is not None:
            gateway = Child("gateway", "gateway", 0, ("gateway",))
            self.children.append(gateway)
            await self.workers.spawn(gateway)
            await self.workers.await_ready([gateway])
            self.gateway_url = f"http://{gw.host}:{self._gateway_sock.getsockname()[1]}"

    async def _start_nats(self) -> None:
        """The embedded nats-server, or cluster of them; sets :attr:`nats_url`."""
        plan = self.loaded.plan.nats
        authorization = self._nats_identities() if plan.auth else ""
        certificates = make_certificates(tls_dir(self.loaded)) if plan.tls else None
        tls = server_block(certificates) if certificates is not None else ""
        auth = "one identity per service group" if plan.auth else "no authentication"
        name = f"cleave_{self.loaded.app.name}"
        if plan.cluster >= 3:
            store = self.loaded.state_dir / "nats-cluster"
            self.cluster = EmbeddedCluster(
                store,
                plan.cluster,
                binary=plan.binary,
                name=name,
                authorization=authorization,
                tls=tls,
                route_tls=route_block(certificates) if certificates is not None else "",
                nodes=[
                    NodeSpec(port=plan.port + i if plan.port else 0) for i in range(plan.cluster)
                ],
            )
            await self.cluster.start()
            self.nats_url = self.cluster.url
            self._cluster_watch = asyncio.get_running_loop().create_task(
                self.cluster.keep_running(self._stop, self._say, self._write_state)
            )
            self._say(
                f"NATS cluster of {plan.cluster} nodes on {self.nats_url} (JetStream in {store}, "
                f"{plan.replicas} replicas per stream; {auth})"
            )
            return
        self.nats = EmbeddedNats(
            self.loaded.state_dir / "nats",
            port=plan.port,
            binary=plan.binary,
            name=name,
            authorization=authorization,
            tls=tls,
        )
        await self.nats.start()
        self.nats_url = self.nats.url
        self._say(
            f"nats-server on {self.nats_url} (JetStream in {self.loaded.state_dir / 'nats'}; "
            f"{auth})"
        )

    def _nats_identities(self) -> str:
        """New NATS credentials for every worker; the server's ``authorization`` block."""
        identities = make_identities(self.loaded)
        self.workers.identities = {
            name: identity_path(self.loaded, name) for name in [*self.loaded.groups(), GATEWAY]
        }
        return server_authorization(identities)

    @property
    def dashboard_url(self) -> str:
        return self.control.url if self.control is not None else ""

    async def _shutdown(self) -> None:
        self._stop.set()
        await self.health.stop()
        await self.dashboard.stop()
        await self.fleet.close()
        if self._admin_http is not None:
            await self._admin_http.aclose()
        gateways = [c for c in self.children if c.role == "gateway"]
        await self.workers.stop(gateways)
        await self.workers.stop([c for c in self.children if c.role != "gateway"])
        if self.nats is not None:
            await self.nats.stop()
        if self._cluster_watch is not None:
            with contextlib.suppress(Exception):  # it reported its failures as they came
                await self._cluster_watch  # ends with the stop event
        if self.cluster is not None:
            await self.cluster.stop()
        if self.control is not None:
            await self.control.stop()
        if self._gateway_sock is not None:
            self._gateway_sock.close()
        control.state_path(self.loaded).unlink(missing_ok=True)
        token_path(self.loaded.run_dir).unlink(missing_ok=True)
        self._say(f"{self.loaded.app.name}: stopped")

    # -- what the control API asks -------------------------------------------------------

    async def scale(self, service: str, replicas: int) -> dict[str, Any]:
        """Run ``replicas`` processes of ``service``'s group (see :class:`Operations`)."""
        return await self.operations.scale(service, replicas)

    async def deploy(self, service: str) -> dict[str, Any]:
        """Replace ``service``'s group processes, new before old (see :class:`Operations`)."""
        return await self.operations.deploy(service)

    async def chaos(
        self, action: str, service: str, replica: int | None, value: float | None
    ) -> dict[str, Any]:
        """Hurt ``service`` on purpose (see :class:`Operations`)."""
        return await self.operations.chaos(action, service, replica, value)

    async def status(self) -> dict[str, Any]:
        """Each ready worker's own status (outbox, consumers, sagas), by label."""

        async def one(child: Child) -> tuple[str, Any]:
            if child.status != "ready" or child.admin_port is None:
                return child.label, {"error": f"worker is {child.status}"}
            try:
                resp = await self.admin_http.get(
                    f"http://127.0.0.1:{child.admin_port}/status", timeout=3
                )
                return child.label, resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                return child.label, {"error": f"{type(exc).__name__}: {exc}"}

        return dict(await asyncio.gather(*(one(c) for c in self.children)))

    def processes(self) -> list[dict[str, Any]]:
        order = {g: i for i, g in enumerate([*self.loaded.groups(), "gateway"])}
        children = sorted(
            self.children, key=lambda c: (order.get(c.group, 99), c.replica, c.generation)
        )
        return [row for c in children for row in c.rows()]

    def _control_app(self) -> Starlette:
        return control.control_app(self, self.dashboard.routes())

    def _write_state(self, status: str | None = None) -> None:
        if status is not None:
            self._status = status
        runstate.write(self, self._status)

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False)


async def run(
    loaded: LoadedApp, *, port: int | None, admin_port: int | None, console: Console
) -> int:
    """``cleave up`` in the foreground; returns the exit code."""
    return await Supervisor(loaded, port=port, admin_port=admin_port, console=console).run()


def start_detached(
    loaded: LoadedApp, *, port: int | None, admin_port: int | None = None, timeout: float = 120.0
) -> dict[str, Any]:
    """Start ``cleave up`` in the background; return its state once it is ready."""
    existing = control.read_state(loaded)
    if existing is not None:
        raise ConfigError(
            f"{loaded.app.name} is already up (pid {existing['pid']}); `cleave down "
            f"{loaded.root}` first"
        )
    loaded.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = loaded.run_dir / "supervisor.log"
    argv = [
        sys.executable,
        "-m",
        "cleave.cli",
        "up",
        str(loaded.root),
        "--state-dir",
        str(loaded.state_dir),
    ]
    if port is not None:
        argv += ["--port", str(port)]
    if admin_port is not None:
        argv += ["--admin-port", str(admin_port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(loaded.root),
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise LifecycleError(f"cleave up exited with code {proc.returncode}:\n{tail}")
        state = control.read_state(loaded)
        if state is not None and state.get("pid") == proc.pid and state["status"] == "ready":
            return state
        time.sleep(0.1)
    control.stop(loaded)
    raise LifecycleError(f"cleave up was not ready within {timeout:g}s; see {log_path}")
