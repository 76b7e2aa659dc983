"""The supervisor of the processes placement (``cleave up``).

It starts, in order: the embedded nats-server (unless ``[nats] url`` names
one), one worker process per service group and replica, then the gateway
worker (on a socket the supervisor binds, so a busy port fails at once and a
restarted gateway needs no rebind). It restarts a worker that exits with
exponential backoff (0.5 s after a worker that was healthy for 5 s; doubling
up to 10 s while it keeps dying soon after starting), answers ``cleave ps``
and ``cleave down`` on a loopback control API, and on Ctrl-C, SIGTERM or
``cleave down`` stops the gateway, then the workers (each drains), then
NATS, leaving no process behind. Its
children die with it even if it is killed (``PR_SET_PDEATHSIG``).

Worker output goes to ``.cleave/logs/<group>.<replica>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
from rich.console import Console
from starlette.applications import Starlette

from cleave.errors import CleaveError, ConfigError, LifecycleError
from cleave.observability.dashboard import Dashboard
from cleave.observability.sources import FleetSource
from cleave.runtime import control
from cleave.runtime.health import HealthMonitor
from cleave.runtime.http import HttpServer, bind, bind_admin
from cleave.runtime.natsd import EmbeddedNats

if TYPE_CHECKING:
    import socket

    from cleave.app import LoadedApp

__all__ = ["Child", "Supervisor", "run", "start_detached"]

START_TIMEOUT = 60.0
#: A worker ready this long before it exits is restarted at once (not backed off).
STABLE_AFTER = 5.0
STOP_TIMEOUT = 20.0


class Child:
    """One supervised worker process (a group replica, or the gateway)."""

    def __init__(
        self, role: str, group: str, replica: int, services: tuple[str, ...], generation: int = 0
    ) -> None:
        self.role = role
        self.group = group
        self.replica = replica
        self.services = services
        #: Bumped by each deploy: old and new processes of a replica coexist for a moment.
        self.generation = generation
        self.paused = False
        self.health_failures = 0
        self.status = "starting"
        self.pid: int | None = None
        self.started_at: float | None = None
        self.restarts = 0
        self.failures = 0
        self.ready_at: float | None = None
        self.ever_ready = False
        self.last_exit: int | None = None
        self.version = ""
        self.admin_port: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return f"{self.group}.{self.replica}"

    def rows(self) -> list[dict[str, Any]]:
        """One row per service this process runs, for ``cleave ps``."""
        uptime = time.time() - self.started_at if self.started_at and self.pid else None
        return [
            {
                "service": service,
                "replica": self.replica,
                "pid": self.pid if self.status not in ("restarting", "stopped") else None,
                "group": self.group,
                "status": self.status,
                "uptime_s": round(uptime, 1) if uptime is not None else None,
                "restarts": self.restarts,
                "version": self.version,
                "generation": self.generation,
                "last_exit": self.last_exit,
            }
            for service in self.services
        ]


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
        self.children: list[Child] = []
        self.nats: EmbeddedNats | None = None
        self.nats_url = loaded.plan.nats.url
        self.gateway_url = ""
        self.control: HttpServer | None = None
        self._gateway_sock: socket.socket | None = None
        self._stop = asyncio.Event()
        self._lock: IO[str] | None = None
        self._status = "starting"
        self.started_at = time.time()
        self.logs_dir = loaded.state_dir / "logs"
        self._ops = asyncio.Lock()  # one scale or deploy at a time
        self._admin_http: httpx.AsyncClient | None = None
        h = loaded.plan.health
        self.admin_port = admin_port
        self.fleet = FleetSource(self)
        self.dashboard = Dashboard(loaded.app, self.fleet, "processes (cleave up)")
        self.health = HealthMonitor(
            self, interval=h.interval, timeout=h.timeout, failures=h.failures
        )

    @property
    def admin_http(self) -> httpx.AsyncClient:
        """The one client for the workers' admin ports (health, status, stats, chaos).

        Shared because an httpx client builds an SSL context when it is made:
        a new one per dashboard sample was half the supervisor's CPU under load.
        """
        if self._admin_http is None:
            self._admin_http = httpx.AsyncClient(timeout=5)
        return self._admin_http

    # -- the whole run -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            self._acquire_lock()
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
            self._release_lock()

    def request_stop(self) -> None:
        self._stop.set()

    async def _start(self) -> None:
        self.loaded.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        gw = self.loaded.plan.gateway
        if self.loaded.app.gateway is not None:
            self._gateway_sock = bind(gw.host, self.port)
        obs = self.loaded.plan.observability
        sock = bind_admin(
            obs.admin_port if self.admin_port is None else self.admin_port,
            explicit=self.admin_port is not None,
        )
        self.control = HttpServer(self._control_app(), "127.0.0.1", 0, sock=sock)
        await self.control.start()
        self._write_state("starting")
        if not self.nats_url:
            plan = self.loaded.plan.nats
            self.nats = EmbeddedNats(
                self.loaded.state_dir / "nats",
                port=plan.port,
                binary=plan.binary,
                name=f"cleave_{self.loaded.app.name}",
            )
            await self.nats.start()
            self.nats_url = self.nats.url
            self._say(
                f"nats-server on {self.nats_url} (JetStream in {self.loaded.state_dir / 'nats'})"
            )
        for group, services in self.loaded.groups().items():
            replicas = max(self.loaded.plan.service(s).replicas for s in services)
            for r in range(replicas):
                self.children.append(Child("service", group, r, services))
        workers = list(self.children)
        for child in workers:
            await self._spawn(child)
        await self._await_ready(workers)
        if self._gateway_sock is not None:
            gateway = Child("gateway", "gateway", 0, ("gateway",))
            self.children.append(gateway)
            await self._spawn(gateway)
            await self._await_ready([gateway])
            self.gateway_url = f"http://{gw.host}:{self._gateway_sock.getsockname()[1]}"

    async def _await_ready(self, children: list[Child]) -> None:
        waits = {asyncio.ensure_future(c.ready.wait()): c for c in children}
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            deadline = time.monotonic() + START_TIMEOUT
            pending = set(waits)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    late = ", ".join(waits[w].label for w in pending)
                    raise LifecycleError(f"workers not ready after {START_TIMEOUT:g}s: {late}")
                done, pending = await asyncio.wait(
                    pending | {stop}, timeout=min(left, 0.5), return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(stop)
                if stop in done:
                    raise LifecycleError("stopped while starting")
                for c in children:
                    if c.status == "failed":
                        raise LifecycleError(
                            f"worker {c.label} ({', '.join(c.services)}) failed to start; "
                            f"its log ({self._log_path(c)}):\n{self._tail(c)}"
                        )
        finally:
            stop.cancel()
            for w in waits:
                w.cancel()

    # -- children ------------------------------------------------------------------------

    def _log_path(self, child: Child) -> Path:
        return self.logs_dir / f"{child.label}.log"

    def _tail(self, child: Child, lines: int = 25) -> str:
        try:
            text = self._log_path(child).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    async def _spawn(self, child: Child) -> None:
        assert self.nats_url
        read_fd, write_fd = os.pipe()
        argv = [
            sys.executable,
            "-m",
            "cleave.runtime.worker",
            "--app",
            str(self.loaded.root),
            "--state-dir",
            str(self.loaded.state_dir),
            "--role",
            child.role,
            "--group",
            child.group,
            "--replica",
            str(child.replica),
            "--nats",
            self.nats_url,
            "--notify-fd",
            str(write_fd),
        ]
        pass_fds = [write_fd]
        if child.role == "gateway" and self._gateway_sock is not None:
            argv += ["--listen-fd", str(self._gateway_sock.fileno())]
            pass_fds.append(self._gateway_sock.fileno())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self._log_path(child), "ab") as log:  # noqa: ASYNC230 - opening is instant
            try:
                child.proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=pass_fds,
                    process_group=0,
                    env=env,
                    cwd=str(self.loaded.root),
                )
            finally:
                os.close(write_fd)
        child.pid = child.proc.pid
        child.started_at = time.time()
        child.status = "starting"
        child.ready.clear()
        self._write_state()
        child.task = asyncio.get_running_loop().create_task(self._watch(child, read_fd))

    async def _watch(self, child: Child, read_fd: int) -> None:
        proc = child.proc
        assert proc is not None
        notes = asyncio.get_running_loop().create_task(self._read_notes(child, read_fd))
        code = await proc.wait()
        await asyncio.wait([notes], timeout=1)
        child.last_exit = code
        if child.stopping or self._stop.is_set():
            child.status = "stopped"
            return
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"code {code}"
        if not child.ever_ready:
            child.failures += 1
            if child.failures >= 3:
                child.status = "failed"
                self._say(
                    f"[red]{child.label} exited ({how}) before it was ready, "
                    f"{child.failures} times; giving up[/]"
                )
                return
        else:
            # Healthy for a while, then killed: restart at once. Dying again and again
            # soon after becoming ready is a crash loop: back off.
            healthy_for = time.time() - (child.ready_at or time.time())
            child.failures = 1 if healthy_for >= STABLE_AFTER else child.failures + 1
        delay = min(10.0, 0.25 * 2**child.failures) * random.uniform(0.8, 1.2)
        child.status = "restarting"
        self._say(
            f"[yellow]{child.label}[/] ({', '.join(child.services)}) exited ({how}); "
            f"restarting in {delay:.1f}s"
        )
        self._write_state()
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
            child.status = "stopped"
            return
        except TimeoutError:
            pass
        child.restarts += 1
        await self._spawn(child)

    async def _read_notes(self, child: Child, read_fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(read_fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            async for line in reader:
                with contextlib.suppress(ValueError):
                    note = json.loads(line)
                    state = note.get("state")
                    if state == "ready":
                        child.status = "ready"
                        child.ever_ready = True
                        child.ready_at = time.time()
                        child.version = note.get("version", "")
                        child.admin_port = note.get("admin_port")
                        child.ready.set()
                        self._write_state()
                    elif state == "draining":
                        child.status = "draining"
        finally:
            transport.close()

    async def _stop_children(self, children: list[Child]) -> None:
        for c in children:
            c.stopping = True
            if c.proc is not None and c.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
        for c in children:
            if c.proc is None:
                continue
            try:
                await asyncio.wait_for(c.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self._say(f"[yellow]{c.label} did not stop in {STOP_TIMEOUT:g}s; killing it[/]")
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()
                await c.proc.wait()
            c.status = "stopped"
        for c in children:
            if c.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(c.task, 2)

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
        await self._stop_children(gateways)
        await self._stop_children([c for c in self.children if c.role != "gateway"])
        if self.nats is not None:
            await self.nats.stop()
        if self.control is not None:
            await self.control.stop()
        if self._gateway_sock is not None:
            self._gateway_sock.close()
        control.state_path(self.loaded).unlink(missing_ok=True)
        self._say(f"{self.loaded.app.name}: stopped")

    # -- operations: scale, deploy, chaos ------------------------------------------------

    def group_of(self, service: str) -> str:
        if service == "gateway" and self._gateway_sock is not None:
            return "gateway"
        for group, members in self.loaded.groups().items():
            if service in members:
                return group
        raise ConfigError(
            f"app {self.loaded.app.name} has no service {service!r} "
            f"(services: {', '.join(self.loaded.app.services)})"
        )

    def live(self, group: str) -> list[Child]:
        """The group's processes that are not being stopped, by replica."""
        found = [c for c in self.children if c.group == group and not c.stopping]
        return sorted(found, key=lambda c: (c.replica, c.generation))

    async def _start_child(self, child: Child) -> None:
        self.children.append(child)
        await self._spawn(child)
        try:
            await self._await_ready([child])
        except LifecycleError:
            await self._stop_children([child])
            self.children.remove(child)
            raise

    async def _retire(self, child: Child) -> None:
        await self._stop_children([child])
        if child in self.children:
            self.children.remove(child)
        self._write_state()

    async def scale(self, service: str, replicas: int) -> dict[str, Any]:
        """Run ``replicas`` processes of ``service``'s group, adding or draining workers."""
        if not 0 <= replicas <= 64:
            raise ConfigError(f"replicas must be between 0 and 64, got {replicas}")
        group = self.group_of(service)
        if group == "gateway":
            raise ConfigError("the gateway runs one process; deploy it instead of scaling it")
        async with self._ops:
            current = self.live(group)
            have = {c.replica for c in current}
            members = self.loaded.groups()[group]
            added = [Child("service", group, r, members) for r in range(replicas) if r not in have]
            await asyncio.gather(*(self._start_child(c) for c in added))
            retired = [c for c in current if c.replica >= replicas]
            await asyncio.gather(*(self._retire(c) for c in retired))
        self._say(f"scaled {group} to {replicas} (+{len(added)} -{len(retired)})")
        return {"group": group, "replicas": replicas, "added": len(added), "removed": len(retired)}

    async def deploy(self, service: str) -> dict[str, Any]:
        """Replace ``service``'s group processes one replica at a time, new before old."""
        group = self.group_of(service)
        async with self._ops:
            replaced = []
            for old in self.live(group):
                new = Child(old.role, old.group, old.replica, old.services, old.generation + 1)
                try:
                    await self._start_child(new)
                except LifecycleError as exc:
                    raise LifecycleError(
                        f"deploy of {group} stopped: replica {old.replica} did not get ready "
                        f"({exc}); the old workers keep running"
                    ) from None
                await self._retire(old)  # drains: in-flight calls finish, events are settled
                replaced.append({"replica": old.replica, "old": old.version, "new": new.version})
        self._say(f"deployed {group}: {len(replaced)} replica(s) replaced")
        return {"group": group, "replaced": replaced}

    async def chaos(
        self, action: str, service: str, replica: int | None, value: float | None
    ) -> dict[str, Any]:
        """Hurt ``service`` on purpose: kill, pause, resume, or inject faults."""
        group = self.group_of(service)
        targets = [c for c in self.live(group) if replica is None or c.replica == replica]
        if not targets:
            raise LifecycleError(f"no running replica {replica} of {group}")
        if action == "kill":
            victim = targets[0] if replica is not None else random.choice(targets)
            if victim.pid is None:
                raise LifecycleError(f"{victim.label} has no process right now")
            os.kill(victim.pid, signal.SIGKILL)
            return {"killed": victim.label, "pid": victim.pid}
        if action in ("pause", "resume"):
            sig = signal.SIGSTOP if action == "pause" else signal.SIGCONT
            for c in targets:
                if c.pid is not None:
                    os.kill(c.pid, sig)
                    c.paused = action == "pause"
                    c.status = "paused" if c.paused else "ready"
            return {action: [c.label for c in targets]}
        faults = {"latency": 0.0, "drop": 0.0, "fail": 0.0}
        if action in ("latency", "drop", "fail"):
            if value is None:
                raise ConfigError(f"chaos {action} needs a value")
            faults[action] = value
        elif action != "clear":
            raise ConfigError(
                f"unknown chaos action {action!r}: kill, pause, resume, latency, drop, fail, clear"
            )
        answers = {}
        for c in targets:
            if c.admin_port is None:
                continue
            resp = await self.admin_http.post(
                f"http://127.0.0.1:{c.admin_port}/faults", json={"service": service, **faults}
            )
            if resp.status_code != 200:
                raise LifecycleError(f"{c.label} refused the faults: {resp.text}")
            answers[c.label] = resp.json()
        return {"faults": faults, "workers": answers}

    # -- state, lock, control API --------------------------------------------------------

    def _acquire_lock(self) -> None:
        self.loaded.run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.loaded.run_dir / "supervisor.lock", "a+")  # noqa: SIM115 - held open
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            state = control.read_state(self.loaded)
            pid = f" (pid {state['pid']})" if state else ""
            raise ConfigError(
                f"{self.loaded.app.name} is already up{pid}; `cleave down {self.loaded.root}` first"
            ) from None
        self._lock = lock

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _write_state(self, status: str | None = None) -> None:
        if status is not None:
            self._status = status
        if self.control is None:
            return
        children = [c.pid for c in self.children if c.pid is not None]
        if self.nats is not None and self.nats.pid is not None:
            children.append(self.nats.pid)
        control.write_state(
            self.loaded,
            {
                "pid": os.getpid(),
                "app": self.loaded.app.name,
                "status": self._status,
                "control_port": self.control.port,
                "gateway_url": self.gateway_url,
                "dashboard_url": self.dashboard_url,
                "nats_url": self.nats_url,
                "started_at": self.started_at,
                "children": children,
            },
        )

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
