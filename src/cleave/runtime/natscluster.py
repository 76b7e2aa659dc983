"""An embedded NATS cluster: ``[nats] cluster = 3`` (or more) under ``cleave up``.

N :class:`~cleave.runtime.natsd.EmbeddedNats` nodes, each with its own
client, route and monitoring port and its own JetStream store
(``<root>/n<i>``), all routed to each other under one cluster name. Streams
replicated on three of them survive one node's death: the others elect a
new stream leader within seconds and clients (which know every node's URL)
reconnect to a live one.

JetStream knows its peers by server name, so node names must not change
between runs of the same store: they are made once, from an id kept in
``<root>/cluster-id``. Ports are chosen when the cluster first starts and
kept for its life, so a node restarted by index comes back where clients
and its peers look for it. Routes authenticate with a user made per start,
so nothing else on the host can join; with TLS, routes use it too.

Where each node listens, and how its process is started, comes from
:class:`NodeSpec` (loopback by default): a test can place nodes in network
namespaces by giving their addresses and an ``ip netns exec`` prefix.

Leaders are read off the monitoring endpoint (``/jsz``), which needs no
NATS credentials: :meth:`EmbeddedCluster.stream_leader` and
:meth:`~EmbeddedCluster.meta_leader` answer with a node's index;
:func:`stream_leader` does the same from the names and monitoring URLs
alone (``cleave up`` lists them in its state file, under ``nats_nodes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleave.errors import ConfigError, LifecycleError
from cleave.runtime.natsd import EmbeddedNats, _host, free_port

__all__ = ["EmbeddedCluster", "NodeSpec", "meta_leader", "stream_leader"]


@dataclass(frozen=True)
class NodeSpec:
    """Where one node listens and how it is started; ports 0: free ones, chosen at start."""

    host: str = "127.0.0.1"
    port: int = 0
    route_port: int = 0
    monitor_port: int = 0
    #: Prepended to the node's command line, e.g. ``("ip", "netns", "exec", "ns1")``.
    argv_prefix: tuple[str, ...] = ()


def _get_json(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """GET ``url`` as JSON; None if the node does not answer (or answers an error)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except (OSError, ValueError, urllib.error.URLError):
        return None


