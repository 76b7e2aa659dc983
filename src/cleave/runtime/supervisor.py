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
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cleave.errors import CleaveError, ConfigError, LifecycleError
from cleave.runtime import control
from cleave.runtime.http import HttpServer, bind
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

    def __init__(self, role: str, group: str, replica: int, services: tuple[str, ...]) -> None:
        self.role = role
        self.group = group
        self.replica = replica
        self.services = services
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
                "last_exit": self.last_exit,
            }
            for service in self.services
        ]


class Supervisor:
    """Runs one app in the processes placement until told to stop."""

    def __init__(
        self, loaded: LoadedApp, *, port: int | None = None, console: Console | None = None
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
            self._write_state("ready")
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
        self.control = HttpServer(self._control_app(), "127.0.0.1", 0)
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

    async def _shutdown(self) -> None:
        self._stop.set()
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
                async with httpx.AsyncClient(timeout=3) as client:
                    resp = await client.get(f"http://127.0.0.1:{child.admin_port}/status")
                return child.label, resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                return child.label, {"error": f"{type(exc).__name__}: {exc}"}

        return dict(await asyncio.gather(*(one(c) for c in self.children)))

    def processes(self) -> list[dict[str, Any]]:
        return [row for c in self.children for row in c.rows()]

    def _control_app(self) -> Starlette:
        async def ps(request: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "app": self.loaded.app.name,
                    "status": self._status,
                    "gateway_url": self.gateway_url,
                    "nats_url": self.nats_url,
                    "processes": self.processes(),
                }
            )

        async def status(request: Request) -> JSONResponse:
            return JSONResponse({"app": self.loaded.app.name, "workers": await self.status()})

        async def down(request: Request) -> JSONResponse:
            self._stop.set()
            return JSONResponse({"stopping": True})

        return Starlette(
            routes=[
                Route("/api/ps", ps, methods=["GET"]),
                Route("/api/status", status, methods=["GET"]),
                Route("/api/down", down, methods=["POST"]),
            ]
        )

    def _say(self, text: str) -> None:
        self.console.print(text, highlight=False)


async def run(loaded: LoadedApp, *, port: int | None, console: Console) -> int:
    """``cleave up`` in the foreground; returns the exit code."""
    return await Supervisor(loaded, port=port, console=console).run()


def start_detached(loaded: LoadedApp, *, port: int | None, timeout: float = 120.0) -> str:
    """Start ``cleave up`` in the background; return the gateway URL once it is ready."""
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
            return str(state["gateway_url"])
        time.sleep(0.1)
    control.stop(loaded)
    raise LifecycleError(f"cleave up was not ready within {timeout:g}s; see {log_path}")
