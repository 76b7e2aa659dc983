"""The supervisor's child processes: spawn each worker, watch it, restart it, stop it.

A :class:`Child` is one worker process (a service group's replica, or the
gateway); :class:`Children` keeps them running. Each worker is
``python -m cleave.runtime.worker``, started in its own process group with a
pipe on which it reports ``ready`` and ``draining`` as JSON lines. A worker
that exits is restarted with exponential backoff: 0.5 s after one that was
ready for :data:`STABLE_AFTER` seconds, doubling up to 10 s while it keeps
dying soon after starting; one that exits before it is ready three times in a
row is given up on. Stopping sends SIGTERM (the worker drains) and SIGKILL
after :data:`STOP_TIMEOUT` seconds.

Worker output goes to ``.cleave/logs/<group>.<replica>.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from cleave.config import mask_url
from cleave.errors import LifecycleError

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from cleave.app import LoadedApp

__all__ = ["STABLE_AFTER", "START_TIMEOUT", "STOP_TIMEOUT", "Child", "Children"]

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
        #: The contract majors each service of this worker serves (from its ready note).
        self.majors: dict[str, list[int]] = {}
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
                "majors": self.majors.get(service, []),
                "generation": self.generation,
                "last_exit": self.last_exit,
                "admin_port": self.admin_port,
            }
            for service in self.services
        ]


class Children:
    """Every worker process of one ``cleave up``, kept running until the supervisor stops.

    ``stop`` is the supervisor's stop event: once it is set nothing is
    restarted and a start in progress gives up. ``say`` prints to the
    supervisor's console; ``changed`` is called whenever a process starts,
    gets ready or goes, so the state file stays current.
    """

    def __init__(
        self,
        loaded: LoadedApp,
        *,
        stop: asyncio.Event,
        say: Callable[[str], None],
        changed: Callable[[], None],
    ) -> None:
        self.loaded = loaded
        self.all: list[Child] = []
        self.logs_dir = loaded.state_dir / "logs"
        #: Set by the supervisor before the first spawn, once NATS runs.
        self.nats_url = ""
        #: Each worker's NATS credentials file, by group ("gateway" for the gateway); empty:
        #: the server asks for none (an external one: [nats] credentials, if any).
        self.identities: dict[str, Path] = {}
        #: The gateway's listening socket, bound by the supervisor; each gateway process gets it.
        self.listen_sock: socket.socket | None = None
        self._stop = stop
        self._say = say
        self._changed = changed
        #: Called with workers about to be stopped while the app runs on (a deploy, a scale
        #: down): the dashboard keeps what they recorded (see ``FleetSource.keep``).
        self.on_stopping: Callable[[list[Child]], Awaitable[None]] | None = None

    def live(self, group: str) -> list[Child]:
        """The group's processes that are not being stopped, by replica."""
        found = [c for c in self.all if c.group == group and not c.stopping]
        return sorted(found, key=lambda c: (c.replica, c.generation))

    async def start(self, child: Child) -> None:
        """Add ``child`` and wait until it is ready; if it does not get ready, stop and drop it."""
        self.all.append(child)
        await self.spawn(child)
        try:
            await self.await_ready([child])
        except LifecycleError:
            await self.stop([child])
            self.all.remove(child)
            raise

    async def retire(self, child: Child) -> None:
        """Stop ``child`` (it drains) and forget it."""
        await self.stop([child])
        if child in self.all:
            self.all.remove(child)
        self._changed()

    async def await_ready(self, children: list[Child]) -> None:
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

    def _log_path(self, child: Child) -> Path:
        return self.logs_dir / f"{child.label}.log"

    def _tail(self, child: Child, lines: int = 25) -> str:
        try:
            text = self._log_path(child).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    async def spawn(self, child: Child) -> None:
        """Start ``child``'s process and watch it (restarting it if it exits)."""
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
            # Visible to `ps`: never a password (an external URL comes from the plan).
            mask_url(self.nats_url),
            "--notify-fd",
            str(write_fd),
        ]
        identity = self.identities.get("gateway" if child.role == "gateway" else child.group)
        if identity is not None:
            argv += ["--nats-identity", str(identity)]
        pass_fds = [write_fd]
        if child.role == "gateway" and self.listen_sock is not None:
            argv += ["--listen-fd", str(self.listen_sock.fileno())]
            pass_fds.append(self.listen_sock.fileno())
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
        self._changed()
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
        self._changed()
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
            child.status = "stopped"
            return
        except TimeoutError:
            pass
        child.restarts += 1
        await self.spawn(child)

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
                        child.majors = note.get("majors") or {}
                        child.admin_port = note.get("admin_port")
                        child.ready.set()
                        self._changed()
                    elif state == "draining":
                        child.status = "draining"
        finally:
            transport.close()

    async def stop(self, children: list[Child]) -> None:
        """SIGTERM ``children`` (each drains), then SIGKILL any still running after a while."""
        if self.on_stopping is not None and not self._stop.is_set():
            with contextlib.suppress(Exception):  # what they recorded is a nicety, not a must
                await asyncio.wait_for(self.on_stopping(children), 5)
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