class EmbeddedCluster:
    """N nats-server processes forming one JetStream cluster.

    >>> cluster = EmbeddedCluster(tmp / "nats", 3)   # doctest: +SKIP
    >>> cluster.launch(); cluster.url                 # doctest: +SKIP
    'nats://127.0.0.1:40001,nats://127.0.0.1:40002,nats://127.0.0.1:40003'
    """

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        binary: str = "",
        name: str = "cleave",
        sync_always: bool = True,
        authorization: str = "",
        tls: str = "",
        route_tls: str = "",
        nodes: Sequence[NodeSpec] | None = None,
    ) -> None:
        if size < 3:
            raise ConfigError(
                f"a JetStream cluster of {size} node(s) has no quorum to survive a node's death: "
                "use 3 or more nodes (or one lone server)"
            )
        specs = list(nodes) if nodes is not None else [NodeSpec() for _ in range(size)]
        if len(specs) != size:
            raise ConfigError(f"{size} nodes wanted but {len(specs)} node specs given")
        self.root = root
        self.size = size
        self.binary = binary
        self.name = name
        self.sync_always = sync_always
        self.authorization = authorization
        self.tls = tls
        #: The ``tls`` block inside ``cluster {}`` (see :mod:`cleave.runtime.nats_tls`).
        self.route_tls = route_tls
        self.specs = specs
        self.nodes: list[EmbeddedNats] = []
        self._route_user = "route"
        self._route_password = secrets.token_hex(16)

    # -- what clients and tools need ---------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what ``connect`` and workers' ``--nats`` take."""
        return ",".join(self.urls)

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid is not None]

    def describe(self) -> list[dict[str, Any]]:
        """Each node: name, URL, monitoring URL, pid (None while down)."""
        return [
            {
                "name": n.server_name,
                "url": n.url,
                "monitor_url": n.monitor_url,
                "pid": n.pid if n.alive else None,
            }
            for n in self.nodes
        ]

    # -- building the nodes ------------------------------------------------------------------

    def _cluster_id(self) -> str:
        """The id in every node's name; kept in the store, since JetStream knows peers by name."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        path = self.root / "cluster-id"
        if path.exists():
            return path.read_text().strip()
        ident = os.urandom(3).hex()
        path.write_text(ident + "\n")
        return ident

    def _build(self) -> None:
        ident = self._cluster_id()
        base = f"{EmbeddedNats(self.root, name=self.name).name}_{ident}"
        specs = [
            NodeSpec(
                host=s.host,
                port=s.port or free_port(s.host),
                route_port=s.route_port or free_port(s.host),
                monitor_port=s.monitor_port or free_port(s.host),
                argv_prefix=s.argv_prefix,
            )
            for s in self.specs
        ]
        routes = [
            f"nats-route://{self._route_user}:{self._route_password}@{_host(s.host)}:{s.route_port}"
            for s in specs
        ]
        self.nodes = []
        for i, spec in enumerate(specs):
            # A node ignores the route to itself, so every node gets the same list.
            block = (
                "cluster {\n"
                f'  name: "{base}"\n'
                f'  listen: "{_host(spec.host)}:{spec.route_port}"\n'
                f'  authorization {{ user: "{self._route_user}", '
                f'password: "{self._route_password}" }}\n'
                f"  routes: {json.dumps(routes)}\n" + self.route_tls + "}\n"
            )
            self.nodes.append(
                EmbeddedNats(
                    self.root / f"n{i}",
                    port=spec.port,
                    binary=self.binary,
                    name=self.name,
                    sync_always=self.sync_always,
                    authorization=self.authorization,
                    tls=self.tls,
                    host=spec.host,
                    server_name=f"{base}_n{i}",
                    cluster=block,
                    monitor_port=spec.monitor_port,
                    argv_prefix=spec.argv_prefix,
                )
            )

    # -- lifecycle ---------------------------------------------------------------------------

    def _starting(self, timeout: float) -> Iterator[float]:
        if self.nodes and any(n.proc is not None for n in self.nodes):
            raise LifecycleError("the NATS cluster is already started")
        for attempt in range(3):
            if not self.nodes or attempt:
                self._build()  # again: new free ports, if one was taken meanwhile
            starts = [n._starting(timeout) for n in self.nodes]
            try:
                while starts:
                    starts = [s for s in starts if next(s, None) is not None]
                    if starts:
                        yield 0.05
            except ConfigError:
                self.shutdown(timeout=2)
                if attempt == 2 or any(s.port for s in self.specs):
                    raise
                continue
            break
        yield from self._until(self.healthy, timeout, "has no JetStream meta leader")

    def _until(self, check: Callable[[], bool], timeout: float, what: str) -> Iterator[float]:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                logs = ", ".join(str(n.store_dir / "nats-server.log") for n in self.nodes)
                raise ConfigError(f"the NATS cluster {what} after {timeout:g}s (see {logs})")
            yield 0.1

    async def start(self, timeout: float = 30.0) -> None:
        """Start every node and wait until JetStream has a meta leader and every node is healthy.

        The nodes die with the thread that started them (PR_SET_PDEATHSIG).
        """
        for pause in self._starting(timeout):
            await asyncio.sleep(pause)

    def launch(self, timeout: float = 30.0) -> None:
        """:meth:`start`, for code without an event loop."""
        for pause in self._starting(timeout):
            time.sleep(pause)

    async def stop(self, timeout: float = 10.0) -> None:
        await asyncio.gather(*(n.stop(timeout) for n in self.nodes))

    def shutdown(self, timeout: float = 10.0) -> None:
        for n in self.nodes:
            n.shutdown(timeout)

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (a crash); :meth:`restart` brings it back on its ports."""
        self.nodes[index].kill()

    def _restarting(self, index: int, timeout: float) -> Iterator[float]:
        node = self.nodes[index]
        node.kill()
        yield from node._starting(timeout)
        yield from self._until(
            lambda: self.node_healthy(index), timeout, f"node {index} did not catch up"
        )

    async def restart(self, index: int, timeout: float = 30.0) -> None:
        """(Re)start node ``index`` and wait until it has caught up with the others."""
        for pause in self._restarting(index, timeout):
            await asyncio.sleep(pause)

    def relaunch(self, index: int, timeout: float = 30.0) -> None:
        """:meth:`restart`, for code without an event loop."""
        for pause in self._restarting(index, timeout):
            time.sleep(pause)

    async def keep_running(
        self, stop: asyncio.Event, say: Callable[[str], None], changed: Callable[[], None]
    ) -> None:
        """Restart any node that exits, until ``stop`` is set (the supervisor's watch)."""
        while not stop.is_set():
            for i, node in enumerate(self.nodes):
                if node.proc is None or node.alive or stop.is_set():
                    continue
                code = node.proc.returncode
                say(f"[yellow]nats node {i} ({node.server_name}) exited ({code}); restarting[/]")
                try:
                    await self.restart(i)
                except ConfigError as exc:
                    say(f"[red]nats node {i} did not come back:[/] {exc}")
                changed()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.25)

    # -- what the nodes say ------------------------------------------------------------------

    def node_healthy(self, index: int) -> bool:
        """Node ``index`` runs, knows the meta leader and its streams are current."""
        node = self.nodes[index]
        if not node.alive:
            return False
        answer = _get_json(f"{node.monitor_url}/healthz")
        return answer is not None and answer.get("status") == "ok"

    def healthy(self) -> bool:
        """Every node runs and reports itself healthy."""
        return all(self.node_healthy(i) for i in range(len(self.nodes)))

    def _live(self) -> list[tuple[str, str]]:
        return [(n.server_name, n.monitor_url if n.alive else "") for n in self.nodes]

    def meta_leader(self) -> int | None:
        """The index of the node leading JetStream's metadata (None: being elected)."""
        return meta_leader(self._live())

    def stream_leader(self, stream: str) -> int | None:
        """The index of the node leading ``stream`` (None: no leader right now)."""
        return stream_leader(self._live(), stream)


def meta_leader(nodes: Sequence[tuple[str, str]]) -> int | None:
    """Which of ``nodes`` (name, monitoring URL) says it leads JetStream's metadata."""
    for i, (name, monitor) in enumerate(nodes):
        jsz = _get_json(f"{monitor}/jsz") if monitor else None
        if jsz is not None and jsz.get("meta_cluster", {}).get("leader") == name:
            return i
    return None


def stream_leader(nodes: Sequence[tuple[str, str]], stream: str) -> int | None:
    """Which of ``nodes`` (name, monitoring URL) says it leads ``stream``.

    Only a node's word about itself counts: its peers may still name a
    leader that just died, until they elect another.
    """
    for i, (name, monitor) in enumerate(nodes):
        jsz = _get_json(f"{monitor}/jsz?streams=true") if monitor else None
        for account in (jsz or {}).get("account_details", []):
            for detail in account.get("stream_detail") or []:
                if detail.get("name") == stream and (
                    (detail.get("cluster") or {}).get("leader") == name
                ):
                    return i
    return None
