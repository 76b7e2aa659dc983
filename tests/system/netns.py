"""Several "hosts" on one machine: network namespaces joined by a bridge, for system tests.

A :class:`Network` makes a Linux bridge in the root namespace (with the first
address of a private /24, so the test itself can reach every host) and, per
:meth:`Network.host`, a namespace joined to the bridge by a veth pair, with the
next address. :meth:`Network.cut` takes a host's link down on the bridge side
(its packets go nowhere; TCP connections hang rather than reset, as when a
cable is pulled or a switch port dies) and :meth:`Network.heal` brings it back.

Everything it makes carries one prefix with the creating process's pid
(``cvt<pid>``), so :func:`sweep` can remove what a run that died left
behind, and never touches anything else. Needs root and iproute2.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cleave.runtime.procs import alive

PREFIX = "cvt"
_OURS = re.compile(rf"^{PREFIX}(\d+)")


class NetnsUnavailable(Exception):
    """This machine cannot run the test: the reason says why (not root, no `ip`, ...)."""


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; a failure raises with what ``ip`` said."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout

    return True


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs in namespace ``ns``."""
    for pid in ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def sweep() -> list[str]:
    """Remove namespaces, links and folders of earlier runs whose process is gone."""
    removed = []
    for line in ip("netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        m = _OURS.match(name)
        if m and not alive(int(m.group(1))):
            _kill_namespace_processes(name)
            ip("netns", "del", name, check=False)
            removed.append(name)
    for line in ip("-o", "link", "show", check=False).splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        m = _OURS.match(name)
        if m and not alive(int(m.group(1))):
            ip("link", "del", name, check=False)
            removed.append(name)
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        m = _OURS.match(folder.name)
        if m and folder.is_dir() and not alive(int(m.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    return removed


def check_available() -> None:
    """Raise :class:`NetnsUnavailable` unless namespaces can be made here (by making one)."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("the `ip` command (iproute2) is not installed")
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        raise NetnsUnavailable(f"cannot create a network namespace: {exc}") from None
    ip("netns", "del", probe, check=False)


@dataclass
class Host:
    """A namespace on the bridge: one address, one link."""

    name: str
    ns: str
    address: str
    #: The veth end on the bridge: down means this host is cut off.
    link: str


@dataclass
class Network:
    """A bridge and namespaces on it; :meth:`close` removes them and every process in them."""

    #: Third octet of 10.213.x.0/24 (default: from the pid, so parallel runs differ).
    subnet: int = field(default_factory=lambda: os.getpid() % 250 + 1)
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}b"
        self.net = ipaddress.ip_network(f"10.213.{self.subnet}.0/24")
        self.gateway_address = str(self.net[1])
        self._folders: list[Path] = []

    def open(self) -> Network:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        return self

    def host(self, name: str) -> Host:
        """A new namespace with the next free address, joined to the bridge."""
        index = len(self.hosts) + 1
        ns = f"{self.tag}-{name}"
        link, peer = f"{self.tag}v{index}", f"{self.tag}p{index}"
        address = str(self.net[index + 1])
        ip("netns", "add", ns)
        ip("link", "add", link, "type", "veth", "peer", "name", peer, "netns", ns)
        ip("link", "set", link, "master", self.bridge)
        ip("link", "set", link, "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", peer)
        ip("-n", ns, "link", "set", peer, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        host = self.hosts[name] = Host(name, ns, address, link)
        return host

    def folder(self, purpose: str) -> Path:
        """A temporary folder under /tmp (not in pytest's root-only tree), removed on close."""
        path = Path(tempfile.mkdtemp(prefix=f"{self.tag}-{purpose}-"))
        self._folders.append(path)
        return path

    def cut(self, host: Host) -> None:
        ip("link", "set", host.link, "down")

    def heal(self, host: Host) -> None:
        ip("link", "set", host.link, "up")

    def spawn(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        user: str = "",
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace (as ``user`` if given), output to ``log``."""
        prefix = ["ip", "netns", "exec", host.ns]
        if user:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [*prefix, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                process_group=0,
            )
        self.procs.append(proc)
        return proc

    def stop(
        self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 15
    ) -> None:
        """Signal ``proc``'s process group and wait for it; SIGKILL if it lingers."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        """Stop every process, delete every namespace, link and folder; never raises."""
        for proc in self.procs:  # all at once: they stop in parallel
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc, wait=10)
        for host in self.hosts.values():
            with contextlib.suppress(Exception):
                _kill_namespace_processes(host.ns)
            ip("netns", "del", host.ns, check=False)
        ip("link", "del", self.bridge, check=False)
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)


def wait_for(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> float:
    """Poll ``condition()`` until true; returns the seconds it took, or fails naming ``what``."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        try:
            ok = condition()
        except Exception:  # a host still unreachable is "not yet"
            ok = False
        if ok:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(interval)
